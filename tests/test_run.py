"""`fnn train`'s run directory under faults: signals, full and read-only
disks, tampering, a second writer, changed data and options.

Each fault must end with its exit code (2 bad usage, data or output
location; 3 divergence; 130/143 interrupt), ONE line on stderr and no
traceback, and leave the previous checkpoint loadable and ``metrics.jsonl``
consistent with it.
"""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from fnn import _fs, checkpoint, cli, run

TINY = ["--dataset", "xor", "--hidden", "4", "--batch-size", "50", "--quiet"]


def _train(*argv):
  return cli.main(["train", *argv])


def _one_line(err: str):
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert "Traceback" not in err
  return lines[0]


def _consistent(out):
  """The checkpoint loads and metrics.jsonl holds exactly its epochs."""
  header = checkpoint.read_header(str(out / "checkpoint.npz"))
  epoch = header["meta"]["epoch"]
  path = out / "metrics.jsonl"
  rows = ([json.loads(l) for l in path.read_text().splitlines()]
          if path.exists() else [])
  assert [r["epoch"] for r in rows] == list(range(1, epoch + 1))
  assert [h["epoch"] for h in header["meta"]["history"]] == list(
      range(1, epoch + 1))
  assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
  return epoch


def _fail_writes(monkeypatch, name, err, after=0):
  """Makes the (after+1)-th atomic write of ``name`` fail with ``err``."""
  real = _fs.atomic_write_bytes
  seen = []

  def write(path, fn):
    if os.path.basename(path) == name:
      seen.append(path)
      if len(seen) > after:
        def broken(f):
          f.write(b"partial")
          raise OSError(err, os.strerror(err), path)
        return real(path, broken)
    return real(path, fn)

  monkeypatch.setattr(_fs, "atomic_write_bytes", write)
  monkeypatch.setattr(checkpoint, "atomic_write_bytes", write)
  monkeypatch.setattr(run, "SAVE_PACE", 0)  # every epoch's save is written


# ------------------------------------------------------------- disk faults


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS],
                         ids=["disk-full", "read-only"])
def test_checkpoint_write_fault_keeps_the_previous_checkpoint(
    tmp_path, capsys, monkeypatch, err):
  out = tmp_path / "r"
  _fail_writes(monkeypatch, "checkpoint.npz", err, after=2)  # epochs 0, 1 ok
  assert _train(*TINY, "--epochs", "4", "--out", str(out)) == 2
  line = _one_line(capsys.readouterr().err)
  assert os.strerror(err) in line and "epoch 1 is kept" in line
  assert _consistent(out) == 1
  monkeypatch.undo()
  assert _train("--resume", "--out", str(out), "--quiet") == 0
  assert _consistent(out) == 4


def test_full_disk_at_the_end_is_completed_by_resume(tmp_path, capsys,
                                                     monkeypatch):
  out = tmp_path / "r"
  _fail_writes(monkeypatch, "curves.png", errno.ENOSPC)
  assert _train(*TINY, "--epochs", "2", "--out", str(out)) == 2
  assert "No space left" in _one_line(capsys.readouterr().err)
  assert not (out / "curves.png").exists()
  monkeypatch.undo()
  assert _train("--resume", "--out", str(out)) == 0
  assert "wrote the missing curves.png" in capsys.readouterr().out
  assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert _consistent(out) == 2


def test_metrics_write_fault_is_repaired_by_resume(tmp_path, capsys,
                                                   monkeypatch):
  out = tmp_path / "r"
  _fail_writes(monkeypatch, "metrics.jsonl", errno.ENOSPC, after=2)
  assert _train(*TINY, "--epochs", "3", "--out", str(out)) == 2
  _one_line(capsys.readouterr().err)
  monkeypatch.undo()
  # The checkpoint of epoch 2 holds the metrics; resume rewrites the file.
  assert _train("--resume", "--out", str(out), "--quiet") == 0
  assert _consistent(out) == 3


@pytest.mark.parametrize("where", ["file", "under-file", "devnull",
                                   "too-long", "read-only"])
def test_unusable_output_location(tmp_path, capsys, monkeypatch, where):
  f = tmp_path / "f"
  f.write_text("x")
  out = {"file": f, "under-file": f / "run", "devnull": "/dev/null",
         "too-long": tmp_path / ("n" * 300), "read-only": tmp_path / "ro"}[
             where]
  if where == "read-only":
    real = os.write

    def refuse(fd, data):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(_fs.os, "write", refuse)
  assert _train(*TINY, "--epochs", "1", "--out", str(out)) == 2
  line = _one_line(capsys.readouterr().err)
  assert "fnn train: error:" in line
  if where == "read-only":
    monkeypatch.setattr(_fs.os, "write", real)
    assert "Read-only" in line
  assert f.read_text() == "x"


# ------------------------------------------------------------- tampering


def _rewrite(path, config=None, meta=None):
  """Re-signs a checkpoint with an edited configuration or meta: what a
  user editing the header AND recomputing the digest would produce."""
  header = checkpoint.read_header(str(path))
  from fnn import train
  model, opt, cfg, state = run._setup(header["config"], run._load_data(
      header["config"]))
  state, _ = checkpoint.load(str(path), state)
  checkpoint.save(str(path), state, config or header["config"],
                  meta or header["meta"])


def _finished(tmp_path, epochs=2):
  out = tmp_path / "r"
  assert _train(*TINY, "--epochs", str(epochs), "--out", str(out)) == 0
  return out


def test_edited_header_is_refused(tmp_path, capsys):
  out = _finished(tmp_path)
  ck = out / "checkpoint.npz"
  with np.load(ck) as f:
    arrays = {k: f[k] for k in f.files}
  header = json.loads(str(arrays["header"]))
  header["config"]["lr"] = 1.0  # the digest still belongs to 0.01
  arrays["header"] = np.array(json.dumps(header))
  with open(ck, "wb") as fh:
    np.savez(fh, **arrays)
  before = ck.read_bytes()
  capsys.readouterr()
  assert _train("--resume", "--out", str(out), "--epochs", "3") == 2
  assert "corrupted" in _one_line(capsys.readouterr().err)
  assert ck.read_bytes() == before


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("lr"), "lacks ['lr']"),
    (lambda c: c.update(seed=2**40), "--seed must be <= 4294967295"),
    (lambda c: c.update(hidden="4,x"), "--hidden must be comma-separated"),
    (lambda c: c.update(lr=float("nan")), "--lr must be a finite number"),
    (lambda c: c.update(bogus=1), "unknown keys ['bogus']"),
    (lambda c: c.update(arch="dense:4,relux"), "--arch 'dense:4,relux': "
     "unknown layer 'relux'"),
    (lambda c: c.update(arch="cnn"), "--hidden and --activation describe "
     "--arch mlp only"),
    (lambda c: c.update(hidden=None), "--hidden must be a string, got None"),
], ids=["missing-key", "seed", "hidden", "nan-lr", "unknown-key", "arch",
        "arch-with-hidden", "mlp-without-hidden"])
def test_signed_but_invalid_configuration_is_refused(tmp_path, capsys, edit,
                                                     message):
  out = _finished(tmp_path)
  header = checkpoint.read_header(str(out / "checkpoint.npz"))
  config = dict(header["config"])
  edit(config)
  _rewrite(out / "checkpoint.npz", config=config)
  capsys.readouterr()
  assert _train("--resume", "--out", str(out), "--epochs", "3") == 2
  assert message in _one_line(capsys.readouterr().err)


def test_a_run_from_before_arch_resumes_as_an_mlp(tmp_path, capsys):
  """Checkpoints written before --arch hold no "arch": they are MLP runs,
  and load (format 2 here; format 1 goes through the same path)."""
  out = _finished(tmp_path)
  header = checkpoint.read_header(str(out / "checkpoint.npz"))
  config = dict(header["config"])
  del config["arch"]
  _rewrite(out / "checkpoint.npz", config=config)
  os.remove(out / "summary.json")
  capsys.readouterr()
  assert _train("--resume", "--out", str(out), "--arch", "mlp") == 0
  assert "wrote the missing summary.json" in capsys.readouterr().out
  summary = json.loads((out / "summary.json").read_text())
  assert summary["arch"] == summary["config"]["arch"] == "mlp"
  assert summary["model"]["sizes"] == [2, 4, 2]
  assert summary["model"]["description"] == "MLP 2-4-2"


def test_metrics_directory_in_place_of_the_file(tmp_path, capsys):
  out = tmp_path / "r"
  out.mkdir()
  (out / "checkpoint.npz").write_bytes(b"")
  os.remove(out / "checkpoint.npz")
  (out / "metrics.jsonl").mkdir()
  assert _train(*TINY, "--epochs", "1", "--out", str(out)) == 2
  assert "metrics.jsonl" in _one_line(capsys.readouterr().err)


def test_fifo_checkpoint_is_refused_at_once(tmp_path):
  out = tmp_path / "r"
  out.mkdir()
  os.mkfifo(out / "checkpoint.npz")
  proc = subprocess.run([sys.executable, "-m", "fnn", "train", "--resume",
                         "--out", str(out)], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert "not a regular file" in _one_line(proc.stderr)


# ------------------------------------------------------------- run rules


def test_new_run_never_writes_into_another_runs_files(tmp_path, capsys):
  out = tmp_path / "r"
  out.mkdir()
  (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
  assert _train(*TINY, "--epochs", "1", "--out", str(out)) == 2
  assert "another run" in _one_line(capsys.readouterr().err)
  assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_resume_honours_safe_options_and_refuses_others(tmp_path, capsys):
  out = _finished(tmp_path)
  for argv, message in [(["--hidden", "8"], "--hidden '8' differs"),
                        (["--dtype", "float64"], "--dtype 'float64' differs"),
                        (["--dataset", "moons"], "--dataset 'moons' differs"),
                        (["--batch-size", "20"], "--batch-size 20 differs")]:
    assert _train("--resume", "--out", str(out), "--epochs", "3", *argv) == 2
    assert message in _one_line(capsys.readouterr().err)
  assert _train("--resume", "--out", str(out), "--epochs", "1") == 2
  assert "--epochs 1 is below the checkpoint's epoch 2" in _one_line(
      capsys.readouterr().err)
  assert _train("--resume", "--out", str(out), "--epochs", "3", "--lr",
                "0.05", "--quiet") == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["config"]["lr"] == 0.05 and summary["epochs"] == 3
  assert summary["resumed"][0]["changes"] == {"lr": [0.01, 0.05],
                                              "epochs": [2, 3]}
  assert summary["resumed"][0]["epoch"] == 2


def test_resume_refuses_changed_data(tmp_path, capsys):
  rng = np.random.default_rng(0)
  data = dict(x=rng.normal(size=(40, 3)), y=rng.integers(0, 3, 40),
              x_test=rng.normal(size=(10, 3)), y_test=rng.integers(0, 3, 10))
  path = tmp_path / "d.npz"
  np.savez(path, **data)
  out = tmp_path / "r"
  assert _train("--dataset", f"npz:{path}", "--hidden", "4", "--batch-size",
                "8", "--epochs", "1", "--quiet", "--out", str(out)) == 0
  np.savez(path, **dict(data, x=data["x"][:32], y=data["y"][:32]))
  before = (out / "metrics.jsonl").read_text()
  capsys.readouterr()
  assert _train("--resume", "--out", str(out), "--epochs", "2") == 2
  assert "differ from the data this run was trained on" in _one_line(
      capsys.readouterr().err)
  assert (out / "metrics.jsonl").read_text() == before


def test_stale_temporary_files_are_removed(tmp_path):
  out = _finished(tmp_path)
  stale = out / ".tmp-abcd1234checkpoint.npz"
  stale.write_bytes(b"half")
  assert _train("--resume", "--out", str(out), "--epochs", "3") == 0
  assert not stale.exists()


def test_outputs_follow_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    out = _finished(tmp_path)
  finally:
    os.umask(old)
  for name in ("checkpoint.npz", "metrics.jsonl", "summary.json",
               "curves.png"):
    assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o644, name


def test_summary_carries_provenance(tmp_path):
  out = _finished(tmp_path)
  summary = json.loads((out / "summary.json").read_text())
  prov = summary["provenance"]
  import jax
  assert prov["jax"] == jax.__version__ and prov["backend"] == "cpu"
  for key in ("fnn", "python", "devices", "command", "started", "finished",
              "git_commit"):
    assert key in prov
  assert prov["started"] <= prov["finished"]
  assert len(summary["data_fingerprint"]) == 64


def test_metrics_never_hold_bare_nan():
  text = run._dumps(dict(a=float("nan"), b=[1.0, float("inf")], c=2.5))
  assert json.loads(text) == dict(a=None, b=[1.0, None], c=2.5)


def test_figures_have_titles_labels_and_gaps():
  history = [dict(epoch=e, train_loss=1.0 / e, test_loss=1.0 / e,
                  test_accuracy=0.5, noise_scale=ns, grad_norm_mean=1.0,
                  variance_per_layer=[1.0, None])
             for e, ns in [(1, 5.0), (2, -3.0), (3, None), (4, 2.0)]]
  plt = run._pyplot()
  for fig in (run.curves_figure(history, "t"),
              run.grad_stats_figure(history, "t")):
    assert fig._suptitle.get_text() == "t"
    for ax in fig.axes:
      assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)
  fig = run.grad_stats_figure(history)
  y = fig.axes[0].lines[0].get_ydata()
  assert np.isnan(y[1]) and np.isnan(y[2]) and y[3] == 2.0  # gaps
  plt.close(fig)


# ------------------------------------------------------------- processes


def _spawn(*argv, **kw):
  return subprocess.Popen([sys.executable, "-m", "fnn", "train", *argv],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


LONG = ["--dataset", "xor", "--hidden", "4", "--batch-size", "10",
        "--epochs", "400"]


def _wait_for_epoch(out, epoch=1, timeout=120):
  t0 = time.time()
  while time.time() - t0 < timeout:
    try:
      if checkpoint.read_header(str(out / "checkpoint.npz"))["meta"][
          "epoch"] >= epoch:
        return
    except ValueError:
      pass
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def test_a_second_writer_is_refused(tmp_path, capsys):
  """A run holds its directory's lock (tests/test_checkpoint.py holds it
  from a second process); a new run or a resume into it is refused."""
  out = _finished(tmp_path)
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with _fs.RunLock(str(out)), _fs.RunLock(str(fresh)):
    for argv in (["--resume", "--out", str(out), "--epochs", "3"],
                 [*TINY, "--epochs", "1", "--out", str(fresh)]):
      capsys.readouterr()
      assert _train(*argv) == 2
      assert "in use by another fnn run" in _one_line(capsys.readouterr().err)
  assert not list(fresh.iterdir())
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.5],
                         ids=["at-once", "imports", "loading"])
def test_sigint_at_any_moment_exits_130_and_stays_resumable(tmp_path, delay):
  out = tmp_path / "r"
  proc = _spawn(*LONG, "--out", str(out))
  time.sleep(delay)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert "Traceback" not in err and "Exception ignored" not in err
  if proc.returncode == -signal.SIGINT:  # before Python ran any of fnn: the
    assert not out.exists()  # default action, which a shell shows as 130
    return
  assert proc.returncode == 130, err
  last = [l for l in err.splitlines() if l.strip()][-1]
  assert "interrupted" in last
  if (out / "checkpoint.npz").exists():
    epoch = _consistent(out)
    assert f"epoch {epoch} is kept" in last
  else:
    assert "no checkpoint was written" in last or "nothing was written" in last
    assert not out.exists()  # nothing half-made is left


def test_sigint_and_sigterm_while_training_then_a_second_sigint(tmp_path):
  """SIGINT mid-run: 130 after the epoch's checkpoint; the resumed run
  takes SIGTERM: 143; a second SIGINT while loading stops at once."""
  out = tmp_path / "r"
  proc = _spawn(*LONG, "--out", str(out))
  _wait_for_epoch(out)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130 and "Traceback" not in err, err
  epoch = _consistent(out)
  assert f"epoch {epoch} is kept" in err.splitlines()[-1]
  proc = _spawn("--resume", "--out", str(out))
  _wait_for_epoch(out, epoch + 1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143 and "Traceback" not in err
  assert _consistent(out) > epoch
  before = (out / "checkpoint.npz").read_bytes()
  proc = _spawn("--resume", "--out", str(out))
  # fnn's handlers are installed before it prints its first line; a fixed
  # sleep raced Python's start-up on a loaded machine (the default action)
  assert proc.stdout.readline().startswith("fnn train: ")
  proc.send_signal(signal.SIGINT)
  time.sleep(0.05)
  proc.send_signal(signal.SIGINT)  # the second one: stop now
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130 and "Traceback" not in err
  assert (out / "checkpoint.npz").read_bytes() == before

"""The `fnn` command: usage errors are one line with exit code 2."""
import subprocess
import sys

from fnn import cli


def test_info_lists_registry(capsys):
  assert cli.main(["info"]) == 0
  out = capsys.readouterr().out
  assert "categorical_cross_entropy" in out and "gelu" in out


def test_unknown_command_is_one_line_exit_2():
  proc = subprocess.run([sys.executable, "-m", "fnn", "bogus"],
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and "invalid choice: 'bogus'" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_version():
  proc = subprocess.run([sys.executable, "-m", "fnn", "--version"],
                        capture_output=True, text=True)
  assert proc.returncode == 0 and proc.stdout.startswith("fnn ")


import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fnn  # noqa: E402
from fnn import checkpoint  # noqa: E402
from helpers import cli_error  # noqa: E402

# Runs of TINY for 2 epochs share one compilation (the epoch count is part
# of what is compiled): keep to 2 unless a test needs more.
TINY = ["--dataset", "xor", "--hidden", "4", "--batch-size", "50"]


def _ckpt_leaves(out):
  header, leaves = checkpoint._read(str(out / "checkpoint.npz"))
  return header, leaves


def test_smoke_run_writes_every_file(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
  assert sorted(p.name for p in out.iterdir()) == [
      "checkpoint.npz", "curves.png", "metrics.jsonl", "summary.json"]
  rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2]
  assert set(rows[0]) == {"epoch", "step", "train_loss", "test_loss",
                          "test_accuracy", "seconds"}
  summary = json.loads((out / "summary.json").read_text())
  for k in ("dataset", "model", "test_accuracy", "final_train_loss", "epochs",
            "steps", "wall_seconds", "steps_per_second", "seed", "fnn_version"):
    assert k in summary
  assert summary["steps"] == 2 * (1000 // 50)
  assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "test accuracy" in capsys.readouterr().out


def test_quiet_prints_only_the_summary(tmp_path, capsys):
  assert cli.main(["train", *TINY, "--epochs", "2", "--quiet", "--out",
                   str(tmp_path / "q")]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith("test accuracy")


def test_resume_is_bit_identical(tmp_path, monkeypatch):
  """A 4-epoch run killed after epoch 2 and resumed equals one straight run."""
  from fnn import run
  straight, split = tmp_path / "straight", tmp_path / "split"
  args = [*TINY, "--dropout", "0.2", "--schedule", "cosine", "--quiet",
          "--epochs", "4"]
  assert cli.main(["train", *args, "--out", str(straight)]) == 0
  progress = run._progress

  def killed_after_epoch_2(metrics, *rest):
    progress(metrics, *rest)
    if metrics["epoch"] == 2:  # after epoch 2's checkpoint was written
      raise KeyboardInterrupt

  monkeypatch.setattr(run, "_progress", killed_after_epoch_2)
  assert cli.main(["train", *args, "--out", str(split)]) == 130
  monkeypatch.setattr(run, "_progress", progress)
  assert cli.main(["train", "--resume", "--out", str(split), "--quiet"]) == 0
  _, a = _ckpt_leaves(straight)
  _, b = _ckpt_leaves(split)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  rows = [json.loads(l) for l in (split / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
  want = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
  assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in want]


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
  out = tmp_path / "done"
  assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out),
                   "--quiet"]) == 0
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert cli.main(["train", "--resume", "--out", str(out)]) == 0
  assert "already finished 2 of 2 epochs" in capsys.readouterr().out
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_refuses_a_corrupted_checkpoint_and_keeps_it(tmp_path, capsys):
  out = tmp_path / "bad"
  assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out),
                   "--quiet"]) == 0
  ck = out / "checkpoint.npz"
  blob = ck.read_bytes()[:-100]
  ck.write_bytes(blob)
  assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "corrupted" in err and err.count("\n") == 1
  assert ck.read_bytes() == blob


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
  out = tmp_path / "nan"
  code = cli.main(["train", *TINY, "--output", "identity", "--loss",
                   "squared_error", "--optimizer", "sgd", "--lr", "1e4",
                   "--epochs", "50", "--out", str(out)])
  assert code == 3
  err = capsys.readouterr().err
  assert "NaN or infinite in epoch" in err and "smaller --lr" in err
  header, leaves = _ckpt_leaves(out)
  assert all(np.all(np.isfinite(l)) for l in leaves if l.dtype.kind == "f")
  epoch = int(err.split("in epoch ")[1].split(";")[0])
  step = [l for l in leaves if l.shape == () and l.dtype.kind == "i"]
  assert [int(s) for s in step] == [(epoch - 1) * 20]


def test_existing_run_is_not_overwritten(tmp_path, capsys):
  out = tmp_path / "r"
  assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out),
                   "--quiet"]) == 0
  before = (out / "checkpoint.npz").read_bytes()
  assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 2
  assert "already holds a run" in capsys.readouterr().err
  assert (out / "checkpoint.npz").read_bytes() == before


BAD = [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--activation", "relux"], "unknown hidden activation 'relux'"),
    (["--loss", "binary_cross_entropy"], "needs output sigmoid"),
    (["--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    (["--schedule", "step"], "invalid choice: 'step'"),
    (["--init", "xavier"], "invalid choice: 'xavier'"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["--batch-size", "1001"], "--batch-size must be in [1, 1000]"),
    (["--hidden", "4,x"], "--hidden must be comma-separated ints"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--lr", "-1"], "learning rate must be > 0"),
    (["--dataset", "npz:/nonexistent.npz"], "cannot read npz:/nonexistent.npz"),
    (["--dataset", "mnist-idx:/nonexistent"], "is not a directory"),
    (["--resume"], "checkpoint.npz does not exist"),
    (["--lr", "abc"], "--lr: must be a number, got 'abc'"),
    (["--dp-noise", "1.0"], "--dp-noise 1.0 needs --dp-clip C > 0"),
    (["--dp-clip", "-1"], "--dp-clip and --dp-noise must be >= 0"),
    (["--dp-sampling", "uniform"], "invalid choice: 'uniform'"),
    (["--dp-clip", "1", "--dp-delta", "2"], "--dp-delta must be in (0, 1)"),
    (["--arch", "dense:8,relux"], "--arch 'dense:8,relux': unknown layer "
     "'relux' in architecture spec (did you mean 'relu'"),
    (["--arch", "res(dense:2,relu"], "unbalanced '(' in architecture spec"),
    (["--arch", "conv1d:4"], "layer 'conv1d:4' needs 2 to 4 integers"),
    (["--arch", "cnn"], "--arch 'cnn' on 2 inputs: layers[0] Conv1d(25, 5, "
     "stride=2, padding=1) cannot take input shape (2,)"),
    (["--arch", "dense:8,dense:3"], "ends in dense:3, but the data need 2"),
    (["--arch", "resmlp", "--hidden", "8"], "--hidden describes --arch mlp "
     "only; --arch resmlp names its own layers"),
    (["--arch", "cnn", "--activation", "tanh"], "--activation describes"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
  argv = ["train", "--dataset", "xor", "--out", str(tmp_path / "e"), *args]
  assert message in cli_error(capsys, argv)
  assert not (tmp_path / "e" / "checkpoint.npz").exists()


def test_cli_data_errors_exit_2(tmp_path, capsys):
  rng = np.random.default_rng(0)
  good = dict(x=rng.normal(size=(20, 3)), y=rng.integers(0, 3, 20),
              x_test=rng.normal(size=(5, 3)), y_test=rng.integers(0, 3, 5))
  cases = {
      "nan": (dict(good, x_test=np.full((5, 3), np.nan)), "NaN"),
      "labels": (dict(good, y=good["y"] + 0.5), "integer class labels"),
      "negative": (dict(good, y_test=-good["y_test"] - 1), "negative label"),
  }
  for name, (arrays, message) in cases.items():
    np.savez(tmp_path / f"{name}.npz", **arrays)
    code = cli.main(["train", "--dataset", f"npz:{tmp_path / name}.npz",
                     "--out", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, (name, err)
  # Labels that fit: three classes, sigmoid outputs with BCE on one-hot rows.
  np.savez(tmp_path / "good.npz", **good)
  assert cli.main(["train", "--dataset", f"npz:{tmp_path / 'good.npz'}",
                   "--output", "sigmoid", "--loss", "binary_cross_entropy",
                   "--hidden", "4", "--batch-size", "5", "--epochs", "1",
                   "--quiet", "--out", str(tmp_path / "ok")]) == 0


def test_dp_run_reports_epsilon_and_grad_stats(tmp_path, capsys):
  out = tmp_path / "dp"
  assert cli.main(["train", *TINY, "--epochs", "2", "--dp-clip", "1.0",
                   "--dp-noise", "1.1", "--log-grad-stats", "--quiet",
                   "--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  dp = summary["dp"]
  n = 1000  # TINY's training set
  assert dp["sampling"] == "poisson" and dp["sample_rate"] == pytest.approx(
      summary["config"]["batch_size"] / n)
  assert dp["epsilon"] == pytest.approx(fnn.dp_epsilon(
      noise=1.1, sample_rate=dp["sample_rate"], steps=summary["steps"],
      delta=1e-5))
  assert 0 < dp["epsilon_pld"] <= dp["epsilon"] * 1.01  # PLD is tighter
  rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().split(
      "\n") if l]
  assert all("noise_scale" in r for r in rows)
  assert (out / "grad_stats.png").read_bytes()[:4] == b"\x89PNG"
  assert "epsilon" in capsys.readouterr().out


# Conv1d, LayerNorm, Flatten, a residual block and () entries: every kind of
# params entry goes through the optimizer, the checkpoint and resume, with
# dropout, AdamW's decay and DP-SGD's clipping and Poisson batches (no noise:
# the privacy accountant alone would add seconds).
SPEC = "conv1d:4:2:1:1,relu,layernorm,flatten,res(dense:12,tanh)"
SEQ = ["--dataset", "xor", "--arch", SPEC, "--optimizer", "adamw",
       "--weight-decay", "0.01", "--dropout", "0.1", "--dp-clip", "1.0",
       "--batch-size", "50", "--epochs", "2"]


def test_any_architecture_trains_records_and_resumes_bit_identically(
    tmp_path, capsys, monkeypatch):
  from fnn import run
  straight, split = tmp_path / "straight", tmp_path / "split"
  assert cli.main(["train", *SEQ, "--out", str(straight)]) == 0
  out = capsys.readouterr().out
  # The header: shapes, the layers and the parameter count.
  assert "  shapes 2 -> 3x4 -> 3x4 -> 3x4 -> 12 -> 12 -> 2\n" in out
  assert f"  {SPEC},dense:2 (202 parameters)/softmax, adamw" in out
  summary = json.loads((straight / "summary.json").read_text())
  assert summary["arch"] == summary["config"]["arch"] == SPEC
  # conv 2*1*4 + 4, layernorm 4 + 4, dense 12*12 + 12, dense 12*2 + 2.
  assert summary["model"] == dict(
      description=f"{SPEC},dense:2", parameters=12 + 8 + 156 + 26,
      output="softmax", loss="categorical_cross_entropy",
      layers=["conv1d:4:2:1:1", "relu", "layernorm", "flatten",
              "res(dense:12,tanh)", "dense:2"],
      in_shape=[2], shapes=[[2], [3, 4], [3, 4], [3, 4], [12], [12], [2]])
  assert summary["config"]["hidden"] is None
  assert summary["config"]["activation"] is None
  assert summary["config"]["init"] == "he"  # a spec's default
  assert summary["dp"]["clip"] == 1.0 and summary["dp"]["sampling"] == (
      "poisson")
  progress = run._progress

  def killed_after_epoch_1(metrics, *rest):
    progress(metrics, *rest)
    if metrics["epoch"] == 1:
      raise KeyboardInterrupt

  monkeypatch.setattr(run, "_progress", killed_after_epoch_1)
  assert cli.main(["train", *SEQ, "--quiet", "--out", str(split)]) == 130
  monkeypatch.setattr(run, "_progress", progress)
  capsys.readouterr()
  # --arch is not safe to change on resume, nor --hidden given to it.
  for argv, message in [(["--arch", "mlp"], "--arch 'mlp' differs from the "
                         f"run's '{SPEC}'"),
                        (["--hidden", "4"], "--hidden describes --arch mlp")]:
    assert cli.main(["train", "--resume", "--out", str(split), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
  assert cli.main(["train", "--resume", "--out", str(split), "--quiet"]) == 0
  _, a = _ckpt_leaves(straight)
  _, b = _ckpt_leaves(split)
  assert len(a) == len(b) > 3 * 8  # params, Adam's mu and nu, ...
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_gradcheck_arch_errors_are_one_line(capsys):
  for argv, message in [
      (["--arch", "relux"], "unknown layer 'relux'"),
      (["--arch", "cnn", "--sizes", "4,5,3"], "--sizes with --arch cnn is "
       "N_IN,N_OUT"),
      (["--arch", "cnn", "--sizes", "2,3"], "--arch 'cnn' on 2 inputs"),
      (["--arch", "resmlp", "--activation", "tanh"], "--activation describes "
       "--arch mlp only"),
      (["--arch", "cnn", "--all"], "--all sweeps MLPs"),
  ]:
    assert message in cli_error(capsys, ["gradcheck", *argv])


def test_gradcheck_of_a_sequential(capsys):
  """`fnn gradcheck --arch SPEC` builds the spec on --sizes N_IN,N_OUT and
  checks it (full mode); check_grads' own tests cover every layer type."""
  spec = "conv1d:2:3:2:1,tanh,flatten"
  assert cli.main(["gradcheck", "--arch", spec, "--sizes", "7,3", "--batch",
                   "3", "--format", "json"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["passed"]
  assert report["mode"] == "full"


def test_arch_help_lists_the_names_and_the_grammar(capsys, monkeypatch):
  from fnn import arch
  monkeypatch.setenv("COLUMNS", "80")
  for command in ("train", "gradcheck"):
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for token in (*arch.NAMED, "dense:N", "conv1d:C:K[:STRIDE[:PAD]]",
                  "layernorm[:EPS]", "flatten", "res(LAYERS)",
                  "'conv1d:25:5:2:1,relu,flatten,dense:10'", "(default: mlp)"):
      assert token in text, (command, token)


@pytest.mark.slow  # MNIST-1D (4,000 examples): ~20 s per architecture
@pytest.mark.parametrize("name,parameters", [("resmlp", 15210),
                                             ("cnn", 5210)])
def test_mnist1d_architectures_train_from_the_command_line(tmp_path, name,
                                                            parameters):
  out = tmp_path / name
  assert cli.main(["train", "--arch", name, "--epochs", "1", "--quiet",
                   "--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["arch"] == name and summary["dataset"] == "mnist1d"
  assert summary["model"]["parameters"] == parameters
  assert summary["config"]["init"] == "pytorch"  # the repository's init
  assert summary["test_accuracy"] > 0.15  # above chance (0.1) after 1 epoch

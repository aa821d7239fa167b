"""fnn train --seeds and fnn sweep: outputs, equality with runs alone,
resume, selection on validation only, and bad input (exit 2, one line)."""
import json

import numpy as np
import pytest

from fnn import checkpoint, cli

TINY = ["--hidden", "6", "--batch-size", "20", "--quiet", "--lr", "1e-2"]


def _npz(path, poison_test=False, classes=3, n=120):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 4))
  y = (np.arange(n) % classes)
  x[np.arange(n), y] += 2.0  # learnable
  x_test, y_test = x[:60] + 0.1, y[:60].copy()
  if poison_test:  # test labels that disagree with everything
    y_test = (y_test + 1) % classes
  np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
  return f"npz:{path}"


def _main(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def _rows(path):
  return [json.loads(line) for line in open(path)]


def test_seeds_write_per_seed_runs_that_equal_runs_alone(tmp_path, capsys):
  ds = _npz(tmp_path / "d.npz")
  code, out, err = _main(capsys, "train", "--dataset", ds, *TINY,
                         "--epochs", "2", "--seeds", "3-4",
                         "--out", str(tmp_path / "many"))
  assert code == 0, err
  summary = json.loads((tmp_path / "many" / "summary.json").read_text())
  assert summary["seeds"] == [3, 4]
  accs = [p["test_accuracy"] for p in summary["per_seed"]]
  assert summary["test_accuracy"]["mean"] == pytest.approx(np.mean(accs))
  assert summary["test_accuracy"]["std"] == pytest.approx(np.std(accs,
                                                                 ddof=1))
  assert (tmp_path / "many" / "curves.png").stat().st_size > 0
  code, _, err = _main(capsys, "train", "--dataset", ds, *TINY, "--epochs",
                       "2", "--seed", "4", "--out", str(tmp_path / "alone"))
  assert code == 0, err
  alone = _rows(tmp_path / "alone" / "metrics.jsonl")
  seed4 = _rows(tmp_path / "many" / "seed-4" / "metrics.jsonl")
  for a, b in zip(alone, seed4, strict=True):
    # float32: the per-run values enter as arrays; equal to a few ulps
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=0.02)
  # a seed's directory is a whole single run: it resumes alone
  code, _, err = _main(capsys, "train", "--resume", "--out",
                       str(tmp_path / "many" / "seed-4"), "--epochs", "3",
                       "--quiet")
  assert code == 0, err
  assert len(_rows(tmp_path / "many" / "seed-4" / "metrics.jsonl")) == 3


def test_seeds_resume_is_bit_identical(tmp_path, capsys):
  ds = _npz(tmp_path / "d.npz")
  args = ["train", "--dataset", ds, *TINY, "--seeds", "2", "--dropout", "0.2"]
  assert _main(capsys, *args, "--epochs", "3",
               "--out", str(tmp_path / "a"))[0] == 0
  assert _main(capsys, *args, "--epochs", "1",
               "--out", str(tmp_path / "b"))[0] == 0
  code, _, err = _main(capsys, "train", "--resume", "--out",
                       str(tmp_path / "b"), "--epochs", "3", "--quiet")
  assert code == 0, err
  a, b = (_rows(tmp_path / d / "metrics.jsonl") for d in "ab")
  strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"}
                        for r in rows]
  assert strip(a) == strip(b)
  header = checkpoint.read_header(str(tmp_path / "b" / "checkpoint.npz"))
  assert header["meta"]["resumed"][0]["changes"] == {"epochs": [1, 3]}
  code, _, err = _main(capsys, "train", "--resume", "--out",
                       str(tmp_path / "b"), "--lr", "0.5")
  assert code == 2 and "may change only --epochs, not --lr" in err


def _sweep(capsys, tmp_path, ds, out, *extra):
  return _main(capsys, "sweep", "--dataset", ds, *TINY[:-2], "--lr",
               "1e-3,3e-2", "--dropout", "0,0.3", "--epochs", "2",
               "--seeds", "2", "--out", str(tmp_path / out), *extra)


def test_sweep_selects_on_validation_only(tmp_path, capsys):
  code, out, err = _sweep(capsys, tmp_path, _npz(tmp_path / "d.npz"), "s")
  assert code == 0, err
  report = json.loads((tmp_path / "s" / "sweep.json").read_text())
  assert len(report["configs"]) == 4 and report["val_fraction"] == 0.1
  assert [c["values"]["lr"] for c in report["configs"]] == [1e-3] * 2 + [
      3e-2] * 2
  means = [c["val_accuracy"]["mean"] for c in report["configs"]]
  assert report["selected"] == int(np.argmax(means))
  assert "selected lr" in out and (tmp_path / "s" / "sweep.md").exists()
  # The same sweep with a poisoned test split selects the same configuration
  # with the same validation figures; only the test column changes.
  code, _, err = _sweep(capsys, tmp_path, _npz(tmp_path / "p.npz", True), "p")
  assert code == 0, err
  poisoned = json.loads((tmp_path / "p" / "sweep.json").read_text())
  assert poisoned["selected"] == report["selected"]
  assert [c["val_accuracy"] for c in poisoned["configs"]] == [
      c["val_accuracy"] for c in report["configs"]]
  assert [c["test_accuracy"] for c in poisoned["configs"]] != [
      c["test_accuracy"] for c in report["configs"]]


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--lr", ","], "--lr: the grid is empty"),
    (["sweep", "--lr", "1e-3,x"], "--lr: 'x' is not a number"),
    (["sweep", "--dropout", "0.1,0.1"], "--dropout repeats 0.1"),
    (["sweep", "--batch-size", "32,64"], "--batch-size changes the program's"),
    (["sweep", "--val-fraction", "0"], "selects on a validation split"),
    (["train", "--seeds", "1,2,1"], "--seeds 1,2,1 repeats seed 1"),
    (["train", "--seeds", "5-2"], "--seeds 5-2 is an empty range"),
    (["train", "--seeds", "0"], "the number of seeds must be >= 1"),
    (["train", "--seeds", "two"], "--seeds must be N"),
    (["train", "--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
    (["train", "--seeds", "2", "--log-grad-stats"], "does not log gradient"),
    (["sweep", "--lr", "-1,2"], "--lr must be > 0, got -1"),
    (["sweep", "--dp-noise", "0.5,1"], "--dp-noise 0.5 needs a clipping norm "
     "(--dp-clip > 0)"),
    (["sweep", "--dp-clip", "0,1"], "DP-SGD is all runs or none"),
    (["sweep", "--val-fraction", "0.999"], "without a training example"),
    (["train", "--seeds", "4294967295-4294967296"], "outside [0, 4294967295]"),
])
def test_bad_many_run_input_is_one_line(tmp_path, capsys, argv, message):
  ds = _npz(tmp_path / "d.npz")
  code, _, err = _main(capsys, *argv, "--dataset", ds, "--quiet",
                       "--out", str(tmp_path / "o"))
  assert code == 2, err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  assert message in err
  assert not (tmp_path / "o").exists()  # nothing written


def test_diverged_seeds_exit_3_and_keep_their_last_good_state(tmp_path,
                                                              capsys):
  ds = _npz(tmp_path / "d.npz")
  code, _, err = _main(capsys, "train", "--dataset", ds, "--hidden", "6",
                       "--quiet", "--optimizer", "sgd", "--lr", "3e38",
                       "--epochs", "2", "--seeds", "2",
                       "--out", str(tmp_path / "o"))
  assert code == 3 and "seeds 0, 1 diverged" in err, err
  summary = json.loads((tmp_path / "o" / "summary.json").read_text())
  gone = [p["diverged_epoch"] for p in summary["per_seed"]]
  assert all(isinstance(e, int) and 1 <= e <= 2 for e in gone), gone
  header = checkpoint.read_header(str(tmp_path / "o" / "seed-0" /
                                      "checkpoint.npz"))
  assert header["meta"]["epoch"] == gone[0] - 1  # the last good state


class _InterruptAfter:
  """Requests an interrupt from the ``n``-th question on (the run asks once
  after loading the data, then after each epoch)."""

  exit_code = 130

  def __init__(self, n):
    self.n, self.asked = n, 0

  def requested(self):
    self.asked += 1
    return self.asked >= self.n


def test_interrupted_sweep_resumes_to_the_same_results(tmp_path, capsys):
  from fnn import run_many
  ds = _npz(tmp_path / "d.npz")
  args = dict(dataset=ds, hidden="6", batch_size=20, epochs=3)
  grid = dict(lr=[1e-2, 3e-2])
  code = run_many.run(args, str(tmp_path / "a"), False, True, kind="sweep",
                      seeds="2", grid=grid)
  assert code == 0
  code = run_many.run(args, str(tmp_path / "b"), False, True, kind="sweep",
                      seeds="2", grid=grid,
                      interrupts=_InterruptAfter(2))
  err = capsys.readouterr().err
  assert code == 130 and "fnn sweep --resume" in err
  assert "the checkpoint of epoch 1 is kept" in err
  assert not (tmp_path / "b" / "sweep.json").exists()
  assert _main(capsys, "sweep", "--resume", "--out", str(tmp_path / "b"),
               "--quiet")[0] == 0
  a, b = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in "ab")
  assert a["configs"] == b["configs"] and a["selected"] == b["selected"]


def test_train_val_fraction_reports_validation_and_resumes(tmp_path, capsys):
  ds = _npz(tmp_path / "d.npz")
  out = tmp_path / "v"
  code, _, err = _main(capsys, "train", "--dataset", ds, *TINY, "--epochs",
                       "1", "--val-fraction", "0.25", "--out", str(out))
  assert code == 0, err
  row = _rows(out / "metrics.jsonl")[0]
  assert 0 <= row["val_accuracy"] <= 1 and row["val_loss"] > 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["config"]["val_fraction"] == 0.25
  code, _, err = _main(capsys, "train", "--resume", "--out", str(out),
                       "--epochs", "2", "--quiet")
  assert code == 0, err
  assert [r["epoch"] for r in _rows(out / "metrics.jsonl")] == [1, 2]
  code, _, err = _main(capsys, "train", "--resume", "--out", str(out),
                       "--val-fraction", "0.5")
  assert code == 2 and "--val-fraction" in err


@pytest.mark.parametrize("name", ["sweep.md", "seed-3"])
def test_no_run_writes_into_a_directory_of_many_runs(tmp_path, capsys, name):
  out = tmp_path / "o"
  out.mkdir()
  (out / name).mkdir() if name.startswith("seed") else (out / name).write_text(
      "x")
  for argv in (["train"], ["train", "--seeds", "2"], ["sweep"]):
    code, _, err = _main(capsys, *argv, "--dataset", _npz(tmp_path / "d.npz"),
                         "--quiet", "--out", str(out))
    assert code == 2 and f"holds {name} of another run" in err, err
  assert sorted(p.name for p in out.iterdir()) == [name]

"""The experiment scripts run end to end (short settings) and write results."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))  # their _common.py


def _load(name):
  path = os.path.join(ROOT, "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # 20 s; DP-SGD runs end to end in test_cli's DP run
def test_dp_sgd_experiment(tmp_path):
  script = _load("dp_sgd")
  assert script.main(["--seeds", "1", "--datasets", "digits", "--noises",
                      "1.0,4.0", "--epochs", "1", "--out", str(tmp_path)]) == 0
  rows = json.loads((tmp_path / "dp_sgd.json").read_text())["rows"]
  assert [r["noise"] for r in rows] == [None, 1.0, 4.0]
  assert rows[1]["epsilon"] > rows[2]["epsilon"] > 0  # more noise, less eps
  assert all(r["seeds"] == 1 and 0 < r["accuracy_mean"] <= 1 for r in rows)
  assert (tmp_path / "dp_sgd.png").exists() and "epsilon" in (
      tmp_path / "dp_sgd.md").read_text()


def test_dp_sgd_summary_groups_the_seeds():
  """The rows of several seeds (the run above has one: each run is a
  compilation and two accountants)."""
  script = _load("dp_sgd")
  runs = [dict(dataset="digits", noise=noise, seed=seed, test_accuracy=acc,
               seconds=1.0, steps=28,
               **({} if noise is None else dict(epsilon=eps,
                                                epsilon_pld=eps / 2)))
          for noise, eps, accs in ((None, None, (0.9, 0.8)),
                                   (1.0, 3.0, (0.7, 0.5)))
          for seed, acc in enumerate(accs)]
  rows = script.summarize(runs)
  assert [r["noise"] for r in rows] == [None, 1.0]
  assert [r["seeds"] for r in rows] == [2, 2]
  assert [r["accuracy_mean"] for r in rows] == pytest.approx([0.85, 0.6])
  assert [r["accuracy_std"] for r in rows] == pytest.approx(
      [np.std([0.9, 0.8], ddof=1), np.std([0.7, 0.5], ddof=1)])
  assert rows[1]["epsilon"] == 3.0 and rows[1]["epsilon_pld"] == 1.5


@pytest.mark.slow
def test_gradient_noise_experiment(tmp_path):
  script = _load("gradient_noise")
  assert script.main(["--epochs", "2", "--out", str(tmp_path)]) == 0
  got = json.loads((tmp_path / "gradient_noise.json").read_text())
  assert len(got["history"]) == 2 and got["history"][0]["noise_scale"] > 0


def test_digits_vs_sklearn_experiment(tmp_path):
  script = _load("digits_vs_sklearn")
  assert script.main(["--seeds", "2", "--epochs", "5", "--out",
                      str(tmp_path)]) == 0
  got = json.loads((tmp_path / "digits_vs_sklearn.json").read_text())
  for name in ("fnn", "sklearn"):
    assert len(got[name]["accuracy"]) == 2 and got[name]["wall_seconds"] > 0
    assert min(got[name]["accuracy"]) > 0.5  # 5 epochs already learn digits
  assert got["speedup"] > 0 and (tmp_path / "digits_vs_sklearn.png").exists()


@pytest.mark.slow  # 14 s; the IDX reader and training are tested in test_train
def test_nielsen_experiment_on_small_idx_files(tmp_path):
  from fnn import data
  rng = np.random.default_rng(0)
  d = tmp_path / "mnist"
  d.mkdir()
  for stem, n in (("train", 80), ("t10k", 20)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 50, size=(n, 28, 28))
    images[np.arange(n), labels, :] = 255  # a learnable stripe per class
    data.write_idx(str(d / f"{stem}-images-idx3-ubyte"), images)
    data.write_idx(str(d / f"{stem}-labels-idx1-ubyte"), labels)
  script = _load("nielsen_mnist")
  script.EPOCHS = 3  # the book's 30 are for the real data
  assert script.main(["--seeds", "1", "--mnist-dir", str(d), "--out",
                      str(tmp_path)]) == 0
  got = json.loads((tmp_path / "nielsen_mnist.json").read_text())
  assert len(got["rows"]) == 4 and "comparable with the book" in got["data"]
  assert all(r["peak"] >= r["final"] - 1e-9 for r in got["rows"])
  assert all(len(rs[0]["curve"]) == 3 for rs in got["runs"].values())

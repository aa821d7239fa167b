"""The experiment scripts run end to end (short settings) and write results."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  path = os.path.join(ROOT, "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dp_sgd_experiment(tmp_path):
  script = _load("dp_sgd")
  assert script.main(["--seeds", "2", "--datasets", "digits", "--noises",
                      "1.0,4.0", "--epochs", "3", "--out", str(tmp_path)]) == 0
  rows = json.loads((tmp_path / "dp_sgd.json").read_text())["rows"]
  assert [r["noise"] for r in rows] == [None, 1.0, 4.0]
  assert rows[1]["epsilon"] > rows[2]["epsilon"] > 0  # more noise, less eps
  assert all(r["seeds"] == 2 and 0 < r["accuracy_mean"] <= 1 for r in rows)
  assert (tmp_path / "dp_sgd.png").exists() and "epsilon" in (
      tmp_path / "dp_sgd.md").read_text()


@pytest.mark.slow
def test_gradient_noise_experiment(tmp_path):
  script = _load("gradient_noise")
  assert script.main(["--epochs", "2", "--out", str(tmp_path)]) == 0
  got = json.loads((tmp_path / "gradient_noise.json").read_text())
  assert len(got["history"]) == 2 and got["history"][0]["noise_scale"] > 0

"""experiments/seed_derivations.py: every seed result agrees, the slips don't."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script():
  path = os.path.join(ROOT, "experiments", "seed_derivations.py")
  spec = importlib.util.spec_from_file_location("seed_derivations", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # 21 s; tests/test_seeds.py checks every closed form
def test_every_result_agrees_and_the_slips_are_shown(script, tmp_path):
  assert script.main(["--out", str(tmp_path), "--seed", "3"]) == 0
  rows = json.loads((tmp_path / "seed_derivations.json").read_text())
  slips = [r for r in rows if "as written" in r["result"]]
  assert {r["seed"] for r in slips} == {"000", "002"}
  for r in slips:  # the text's form is off by far more than rounding
    assert r["verdict"].startswith("DIFFERS") and r["vs_jax_grad"] > 1e-3
  others = [r for r in rows if r not in slips]
  assert len(others) >= 25
  assert all(r["vs_fnn"] < 1e-12 and r["vs_jax_grad"] < 1e-12 for r in others)
  names = " ".join(r["result"] for r in rows)
  for result in ("dL/dA", "dA/dZ", "dL/dZ", "dL/dW", "dL/db", "dL/dA_prev",
                 "dC/dw^(L-2)", "BP1", "BP2", "BP3", "BP4",
                 "mini-batch SGD step"):
    assert result in names
  text = (tmp_path / "seed_derivations.md").read_text()
  assert text.count("\n| ") == len(rows) + 1 and "A_rrevious" in text

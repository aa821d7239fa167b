"""Requests that would exhaust memory or run for days are refused up front."""
import pytest

from helpers import cli_error

CASES = [
    (["gradcheck", "--sizes", "100000,100000"], "10,000,100,000 parameters"),
    (["gradcheck", "--batch", "100000000"], "43 parameters"),
    (["gradcheck", "--all", "--batch", "100000000"], "gradcheck model"),
    (["gradcheck", "--all", "--depths", "100000"], "at most 32"),
    (["gradcheck", "--mode", "directional", "--directions", "1000000000"],
     "at most 10,000"),
    (["train", "--dataset", "xor", "--hidden", "100000,100000"],
     "10,000,600,002 parameters"),
    # The same widths as layers of a spec: the same count, the same refusal.
    (["train", "--dataset", "xor", "--arch", "dense:100000,relu,"
      "dense:100000,relu"], "dense:100000,relu,dense:100000,relu,dense:2 has "
     "10,000,600,002 parameters"),
    (["gradcheck", "--arch", "conv1d:100000:3,flatten", "--sizes",
      "100000,10"], "gradcheck model conv1d:100000:3:1:0,flatten,dense:10"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[m for _, m in CASES])
def test_refused_before_allocating(tmp_path, capsys, argv, message):
  if argv[0] == "train":
    argv = [*argv, "--out", str(tmp_path / "r"), "--quiet"]
  assert message in cli_error(capsys, argv)
  assert not (tmp_path / "r").exists()

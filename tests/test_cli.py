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

"""The `fnn` command as a process: usage errors, help, pipes, interrupts,
--import, the working directory, start-up cost and progress output."""
import argparse
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from jax.errors import JaxRuntimeError

from fnn import cli

FNN = Path(sys.executable).parent / "fnn"  # the console script
TINY = ["--dataset", "xor", "--hidden", "4", "--batch-size", "50"]
TIMEOUT = 300  # seconds; a loaded 2-core machine runs a sweep of 24 in ~60 s


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """The processes this module starts share one persistent compilation
  cache: a process still compiles what no earlier one did (this process read
  its JAX configuration when it imported JAX; the variables reach only the
  subprocesses)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JAX_COMPILATION_CACHE_DIR",
              str(tmp_path_factory.mktemp("jax_cache")))
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    yield


def _fnn(*args, cwd=None, script=False, **kwargs):
  command = [str(FNN)] if script else [sys.executable, "-m", "fnn"]
  return subprocess.run([*command, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=TIMEOUT, **kwargs)


def _main(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def _one_line_error(err: str, prefix: str) -> None:
  assert err.count("\n") == 1 and err.startswith(f"{prefix}: error: "), err
  assert "Traceback" not in err


# ----------------------------------------------------------- usage errors


def test_abbreviated_option_is_refused_with_a_suggestion_as_a_process():
  proc = _fnn("train", "--epoch", "5")
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr == ("fnn train: error: unrecognized arguments: --epoch 5 "
                         "(did you mean --epochs?)\n")


@pytest.mark.parametrize("argv,prefix,message", [
    (["train", "--dat", "xor"], "fnn train", "unrecognized arguments: --dat"),
    (["gradcheck", "--out", "X"], "fnn gradcheck",
     "unrecognized arguments: --out X"),
    (["gradcheck", "--dir", "3"], "fnn gradcheck",
     "unrecognized arguments: --dir 3 (did you mean"),
    (["--vers"], "fnn", "unrecognized arguments: --vers"),
    (["train", "--lrr", "1", "--epoch", "3"], "fnn train",
     "(did you mean --lr for --lrr, --epochs for --epoch?)"),
    (["train", "--optimizer", "adamm"], "fnn train",
     "invalid choice: 'adamm' (choose from 'sgd', 'momentum', 'adam', "
     "'adamw') (did you mean 'adam' or 'adamw'?)"),
    (["trian"], "fnn", "invalid choice: 'trian'"),
], ids=["train-prefix", "gradcheck-out", "gradcheck-prefix", "main-prefix",
        "two-unknown", "bad-choice", "bad-command"])
def test_unknown_options_name_the_subcommand(capsys, argv, prefix, message):
  code, out, err = _main(capsys, *argv)
  assert code == 2 and out == ""
  _one_line_error(err, prefix)
  assert message in err


NON_FINITE = [(cmd, opt, v) for cmd, opts in (
    ("train", ("--lr", "--weight-decay", "--dropout", "--dp-clip",
               "--dp-noise", "--dp-delta")),
    ("gradcheck", ("--eps",))) for opt in opts
              for v in ("nan", "inf", "-inf")]


@pytest.mark.parametrize("command,option,value", NON_FINITE,
                         ids=[f"{o}={v}" for _, o, v in NON_FINITE])
def test_non_finite_values_are_refused(capsys, command, option, value):
  code, _, err = _main(capsys, command, option, value)
  assert code == 2
  _one_line_error(err, f"fnn {command}")
  assert f"argument {option}: must be a finite number, got {value!r}" in err


@pytest.mark.parametrize("command", ["train", "gradcheck"])
@pytest.mark.parametrize("value", [str(2**63), str(2**32), "-1", "1.5"])
def test_seed_outside_32_bits_is_refused(capsys, command, value):
  code, _, err = _main(capsys, command, "--seed", value)
  assert code == 2
  _one_line_error(err, f"fnn {command}")
  assert (f"argument --seed: must be an integer in [0, {2**32 - 1}], got "
          f"{value!r}") in err


def test_seed_range_is_what_jax_keeps_apart():
  """With 32-bit types (JAX's default) 2**32 is the key of seed 0."""
  code = ("import jax\n"
          "k = lambda s: jax.random.key_data(jax.random.key(s)).tolist()\n"
          "assert k(2**32) == k(0) and k(2**32 - 1) != k(0)\n"
          "try:\n  jax.random.key(2**63)\nexcept OverflowError:\n  pass\n"
          "else:\n  raise AssertionError('2**63 accepted')\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr
  assert cli.seed(str(2**32 - 1)) == 2**32 - 1 and cli.seed("0") == 0


@pytest.mark.parametrize("command,option", [
    ("train", "--epochs"), ("train", "--batch-size"), ("train", "--devices"),
    ("gradcheck", "--batch"), ("gradcheck", "--directions")])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_counts_must_be_positive_integers(capsys, command, option, value):
  code, _, err = _main(capsys, command, option, value)
  assert code == 2
  _one_line_error(err, f"fnn {command}")
  assert f"argument {option}: must be a positive integer, got {value!r}" in err


def test_plot_into_a_missing_directory_is_refused_before_the_sweep(
    capsys, tmp_path):
  path = tmp_path / "missing" / "map.png"
  code, out, err = _main(capsys, "gradcheck", "--all", "--plot", str(path))
  assert code == 2 and out == ""
  _one_line_error(err, "fnn gradcheck")
  assert f"directory {tmp_path / 'missing'} does not exist" in err


# ----------------------------------------------------------- help


def _valued_options(parser):
  return [a for a in parser._actions if a.option_strings and a.nargs != 0]


def test_train_help_shows_every_choice_and_default(capsys, monkeypatch):
  from fnn import activations, config, losses, model, train
  monkeypatch.setenv("COLUMNS", "80")
  code, text, _ = _main(capsys, "train", "--help")
  assert code == 0
  names = [*activations.hidden_activations(),
           *activations.output_activations(), *losses.LOSSES,
           *model.INIT_SCHEMES, *train.OPTIMIZERS, *train.SCHEDULES,
           *config.DTYPES, *config.DEFAULTS]
  missing = [n for n in names if n not in text]
  assert not missing
  parser = cli.build_parser(("train",)).subcommands["train"]
  for action in _valued_options(parser):
    if action.dest not in ("imports", "help"):
      assert "(default: " in action.help, action.option_strings
  # The per-dataset table: each dataset's block lists its value of each key
  # that differs between datasets, from fnn.config (not retyped).
  epilog = text[text.index("defaults that depend on --dataset"):]
  blocks = dict(re.findall(r"^  (\S+)\s+(.*?)(?=^  \S|\Z)", epilog,
                           re.M | re.S))
  assert list(blocks) == list(config.DEFAULTS)
  for name, overrides in config.DEFAULTS.items():
    flat = " ".join(blocks[name].split())
    for key in overrides:
      value = dict(config.BASE, **overrides)[key]
      shown = f"{value:g}" if isinstance(value, float) else str(value)
      assert f"{config.option(key)} {shown}" in flat, (name, key)
  assert max(map(len, text.splitlines())) <= 79


def test_gradcheck_help_shows_every_choice_and_default(capsys, monkeypatch):
  from fnn import activations, losses
  monkeypatch.setenv("COLUMNS", "80")
  code, text, _ = _main(capsys, "gradcheck", "--help")
  assert code == 0
  for n in (*activations.hidden_activations(), *losses.LOSSES, "float32",
            "bfloat16", "directional", "markdown"):
    assert n in text
  parser = cli.build_parser(("gradcheck",)).subcommands["gradcheck"]
  for action in _valued_options(parser):
    if action.dest not in ("imports", "help", "plot"):
      assert "default" in action.help, action.option_strings


# ----------------------------------------------------------- pipes


# `train --help` takes the path of `--help` (argparse prints and exits) and
# imports JAX for the registries: slow only.
@pytest.mark.parametrize("argv", [
    ["info"], pytest.param(["train", "--help"], marks=pytest.mark.slow),
    ["--help"]], ids=["info", "train-help", "help"])
def test_a_reader_that_left_ends_the_command_quietly(argv):
  """`fnn info | head -1`: the reader closed its end before fnn wrote."""
  r, w = os.pipe()
  os.close(r)
  try:
    proc = subprocess.run([str(FNN), *argv], stdout=w, stderr=subprocess.PIPE,
                          text=True, timeout=TIMEOUT)
  finally:
    os.close(w)
  assert proc.returncode == 0
  assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
  assert proc.stderr == ""


def test_head_of_info_through_a_shell():
  proc = subprocess.run(["bash", "-c", f"'{FNN}' info | head -1; "
                         "echo \"producer exit ${PIPESTATUS[0]}\" >&2"],
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.stdout.startswith("fnn ") and proc.stdout.count("\n") == 1
  assert proc.stderr == "producer exit 0\n"


# ----------------------------------------------------------- start-up


def test_import_fnn_is_lazy_and_complete():
  code = textwrap.dedent("""
      import contextlib, sys
      import fnn
      from fnn import cli
      assert cli.main(["--version"]) == 0
      with contextlib.suppress(SystemExit):
        cli.main(["--help"])
      assert not [m for m in sys.modules if m.split(".")[0] == "jax"]
      assert fnn.__version__ and "MLP" in dir(fnn) and "grad" in fnn.__all__
      from fnn import MLP, data, check_grads
      assert fnn.MLP is MLP and fnn.data is data and fnn.grad is not None
      assert fnn.losses.LOSSES is fnn.LOSSES  # a submodule, as before
      for name in fnn.__all__:
        getattr(fnn, name)
      try:
        fnn.no_such_name
      except AttributeError as e:
        assert "no_such_name" in str(e)
      else:
        raise AssertionError("no AttributeError")
  """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr


def test_interrupt_handler_is_installed_before_jax_and_restored():
  code = textwrap.dedent("""
      import signal, sys
      from fnn import _interrupt, cli
      seen = []
      install = _interrupt.install
      def spy(prefix, message):
        seen.append((prefix, "jax" in sys.modules))
        return install(prefix, message)
      _interrupt.install = spy
      assert cli.main(["train", "--lr", "nan"]) == 2
      assert seen == [("fnn train", False)], seen
      assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------- the cwd


MALICIOUS = "open({marker!r}, 'w').write('ran')\n"


def _plant(directory: Path, names) -> Path:
  marker = directory / "MARKER"
  for name in names:
    (directory / f"{name}.py").write_text(MALICIOUS.format(marker=str(marker)))
  return marker


# A module for --import that keeps `gradcheck --all` to its first n
# configurations: the tests below need a sweep that runs, plots or is
# interrupted, not all of it (each new configuration's op-by-op warm-up
# costs seconds).
FEW_CONFIGS = textwrap.dedent("""
    from fnn import sweep
    every = sweep.sweep_models
    sweep.sweep_models = lambda *args, **kwargs: every(*args, **kwargs)[:{n}]
""")

SOFTSIGN = textwrap.dedent("""
    import jax.numpy as jnp
    import fnn
    # softsign(z) = z / (1 + |z|); its derivative is 1 / (1 + |z|)^2.
    fnn.register_activation("softsign", lambda z: z / (1 + jnp.abs(z)),
                            lambda z, a: 1 / (1 + jnp.abs(z)) ** 2)
""")


@pytest.fixture(scope="module")
def softsign_run(tmp_path_factory):
  """One `python -m fnn train --import my_softsign` in a directory that also
  holds a matplotlib.py, argparse.py, difflib.py and tqdm.py: the cwd tests
  and the --import test share it."""
  cwd = tmp_path_factory.mktemp("cwd")
  marker = _plant(cwd, ["matplotlib", "argparse", "difflib", "tqdm"])
  (cwd / "my_softsign.py").write_text(SOFTSIGN)
  version = _fnn("--version", cwd=cwd)
  proc = _fnn("train", *TINY, "--activation", "softsign", "--epochs", "1",
              "--quiet", "--import", "my_softsign", "--out", "run", cwd=cwd)
  return cwd, marker, version, proc


def test_python_m_fnn_does_not_import_from_the_working_directory(
    softsign_run):
  cwd, marker, version, proc = softsign_run
  assert version.returncode == 0, version.stderr
  assert proc.returncode == 0, proc.stderr
  assert (cwd / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert not marker.exists()


@pytest.mark.slow  # python -m fnn's variant above runs by default
@pytest.mark.skipif(not FNN.exists(), reason="no console script")
def test_gradcheck_plot_does_not_import_from_the_working_directory(tmp_path):
  marker = _plant(tmp_path, ["matplotlib", "tqdm"])
  (tmp_path / "few_configs.py").write_text(FEW_CONFIGS.format(n=2))
  proc = _fnn("gradcheck", "--all", "--depths", "1", "--plot", "map.png",
              "--format", "json", "--import", "few_configs", cwd=tmp_path,
              script=True)
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
  got = json.loads(proc.stdout)
  assert got["configurations"] == 2 and got["failed"] == 0
  assert not marker.exists()


# ----------------------------------------------------------- --import


def test_train_import_registers_an_activation(softsign_run, tmp_path,
                                              monkeypatch, capsys):
  cwd, _, _, proc = softsign_run
  assert proc.returncode == 0, proc.stderr
  summary = json.loads((cwd / "run" / "summary.json").read_text())
  assert summary["model"]["activation"][0] == "softsign"
  # Without --import the name is unknown (this process never imported it).
  monkeypatch.chdir(tmp_path)
  (tmp_path / "my_softsign.py").write_text(SOFTSIGN)
  code, _, err = _main(capsys, "train", *TINY, "--activation", "softsign",
                       "--epochs", "1", "--quiet", "--out", "no")
  assert code == 2 and "'softsign'" in err
  assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", ["train", "gradcheck"])
def test_an_error_in_the_users_module_prints_its_traceback(
    command, tmp_path, monkeypatch, capsys):
  name = f"broken_{command}_module"
  (tmp_path / f"{name}.py").write_text(
      "def helper():\n  raise RuntimeError('boom in user code')\n\nhelper()\n")
  monkeypatch.chdir(tmp_path)
  path = list(sys.path)
  extra = ["--out", "run"] if command == "train" else []
  code, out, err = _main(capsys, command, "--import", name, *extra)
  assert code == 1 and out == ""
  assert err.startswith("Traceback (most recent call last):")
  assert f'{name}.py", line 2, in helper' in err
  assert "RuntimeError: boom in user code" in err
  assert err.splitlines()[-1] == (f"fnn {command}: error in --import {name} "
                                  f"(traceback above)")
  assert "cli.py" not in err and "importlib" not in err
  assert sys.path == path  # the cwd was on sys.path only while importing
  assert not (tmp_path / "run").exists()


def test_a_missing_dependency_of_the_users_module_is_the_users_bug(
    tmp_path, monkeypatch, capsys):
  (tmp_path / "needs_dep_q.py").write_text("import no_such_dependency_q\n")
  monkeypatch.chdir(tmp_path)
  code, _, err = _main(capsys, "gradcheck", "--import", "needs_dep_q")
  assert code == 1
  assert "No module named 'no_such_dependency_q'" in err and "Traceback" in err


def test_a_module_that_does_not_exist_is_a_usage_error(tmp_path, monkeypatch,
                                                       capsys):
  monkeypatch.chdir(tmp_path)
  code, _, err = _main(capsys, "gradcheck", "--import", "no_such_module_q")
  assert code == 2
  _one_line_error(err, "fnn gradcheck")
  assert "--import no_such_module_q: no module named 'no_such_module_q'" in err


# ----------------------------------------------------------- errors


def _command(exc):
  def func(args, interrupts):
    del args, interrupts
    raise exc
  return argparse.Namespace(command="train", func=func)


@pytest.mark.parametrize("exc,message", [
    (ValueError("bad\nvalue"), "fnn train: error: bad value"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/run/x.npz"),
     "fnn train: error: /ro/run/x.npz: Read-only file system"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
     "fnn train: error: /a -> /b: Invalid cross-device link"),
    (JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                     "allocate 1073741824 bytes.\nBufferAssignment ..."),
     "fnn train: error: RESOURCE_EXHAUSTED: Out of memory while trying to "
     "allocate 1073741824 bytes."),
    (MemoryError(), "fnn train: error: MemoryError"),
], ids=["value", "oserror", "oserror2", "resource", "memory"])
def test_errors_are_one_line_exit_2(capsys, exc, message):
  assert cli._run_command(_command(exc), None) == 2
  err = capsys.readouterr().err
  assert err.startswith(message) and err.count("\n") == 1, err


def test_other_errors_keep_their_traceback():
  with pytest.raises(RuntimeError, match="a bug"):
    cli._run_command(_command(RuntimeError("a bug")), None)


def test_keyboard_interrupt_reaching_main_claims_nothing(capsys, monkeypatch):
  def interrupted(args, interrupts):
    raise KeyboardInterrupt
  monkeypatch.setattr(cli, "_info", interrupted)
  code, _, err = _main(capsys, "info")
  assert code == 130
  assert err.strip() == "fnn info: interrupted"


# ----------------------------------------------------------- gradcheck --all


def test_sigint_during_the_sweep_exits_130_with_gradchecks_message(tmp_path):
  # 10 configurations: a progress line after each, 9 left to interrupt.
  (tmp_path / "few_configs.py").write_text(FEW_CONFIGS.format(n=10))
  proc = subprocess.Popen([sys.executable, "-m", "fnn", "gradcheck", "--all",
                           "--depths", "1", "--import", "few_configs"],
                          cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  watchdog = threading.Timer(TIMEOUT, proc.kill)
  watchdog.start()
  try:
    first = proc.stderr.readline()  # stderr is no terminal: plain lines
    assert re.match(r"gradcheck: \d+/\d+ configurations", first), first
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
  finally:
    watchdog.cancel()
    proc.kill()
  assert proc.returncode == 130, err
  assert ("fnn gradcheck: interrupt: stopping after this configuration "
          "(Ctrl-C again to stop now)") in err
  done, total = map(int, re.search(
      r"^fnn gradcheck: interrupted after (\d+) of (\d+) configurations$",
      err, re.M).groups())
  assert int(first.split()[1].split("/")[0]) <= done < total
  assert "checkpoint" not in err and "Traceback" not in err
  assert out == ""


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_is_a_bar_on_a_terminal_lines_otherwise_nothing_quiet():
  tty = _Terminal()
  bar = cli._Progress(30, tty, quiet=False)
  for i in range(1, 31):
    bar.update(i)
  bar.close()
  frames = [f for f in re.split(r"[\r\n]", tty.getvalue()) if f.strip()]
  assert frames and all(len(f) <= 79 for f in frames)
  assert "gradcheck" in frames[-1] and "30/30" in frames[-1]
  assert "config/s" in frames[-1] or "s/config" in frames[-1]  # the rate
  assert "<" in frames[-1]  # elapsed<remaining

  log = io.StringIO()
  lines = cli._Progress(30, log, quiet=False)
  for i in range(1, 31):
    lines.update(i)
  rows = log.getvalue().splitlines()
  assert [r.split(" configurations")[0] for r in rows] == [
      f"gradcheck: {i}/30" for i in range(3, 31, 3)]

  quiet = _Terminal()
  nothing = cli._Progress(30, quiet, quiet=True)
  for i in range(1, 31):
    nothing.update(i)
  nothing.close()
  assert quiet.getvalue() == ""


def test_sigint_during_training_stops_after_the_epoch(tmp_path):
  """The recorder reaches fnn.run: the run stops cleanly, exit 130."""
  proc = subprocess.Popen([sys.executable, "-m", "fnn", "train", *TINY,
                           "--epochs", "5000", "--out", "run"], cwd=tmp_path,
                          text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  watchdog = threading.Timer(TIMEOUT, proc.kill)
  watchdog.start()
  try:
    proc.stdout.readline()  # the run has started
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
  finally:
    watchdog.cancel()
    proc.kill()
  assert proc.returncode == 130, err
  assert ("fnn train: interrupt: stopping after this epoch (press Ctrl-C "
          "again to stop now)") in err
  assert "fnn train: interrupted" in err and "Traceback" not in err

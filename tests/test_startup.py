"""Start-up that costs nothing the second time: the CLI's persistent
compilation cache (fnn/_cache.py) and lazy imports of the optional
dependencies.

The CLI runs are subprocesses with the suite's own cache removed from their
environment (tests/conftest.py sets ``JAX_COMPILATION_CACHE_DIR``, which
fnn leaves alone), so they exercise fnn's own cache in a temporary
directory.
"""
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import fnn
from fnn import _cache, _fs, checkpoint, train

TINY = ["--dataset", "xor", "--hidden", "4", "--batch-size", "50", "--epochs",
        "2", "--quiet"]
TIMEOUT = 300
# Runs fnn's main with JAX's compilation events counted; prints them as JSON
# on the last line of stdout.
_COUNTING_MAIN = """
import collections, json, sys
import jax.monitoring as m
counts = collections.Counter()
m.register_event_listener(lambda event, *a, **k: counts.update([event]))
m.register_event_duration_secs_listener(
    lambda event, *a, **k: counts.update([event]))
from fnn.cli import main
code = main(sys.argv[1:])
print(json.dumps(counts))
sys.exit(code)
"""
_MISSES = "/jax/compilation_cache/cache_misses"
_HITS = "/jax/compilation_cache/cache_hits"
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_COMPILES = "/jax/core/compile/backend_compile_duration"  # one per program


def _env(**changes):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE",
                              "JAX_ENABLE_COMPILATION_CACHE", "FNN_COMPILE"))}
  env.update(changes)
  return env


def _train(out, *extra, env):
  proc = subprocess.run([sys.executable, "-c", _COUNTING_MAIN, "train", *TINY,
                         "--out", str(out), *extra], capture_output=True,
                        text=True, timeout=TIMEOUT, env=env)
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


def _entries(path):
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_second_identical_run_compiles_nothing(tmp_path):
  cache = tmp_path / "cache"
  env = _env(FNN_COMPILE_CACHE=str(cache))
  first, _ = _train(tmp_path / "r1", env=env)
  stored = _entries(cache)
  assert stored and first[_MISSES] == first[_REQUESTS] > 0
  assert oct((cache.stat().st_mode & 0o777)) == oct(0o700)
  mtimes = {n: (cache / n).stat().st_mtime_ns for n in stored}
  second, _ = _train(tmp_path / "r2", env=env)
  # Every program went through the cache and was found there.
  assert second.get(_MISSES, 0) == 0
  assert second[_HITS] == second[_REQUESTS] == second[_COMPILES] > 0
  assert {n: (cache / n).stat().st_mtime_ns for n in _entries(cache)} == mtimes


def test_no_compile_cache_writes_nothing_even_with_jax_configured(tmp_path):
  ours, jax_own = tmp_path / "ours", tmp_path / "jax"
  counts, _ = _train(tmp_path / "r", "--no-compile-cache",
                     env=_env(FNN_COMPILE_CACHE=str(ours),
                              JAX_COMPILATION_CACHE_DIR=str(jax_own)))
  assert _entries(ours) == [] and _entries(jax_own) == []
  assert counts.get(_REQUESTS, 0) == 0


@pytest.mark.slow  # a training subprocess; the precedence is fnn/_cache.py's first rule
def test_jax_configuration_wins_over_fnn_default(tmp_path):
  ours, jax_own = tmp_path / "ours", tmp_path / "jax"
  env = _env(FNN_COMPILE_CACHE=str(ours),
             JAX_COMPILATION_CACHE_DIR=str(jax_own),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  _train(tmp_path / "r", env=env)
  assert not ours.exists() and _entries(jax_own)


def test_a_file_as_cache_dir_is_one_warning_line(tmp_path, monkeypatch):
  import io
  blocker = tmp_path / "blocker"
  blocker.write_text("not a directory")
  monkeypatch.setenv("FNN_COMPILE_CACHE", str(blocker))
  for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE"):
    monkeypatch.delenv(k, raising=False)
  import jax
  monkeypatch.setattr(_cache, "_jax_configured", lambda jax: False)
  before = jax.config.jax_compilation_cache_dir
  stream = io.StringIO()
  assert _cache.configure(types.SimpleNamespace(
      command="train", compile_cache=True), stream) is None
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1 and "no compilation cache for this run (" in lines[0]
  assert str(blocker) in lines[0]
  assert jax.config.jax_compilation_cache_dir == before  # left as it was


@pytest.mark.slow  # end to end; the message is checked in-process above
def test_unusable_cache_dir_still_trains(tmp_path):
  blocker = tmp_path / "blocker"
  blocker.write_text("not a directory")
  path = blocker / "jax"  # under a file (a file itself: the test above)
  _, err = _train(tmp_path / "r", env=_env(FNN_COMPILE_CACHE=str(path)))
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "fnn train: warning: no compilation cache for this run ("), err
  assert str(blocker) in lines[0]
  assert (tmp_path / "r" / "checkpoint.npz").exists()


@pytest.mark.parametrize("env, want", [
    ({"FNN_COMPILE_CACHE": "/c/x", "XDG_CACHE_HOME": "/x"}, "/c/x"),
    ({"FNN_COMPILE_CACHE": ""}, None),
    ({"FNN_COMPILE_CACHE": "Off"}, None),
    ({"FNN_COMPILE_CACHE": "0"}, None),
    ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/fnn/jax"),
    ({"XDG_CACHE_HOME": "relative"}, os.path.expanduser("~/.cache/fnn/jax")),
    ({}, os.path.expanduser("~/.cache/fnn/jax")),
])
def test_cache_directory(env, want):
  assert _cache.directory(env) == want


def test_command_without_the_option_is_left_alone():
  import jax
  before = jax.config.jax_compilation_cache_dir
  assert _cache.configure(types.SimpleNamespace(command="info")) is None
  assert jax.config.jax_compilation_cache_dir == before


# ------------------------------------------------------------ lazy imports

OPTIONAL = ("matplotlib", "sklearn", "dp_accounting", "torch", "tqdm",
            "mnist1d", "pandas", "scipy")


@pytest.mark.parametrize("code", [
    "import fnn",
    "import fnn.cli",
    # What `fnn train` imports before it trains: the parser of every
    # command, and the modules that run them.
    "import fnn.cli; fnn.cli.build_parser(); "
    "import fnn.run, fnn.run_many, fnn.sweep, fnn.gradcheck, fnn.stats",
])
def test_optional_dependencies_are_imported_when_used(code):
  proc = subprocess.run(
      [sys.executable, "-c", f"{code}\nimport sys\nprint(sorted(m for m in "
       f"{OPTIONAL!r} if m in sys.modules))"],
      capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]", code


def test_import_fnn_does_not_import_jax():
  proc = subprocess.run(
      [sys.executable, "-c", "import fnn, fnn.cli, sys; "
       "print([m for m in ('jax', 'numpy') if m in sys.modules])"],
      capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.stdout.strip() == "[]"


# ---------------------------------------------------- per-epoch checkpoints

_KILLED_WRITER = """
import os, sys, jax, fnn
from fnn import checkpoint, train
model = fnn.MLP((3, 64, 2))
state = train.init_state(model, train.make_optimizer("adam", 1e-3),
                         jax.random.key(0))
for epoch in range(1, 100000):
  state = state._replace(step=state.step + 1)
  checkpoint.save(sys.argv[1], state, {"lr": 1e-3}, {"epoch": epoch})
  print(epoch, flush=True)
"""


def test_checkpoint_is_whole_after_kill_9_while_writing(tmp_path):
  path = tmp_path / "checkpoint.npz"
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)],
                          stdout=subprocess.PIPE, text=True)
  try:
    for line in proc.stdout:  # killed while it writes the next ones
      if int(line) >= 30:
        break
    proc.kill()
  finally:
    proc.kill()
    proc.wait(timeout=60)
  header = checkpoint.read_header(str(path))  # verified: the digest matches
  assert header["meta"]["epoch"] >= 30
  template = train.init_state(fnn.MLP((3, 64, 2)),
                              train.make_optimizer("adam", 1e-3),
                              jax.random.key(0))
  state, _ = checkpoint.load(str(path), template)
  assert int(state.step) == header["meta"]["epoch"]


def test_saves_are_paced_to_a_twentieth_of_the_time(tmp_path, monkeypatch):
  from fnn import run
  now = [100.0]
  writes = []
  monkeypatch.setattr(run.time, "monotonic", lambda: now[0])

  def fake_save(path, state, config, meta):
    writes.append(meta["epoch"])
    now[0] += 0.01  # each write takes 10 ms

  monkeypatch.setattr(run.checkpoint, "save", fake_save)
  monkeypatch.setattr(run, "_write_metrics", lambda path, history: None)
  r = run._Run(str(tmp_path), None, True)
  for epoch in range(11):  # epochs of 70 ms: a write every 0.2 s at most
    r.save(None, {}, {"epoch": epoch}, [])
    now[0] += 0.07
  assert run.SAVE_PACE == 20 and writes == [0, 3, 6, 9]
  assert r.saved_epoch == 9 and r.pending[2]["epoch"] == 10
  r.save(None, {}, {"epoch": 11}, [], force=True)  # the last epoch
  assert writes[-1] == 11 and r.pending is None
  r.flush()  # nothing pending: nothing written
  assert writes == [0, 3, 6, 9, 11]


def test_run_writes_the_last_epoch_and_an_interrupted_one(tmp_path,
                                                           monkeypatch,
                                                           capsys):
  from fnn import cli, run
  monkeypatch.setattr(run, "SAVE_PACE", 1e9)  # only forced writes
  out = tmp_path / "run"
  assert cli.main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 0
  capsys.readouterr()
  header = checkpoint.read_header(str(out / "checkpoint.npz"))
  assert header["meta"]["epoch"] == 3
  assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").open()] == [
      1, 2, 3]


def test_divergence_writes_the_last_good_epoch_even_when_pending(
    tmp_path, monkeypatch, capsys):
  from fnn import cli, run
  monkeypatch.setattr(run, "SAVE_PACE", 1e9)  # epochs 1.. stay pending
  out = tmp_path / "run"
  code = cli.main(["train", "--dataset", "xor", "--hidden", "4", "--quiet",
                   "--optimizer", "sgd", "--lr", "3e38", "--epochs", "5",
                   "--out", str(out)])
  err = capsys.readouterr().err
  assert code == 3
  epoch = checkpoint.read_header(str(out / "checkpoint.npz"))["meta"]["epoch"]
  assert f"kept the last good checkpoint (epoch {epoch})" in err


def test_header_fast_path_stores_what_json_reads_back(tmp_path):
  template = train.init_state(fnn.MLP((3, 4, 2)),
                              train.make_optimizer("adam", 1e-3),
                              jax.random.key(0))
  path = str(tmp_path / "c.npz")
  config = {"hidden": (4,), "lr": np.float64(0.1), "flag": True, "none": None}
  for meta in ({"history": [{"epoch": 1, "loss": float("nan")}]},
               {"by_epoch": {1: "a", 10: "b", 2: "c"}}):  # int keys: slow path
    checkpoint.save(path, template, config, meta)
    header = checkpoint.read_header(path)  # verified
    assert header["config"] == {"hidden": [4], "lr": 0.1, "flag": True,
                                "none": None}
    assert checkpoint._canonical(header["meta"]) == checkpoint._canonical(
        json.loads(json.dumps(meta)))
  cyclic = []
  cyclic.extend([cyclic] * 10)
  with pytest.raises(TypeError, match="meta must be JSON-able"):
    checkpoint.save(path, template, config, {"x": cyclic})


@pytest.mark.parametrize("env, want", [
    ({"FNN_DATA_CACHE": "/d", "XDG_CACHE_HOME": "/x"}, "/d"),
    ({"FNN_DATA_CACHE": "off"}, None),
    ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/fnn/data"),
    ({}, os.path.expanduser("~/.cache/fnn/data")),
])
def test_data_cache_directory(env, want):
  assert _cache.data_directory(env) == want

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

import pytest

from fnn import _cache

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


def test_jax_configuration_wins_over_fnn_default(tmp_path):
  ours, jax_own = tmp_path / "ours", tmp_path / "jax"
  _train(tmp_path / "r", env=_env(FNN_COMPILE_CACHE=str(ours),
                                  JAX_COMPILATION_CACHE_DIR=str(jax_own),
                                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"))
  assert not ours.exists() and _entries(jax_own)


@pytest.mark.parametrize("where", ["under_a_file", "a_file"])
def test_unusable_cache_dir_still_trains(tmp_path, where):
  blocker = tmp_path / "blocker"
  blocker.write_text("not a directory")
  path = blocker / "jax" if where == "under_a_file" else blocker
  _, err = _train(tmp_path / "r", env=_env(FNN_COMPILE_CACHE=str(path)))
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "fnn train: warning: no compilation cache for this run ("), err
  assert str(blocker) in lines[0] and (tmp_path / "r" / "checkpoint.npz").exists()


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

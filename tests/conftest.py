"""Test configuration: float64 for gradient checks, strict rank promotion,
and one compilation cache for the whole run.

x64 lets the hand-derived gradients be compared with ``jax.grad`` at ~1e-12;
``rank_promotion="raise"`` turns an accidental ``(n, 1)`` vs ``(n,)`` broadcast
(the classic bias bug) into an error.

The compilation cache: many tests compile the same programs again (the two
pytest-xdist workers, and every ``python -m fnn`` a CLI test starts), so the
run shares JAX's persistent cache in a fresh temporary directory. It is set
through the environment before ``import jax`` so that the workers and the
subprocesses inherit it, and it is removed when the run that made it ends: no
test ever reads a program compiled by an earlier run. A cache hit is the
same compiled program, so no result depends on it.
"""
import atexit
import os
import shutil
import tempfile

# Generated datasets (MNIST-1D) are cached by the CLI: in a temporary
# directory for the suite, never in the user's ~/.cache.
if "FNN_DATA_CACHE" not in os.environ:
  os.environ["FNN_DATA_CACHE"] = tempfile.mkdtemp(prefix="fnn-test-data-")
  atexit.register(shutil.rmtree, os.environ["FNN_DATA_CACHE"], True)

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="fnn-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  # jaxlib 0.9.1 logs "Assume version compatibility. PjRt-IFRT does not track
  # XLA executable versions." (a C++ warning) for each program it loads from
  # a persistent cache; the CLI tests read the first line of stderr. Only
  # the cache the suite adds makes it, so only the suite silences it.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# Faster compilation: the suite is mostly XLA:CPU compile time for small
# programs, and without the fusion emitters and LLVM's optimization passes it
# compiles ~1.8x faster (tests/test_gradients.py + test_stats.py: 88 s -> 51 s
# on 2 cores). Neither option relaxes IEEE arithmetic (no fast-math); every
# comparison in the suite is against a reference computed under the same
# options, with the tolerances each test justifies. Set through the
# environment so that workers and subprocesses inherit it, and only after a
# probe: an XLA that does not know a flag aborts the process.
_FAST = " --xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
if "FNN_TEST_XLA_PROBED" not in os.environ:
  os.environ["FNN_TEST_XLA_PROBED"] = "1"
  import subprocess
  import sys
  _env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + _FAST,
              JAX_PLATFORMS="cpu")
  _probe = subprocess.run(
      [sys.executable, "-c", "import jax.numpy as j; j.zeros(1).block_until_ready()"],
      env=_env, capture_output=True, timeout=120)
  if _probe.returncode == 0:
    # Kept for the few tests of bit-for-bit agreement between two different
    # programs, which hold under XLA's default options (LLVM's optimizations
    # change where products fuse into FMAs): they run under these.
    os.environ["FNN_TEST_DEFAULT_XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = _env["XLA_FLAGS"]

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

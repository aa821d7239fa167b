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

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="fnn-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

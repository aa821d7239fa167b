r"""Compiler options for programs that run once per model (drawing params,
splitting the run's key), where XLA:CPU's optimization time is the cost.

Drawing parameters is mostly threefry hashing, which XLA:CPU's LLVM passes
take seconds to optimize for microseconds of run time (MNIST-1D's CNN: its
params compiled in 2.0 s, 0.6 s without them). On other backends the
default options are kept. The draws are integer bit operations either way;
a normal scheme's erfinv may differ in the last bit from a program compiled
with the defaults (where LLVM fuses products into FMAs).
"""
from __future__ import annotations

import functools

import jax

ONCE_OPTIONS = {"xla_backend_optimization_level": 0,
                "xla_cpu_use_fusion_emitters": False}


def jit_once(fn=None, **jit_kwargs):
  r"""``jax.jit(fn, **jit_kwargs)``, compiled with :data:`ONCE_OPTIONS` when
  the default backend is the CPU and it is called outside any trace (JAX
  allows compiler options only on a top-level ``jit``)."""
  if fn is None:
    return functools.partial(jit_once, **jit_kwargs)
  plain = jax.jit(fn, **jit_kwargs)
  fast = jax.jit(fn, compiler_options=ONCE_OPTIONS, **jit_kwargs)

  @functools.wraps(fn)
  def call(*args, **kwargs):
    # Under a trace (the caller's own jit or vmap) it is part of the
    # caller's program, compiled with the caller's options.
    traced = any(isinstance(v, jax.core.Tracer)
                 for v in jax.tree.leaves((args, kwargs)))
    once = jax.default_backend() == "cpu" and not traced
    return (fast if once else plain)(*args, **kwargs)
  return call

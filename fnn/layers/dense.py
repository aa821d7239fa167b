r"""``Dense``: ``z = a_prev @ w + b`` for one example, and its backward.

Row vectors, ``w: [n_in, n_out]`` (seed 003's ``W^T``). Backward, given
``delta = dL/dz`` (BP3, BP4 and seed 000's ``dL/dA_prev = dL/dZ W``)::

  dL/dw = outer(a_prev, delta)    dL/db = delta    dL/da_prev = delta @ w.T

The factors are ``(a_prev, delta)``, contracted by :class:`kinds.Outer`.

Second order (Pearlmutter's ``R{.}`` along the tangent ``v = (v_w, v_b)``),
by the product rule on each bilinear term::

  R{z} = R{a_prev} @ w + a_prev @ v_w + v_b
  R{dL/da_prev} = R{delta} @ w.T + delta @ v_w.T
  R{factors} = (R{a_prev}, R{delta})
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.layers import kinds
from fnn.layers.base import Layer

Array = jax.Array


class Dense(NamedTuple):
  r"""Parameters of one dense layer: ``z = a_prev @ w + b``.

  Attributes:
    w: ``[n_in, n_out]`` weights (seed 003's ``W^T``).
    b: ``[n_out]`` biases.
  """
  w: Array
  b: Array


def _init_glorot(key, n_in, n_out, dtype):
  # Glorot & Bengio (2010) uniform: U(-l, l), l = sqrt(6 / (n_in + n_out)).
  limit = math.sqrt(6 / (n_in + n_out))
  w = jax.random.uniform(key, (n_in, n_out), dtype, -limit, limit)
  return w, jnp.zeros((n_out,), dtype)


def _init_he(key, n_in, n_out, dtype):
  # He et al. (2015) normal: std sqrt(2 / n_in), for ReLU-like layers.
  w = math.sqrt(2 / n_in) * jax.random.normal(key, (n_in, n_out), dtype)
  return w, jnp.zeros((n_out,), dtype)


def _init_lecun(key, n_in, n_out, dtype):
  # LeCun normal: std 1 / sqrt(n_in), zero biases.
  w = jax.random.normal(key, (n_in, n_out), dtype) / math.sqrt(n_in)
  return w, jnp.zeros((n_out,), dtype)


def _init_nielsen(key, n_in, n_out, dtype):
  # network2.py's default_weight_initializer: w ~ N(0, 1/n_in), b ~ N(0, 1).
  kw, kb = jax.random.split(key)
  w = jax.random.normal(kw, (n_in, n_out), dtype) / math.sqrt(n_in)
  return w, jax.random.normal(kb, (n_out,), dtype)


def _init_normal(key, n_in, n_out, dtype):
  # network.py (and network2's large_weight_initializer): all N(0, 1).
  kw, kb = jax.random.split(key)
  return (jax.random.normal(kw, (n_in, n_out), dtype),
          jax.random.normal(kb, (n_out,), dtype))


def _init_pytorch(key, n_in, n_out, dtype):
  # torch.nn.Linear's (and Conv1d's) default: U(-1/sqrt(fan_in), ...) for both.
  kw, kb = jax.random.split(key)
  limit = 1 / math.sqrt(n_in)
  return (jax.random.uniform(kw, (n_in, n_out), dtype, -limit, limit),
          jax.random.uniform(kb, (n_out,), dtype, -limit, limit))


INIT_SCHEMES = {
    "glorot": _init_glorot,
    "he": _init_he,
    "lecun": _init_lecun,
    "nielsen": _init_nielsen,
    "normal": _init_normal,
    "pytorch": _init_pytorch,
}


def check_scheme(init: str) -> None:
  if init not in INIT_SCHEMES:
    raise ValueError(
        f"unknown init scheme {init!r}; choose from {sorted(INIT_SCHEMES)}")


def is_int(v) -> bool:
  r"""A Python or NumPy integer, not a bool (``np.int64(3)`` is one)."""
  return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def positive_int(v, what: str) -> int:
  if not is_int(v) or v < 1:
    raise ValueError(f"{what} must be a positive int, got {v!r}")
  return int(v)


@dataclasses.dataclass(frozen=True, init=False)
class DenseLayer(Layer):
  r"""A dense layer ``z = a_prev @ w + b`` with ``n_out`` units.

  Exported as ``fnn.layers.Dense``; its params entry is ``fnn.Dense(w, b)``
  with ``w: [n_in, n_out]``. The input must be one axis (``Flatten`` first).

  Args:
    n_out: output units.
    init: a scheme of ``fnn.INIT_SCHEMES`` (default ``"he"``).
  """
  n_out: int
  init_scheme: str

  def __init__(self, n_out: int, init: str = "he"):
    # ``init=`` names the scheme (the method ``init`` draws parameters).
    object.__setattr__(self, "n_out", positive_int(n_out, "Dense n_out"))
    check_scheme(init)
    object.__setattr__(self, "init_scheme", init)

  @property
  def kind(self):
    return _OUTER

  def out_shape(self, in_shape):
    if len(in_shape) != 1:
      raise ValueError(f"Dense takes one axis [n_in], got {tuple(in_shape)}; "
                       f"put a Flatten() before it")
    return (self.n_out,)

  def param_shapes(self, in_shape):
    return Dense((in_shape[0], self.n_out), (self.n_out,))

  def init(self, key, in_shape, dtype):
    return Dense(*INIT_SCHEMES[self.init_scheme](key, in_shape[0], self.n_out,
                                                  dtype))

  def forward(self, params, x):
    return x @ params.w + params.b, x  # z: (n_out,); cache a_prev

  def backward(self, params, cache, g):
    # g = delta = dL/dz. Written delta @ w.T (not w @ delta) so that under
    # vmap the batch axis stays leading (no transpose of the (B, n_in) result).
    return g @ params.w.T, kinds.Factors(cache, g)

  def jvp(self, params, cache, v, r_x):
    # cache = a_prev; R{z} = R{a_prev} w + a_prev v_w + v_b, keep R{a_prev}.
    # r_x None: the network's input, whose R is a structural zero.
    if r_x is None:
      return cache @ v.w + v.b, None
    return r_x @ params.w + cache @ v.w + v.b, r_x

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    # g = delta: R{delta w^T} = R{delta} w^T + delta v_w^T.
    return r_g @ params.w.T + g @ v.w.T, kinds.Factors(r_cache, r_g)

  def apply(self, params, x):
    return x @ params.w + params.b[None, :]

  def __repr__(self):
    return f"Dense({self.n_out})"


_OUTER = kinds.Outer(Dense)

r"""``LayerNorm`` over the last axis, with its hand-derived backward.

For one feature vector ``x: [n]`` (every leading position separately)::

  mu = mean(x),  var = mean((x - mu)^2)        (biased: PyTorch's convention)
  r = 1 / sqrt(var + eps),  xhat = (x - mu) r,  y = xhat * scale + shift

Backward, given ``g = dL/dy``: ``dL/dscale = xhat * g``, ``dL/dshift = g``
(the factors, summed over positions by :class:`kinds.ScaleShift`), and with
``h = g * scale = dL/dxhat``::

  dL/dx = r (h - mean(h) - xhat mean(h * xhat))

(``dxhat_i/dx_j = r (delta_ij - 1/n - xhat_i xhat_j / n)``: the mean and the
variance both depend on every ``x_j``.)

Second order (Pearlmutter's ``R{.}`` along ``v = (v_scale, v_shift)``). The
R-forward: ``R{var} = 2 mean(xhat R{x}) / r`` (``mean(x - mu) = 0``), so::

  R{r} = -r^3 R{var} / 2 = -r^2 mean(xhat R{x})
  R{xhat} = r (R{x} - mean(R{x}) - xhat mean(xhat R{x}))   (J is symmetric)
  R{y} = R{xhat} * scale + xhat * v_scale + v_shift

The R of the backward, with ``q = h - mean(h) - xhat mean(h xhat)`` (so
``dL/dx = r q``) and ``R{h} = R{g} * scale + g * v_scale``::

  R{q} = R{h} - mean(R{h}) - R{xhat} mean(h xhat)
         - xhat mean(R{h} xhat + h R{xhat})
  R{dL/dx} = R{r} q + r R{q},   R{factors} = (R{xhat}, R{g})

References:
  Ba, Kiros, Hinton (2016), "Layer Normalization".
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.layers import kinds
from fnn.layers.base import Layer

Array = jax.Array


class LayerNormParams(NamedTuple):
  r"""``scale: [n]`` (initialized to ones), ``shift: [n]`` (zeros)."""
  scale: Array
  shift: Array


def _lead(v, ndim):
  r"""``v: [n]`` as ``[1, ..., 1, n]`` of rank ``ndim``: an explicit broadcast
  over leading axes (valid under ``jax_numpy_rank_promotion="raise"``)."""
  return v.reshape((1,) * (ndim - 1) + v.shape)


def _normalize(x, eps):
  mu = jnp.mean(x, axis=-1, keepdims=True)
  xc = x - mu
  var = jnp.mean(xc * xc, axis=-1, keepdims=True)
  r = jax.lax.rsqrt(var + eps)
  return xc * r, r


@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
  r"""Layer normalization over the last axis (biased variance).

  Args:
    eps: added to the variance (default ``1e-5``, PyTorch's).
  """
  eps: float = 1e-5

  def __post_init__(self):
    if isinstance(self.eps, (bool, np.bool_)) or not isinstance(
        self.eps, numbers.Real) or not 0 < self.eps < float("inf"):
      raise ValueError(f"LayerNorm eps must be a finite float > 0, got "
                       f"{self.eps!r}")
    object.__setattr__(self, "eps", float(self.eps))

  @property
  def kind(self):
    return _SCALE_SHIFT

  def out_shape(self, in_shape):
    if not in_shape or in_shape[-1] < 2:
      raise ValueError(f"LayerNorm needs at least 2 features on the last "
                       f"axis, got {tuple(in_shape)}")
    return tuple(in_shape)

  def param_shapes(self, in_shape):
    return LayerNormParams((in_shape[-1],), (in_shape[-1],))

  def init(self, key, in_shape, dtype):
    del key
    n = in_shape[-1]
    return LayerNormParams(jnp.ones((n,), dtype), jnp.zeros((n,), dtype))

  def forward(self, params, x):
    xhat, r = _normalize(x, self.eps)
    scale, shift = (_lead(v, x.ndim) for v in params)
    return xhat * scale + shift, (xhat, r)

  def backward(self, params, cache, g):
    xhat, r = cache
    h = g * _lead(params.scale, g.ndim)  # dL/dxhat
    g_in = r * (h - jnp.mean(h, -1, keepdims=True)
                - xhat * jnp.mean(h * xhat, -1, keepdims=True))
    return g_in, kinds.ScaleShiftFactors(xhat, g)

  def jvp(self, params, cache, v, r_x):
    xhat, r = cache
    m = jnp.mean(xhat * r_x, -1, keepdims=True)  # mean(xhat R{x})
    r_xhat = r * (r_x - jnp.mean(r_x, -1, keepdims=True) - xhat * m)
    r_r = -r * r * m
    scale, v_scale, v_shift = (_lead(u, r_x.ndim) for u in (params.scale,
                                                            *v))
    return r_xhat * scale + xhat * v_scale + v_shift, (r_xhat, r_r)

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    xhat, r = cache
    r_xhat, r_r = r_cache
    scale, v_scale = (_lead(u, g.ndim) for u in (params.scale, v.scale))
    h, r_h = g * scale, r_g * scale + g * v_scale  # dL/dxhat and its R
    mean = lambda u: jnp.mean(u, -1, keepdims=True)
    m = mean(h * xhat)
    q = h - mean(h) - xhat * m
    r_q = (r_h - mean(r_h) - r_xhat * m
           - xhat * mean(r_h * xhat + h * r_xhat))
    return r_r * q + r * r_q, kinds.ScaleShiftFactors(r_xhat, r_g)

  def apply(self, params, x):
    # The reference, written independently of forward: jnp.var.
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    scale, shift = (_lead(v, x.ndim) for v in params)
    return (x - mu) / jnp.sqrt(var + self.eps) * scale + shift


_SCALE_SHIFT = kinds.ScaleShift(LayerNormParams)

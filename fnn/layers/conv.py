r"""``Conv1d``: a 1-D cross-correlation for one example, and its backward.

One example's input is ``x: [L, c_in]`` (a plain ``[L]`` is one channel).
With zero padding ``p`` on both ends, stride ``s`` and kernel ``k``, output
position ``t`` (``T = (L + 2p - k) // s + 1`` of them) sees the patch
``P_t = x_pad[t s : t s + k]: [k, c_in]``::

  z_t = sum_{j, i} P_t[j, i] w[j, i, :] + b = vec(P_t) @ w.reshape(k c_in, c_out) + b

PyTorch's ``Conv1d`` weight ``weight[o, i, j]`` is fnn's ``w[j, i, o]``.

Backward, given ``delta_t = dL/dz_t: [T, c_out]`` — the dense layer's rule at
every position, summed::

  dL/dw = sum_t outer(vec(P_t), delta_t)     dL/db = sum_t delta_t
  dL/dP_t = delta_t @ w.T    then  dL/dx_pad[t s + j] += dL/dP_t[j]

The factors are ``(patches: [T, k c_in], delta: [T, c_out])``, contracted by
:class:`kinds.Conv`. Patches are gathered with ``k`` strided slices, and the
input gradient is scattered back with ``k`` interior-padded adds (no gather
or scatter ops).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn.layers import kinds
from fnn.layers.base import Layer
from fnn.layers.dense import INIT_SCHEMES, check_scheme, is_int, positive_int

Array = jax.Array


class ConvParams(NamedTuple):
  r"""``w: [kernel_size, in_channels, out_channels]``, ``b: [out_channels]``."""
  w: Array
  b: Array


@dataclasses.dataclass(frozen=True, init=False)
class Conv1d(Layer):
  r"""A 1-D convolution (cross-correlation), PyTorch's ``Conv1d`` semantics.

  Args:
    out_channels: output channels.
    kernel_size: ``k >= 1``.
    stride: ``>= 1``.
    padding: zeros added at both ends, ``>= 0``.
    init: a scheme of ``fnn.INIT_SCHEMES`` with fan-in ``k * in_channels``
      (default ``"he"``; ``"pytorch"`` is torch's default).
  """
  out_channels: int
  kernel_size: int
  stride: int
  padding: int
  init_scheme: str

  def __init__(self, out_channels: int, kernel_size: int, stride: int = 1,
               padding: int = 0, init: str = "he"):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("out_channels", positive_int(out_channels, "Conv1d out_channels"))
    set_("kernel_size", positive_int(kernel_size, "Conv1d kernel_size"))
    set_("stride", positive_int(stride, "Conv1d stride"))
    if not is_int(padding) or padding < 0:
      raise ValueError(f"Conv1d padding must be an int >= 0, got {padding!r}")
    set_("padding", int(padding))
    check_scheme(init)
    set_("init_scheme", init)

  def __repr__(self):
    return (f"Conv1d({self.out_channels}, {self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding})")

  @property
  def kind(self):
    return kinds.Conv(ConvParams, self.kernel_size)

  def _lc(self, in_shape):
    if len(in_shape) == 1:
      return in_shape[0], 1
    if len(in_shape) == 2:
      return in_shape
    raise ValueError(f"Conv1d takes [length] or [length, channels], got "
                     f"{tuple(in_shape)}")

  def out_shape(self, in_shape):
    length, _ = self._lc(in_shape)
    padded = length + 2 * self.padding
    if self.kernel_size > padded:
      raise ValueError(f"kernel_size {self.kernel_size} is larger than the "
                       f"padded length {padded} (length {length} + 2 x "
                       f"padding {self.padding})")
    return ((padded - self.kernel_size) // self.stride + 1, self.out_channels)

  def param_shapes(self, in_shape):
    _, c_in = self._lc(in_shape)
    return ConvParams((self.kernel_size, c_in, self.out_channels),
                      (self.out_channels,))

  def init(self, key, in_shape, dtype):
    _, c_in = self._lc(in_shape)
    k, c_out = self.kernel_size, self.out_channels
    w, b = INIT_SCHEMES[self.init_scheme](key, k * c_in, c_out, dtype)
    return ConvParams(w.reshape(k, c_in, c_out), b)

  def forward(self, params, x):
    x2 = x[:, None] if x.ndim == 1 else x  # (L, c_in)
    k, s, p = self.kernel_size, self.stride, self.padding
    t = (x2.shape[0] + 2 * p - k) // s + 1
    xp = jnp.pad(x2, ((p, p), (0, 0)))
    # patches[t, j, i] = x_pad[t s + j, i]: one strided slice per offset j.
    patches = jnp.stack([xp[j:j + (t - 1) * s + 1:s] for j in range(k)],
                        axis=1).reshape(t, -1)  # (T, k c_in)
    w = params.w.reshape(-1, params.w.shape[-1])  # (k c_in, c_out)
    return patches @ w + params.b[None, :], (patches, x)  # (T, c_out)

  def backward(self, params, cache, g):
    patches, x = cache
    k, s, p = self.kernel_size, self.stride, self.padding
    x2 = x[:, None] if x.ndim == 1 else x
    length, c_in = x2.shape
    t = g.shape[0]
    w = params.w.reshape(-1, params.w.shape[-1])
    gp = (g @ w.T).reshape(t, k, c_in)  # dL/dP_t
    # Offset j of every patch lands at x_pad[j], x_pad[j + s], ...: pad the
    # (T, c_in) slice with s - 1 zeros between rows and shift it by j.
    padded = length + 2 * p
    zero = jnp.zeros((), g.dtype)
    gx = sum(jax.lax.pad(gp[:, j], zero,
                         ((j, padded - j - (t - 1) * s - 1, s - 1), (0, 0, 0)))
             for j in range(k))
    gx = gx[p:p + length]
    return gx.reshape(x.shape), kinds.ConvFactors(patches, g)

  def apply(self, params, x):
    x3 = x[..., None] if x.ndim == 2 else x  # (B, L, c_in)
    z = jax.lax.conv_general_dilated(
        x3, params.w, window_strides=(self.stride,),
        padding=[(self.padding, self.padding)],
        dimension_numbers=("NWC", "WIO", "NWC"))
    return z + params.b[None, None, :]  # (B, T, c_out)

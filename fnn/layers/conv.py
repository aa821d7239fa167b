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

Second order (Pearlmutter's ``R{.}`` along ``v = (v_w, v_b)``): the patches
are linear in ``x``, ``R{P_t} = patches(R{x})_t``, and each position is the
dense layer's rule::

  R{z_t} = R{P_t} @ w + P_t @ v_w + v_b
  R{dL/dP_t} = R{delta_t} @ w.T + delta_t @ v_w.T  (scattered back as above)
  R{factors} = (R{patches}, R{delta})
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

  def _patches(self, x):
    r"""``x: [L]`` or ``[L, c_in]`` to its patches ``[T, k c_in]``."""
    x2 = x[:, None] if x.ndim == 1 else x  # (L, c_in)
    k, s, p = self.kernel_size, self.stride, self.padding
    t = (x2.shape[0] + 2 * p - k) // s + 1
    xp = jnp.pad(x2, ((p, p), (0, 0)))
    # patches[t, j, i] = x_pad[t s + j, i]: one strided slice per offset j.
    return jnp.stack([xp[j:j + (t - 1) * s + 1:s] for j in range(k)],
                     axis=1).reshape(t, -1)  # (T, k c_in)

  def _unpatch(self, gp, x):
    r"""The transpose of :meth:`_patches`: ``dL/dP: [T, k c_in]`` to
    ``dL/dx`` of ``x``'s shape."""
    k, s, p = self.kernel_size, self.stride, self.padding
    x2 = x[:, None] if x.ndim == 1 else x
    length, c_in = x2.shape
    t = gp.shape[0]
    gp = gp.reshape(t, k, c_in)
    # Offset j of every patch lands at x_pad[j], x_pad[j + s], ...: pad the
    # (T, c_in) slice with s - 1 zeros between rows and shift it by j.
    padded = length + 2 * p
    zero = jnp.zeros((), gp.dtype)
    gx = sum(jax.lax.pad(gp[:, j], zero,
                         ((j, padded - j - (t - 1) * s - 1, s - 1), (0, 0, 0)))
             for j in range(k))
    return gx[p:p + length].reshape(x.shape)

  def forward(self, params, x):
    patches = self._patches(x)
    w = params.w.reshape(-1, params.w.shape[-1])  # (k c_in, c_out)
    return patches @ w + params.b[None, :], (patches, x)  # (T, c_out)

  def backward(self, params, cache, g):
    patches, x = cache
    w = params.w.reshape(-1, params.w.shape[-1])
    gp = g @ w.T  # dL/dP_t, (T, k c_in)
    return self._unpatch(gp, x), kinds.ConvFactors(patches, g)

  def jvp(self, params, cache, v, r_x):
    patches, _ = cache
    r_patches = self._patches(r_x)  # linear in x
    w, v_w = (u.reshape(-1, u.shape[-1]) for u in (params.w, v.w))
    return r_patches @ w + patches @ v_w + v.b[None, :], r_patches

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    _, x = cache
    w, v_w = (u.reshape(-1, u.shape[-1]) for u in (params.w, v.w))
    r_gp = r_g @ w.T + g @ v_w.T  # R{dL/dP_t}
    return self._unpatch(r_gp, x), kinds.ConvFactors(r_cache, r_g)

  def apply(self, params, x):
    x3 = x[..., None] if x.ndim == 2 else x  # (B, L, c_in)
    z = jax.lax.conv_general_dilated(
        x3, params.w, window_strides=(self.stride,),
        padding=[(self.padding, self.padding)],
        dimension_numbers=("NWC", "WIO", "NWC"))
    return z + params.b[None, None, :]  # (B, T, c_out)

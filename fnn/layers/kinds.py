r"""Factor kinds: the per-example contractions, written ONCE per kind.

A layer's hand-derived backward returns the *factors* of its parameter
gradient for one example; batched with ``jax.vmap`` every factor carries a
leading ``B`` axis. A factor kind knows how to contract its factors into the
quantities fnn computes (BackPACK's "extensions" axis), without knowing which
layer produced them:

=====================  =======================  ==========================
quantity               :class:`Outer` (Dense)   :class:`Conv` (Conv1d)
=====================  =======================  ==========================
``total``              ``a.T @ d``              ``sum_{b,t} p_bt^T d_bt``
``per_example``        ``outer(a_i, d_i)``      ``P_i^T D_i``
``norms``              ``|d_i| hypot(|a_i|,1)`` Gram or materialized
``second_moment``      ``(a^2).T @ d^2 / B``    materialized, squared
``clipped_sum``        ``a.T @ (c d)``          ``sum p^T (c d)``
``dot``                ``a_i^T t_w d_i + ...``  ``sum_t p_t^T t_w d_t``
``kfac``               ``a.T a / B, d.T d / B`` KFC (sum over positions)
=====================  =======================  ==========================

:class:`ScaleShift` (LayerNorm) has per-example gradients ``(xhat * g, g)``
(summed over any leading positions), contracted elementwise.

All norms are computed with scaling (:func:`fnn.gradients.l2_norm`), or
(Conv) unscaled with the scaled form as a fallback for the batch, so a
finite per-example gradient never has a non-finite norm.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def l2_norm(v: Array, axis=-1) -> Array:
  r"""``|v|_2`` along ``axis`` (one axis or a tuple) with scaling: see
  :func:`fnn.gradients.l2_norm`."""
  m = jnp.max(jnp.abs(v), axis=axis, keepdims=True)
  m = jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m))
  return jnp.squeeze(m, axis) * jnp.sqrt(jnp.sum((v / m) ** 2, axis=axis))


def _rows(v: Array) -> Array:
  r"""``[B, ...] -> [B, -1]``."""
  return v.reshape(v.shape[0], -1)


def _flat(v: Array) -> Array:
  r"""``[B, T, n] -> [B T, n]``."""
  return v.reshape(-1, v.shape[-1])


def flat_cols(f):
  r"""Factors with ``[B, K]`` axes as ``B K`` rows."""
  return jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), f)


def column_sq_norms_by(norms, f) -> Array:
  r"""``[B]``: ``sum_k |g_bk|^2`` of factors with ``[B, K]`` axes, from a
  per-row ``norms`` over the ``B K`` rows (the generic form, which reduces
  each example's cached factor once per column)."""
  b = jax.tree.leaves(f)[0].shape[0]
  return jnp.sum(norms(flat_cols(f)).reshape(b, -1) ** 2, axis=1)


def _unless_extreme(sq: Array, unscaled, scaled):
  r"""``unscaled()`` where every one of the unscaled squares ``sq`` is
  finite and not near underflow, else ``scaled()`` for the whole batch (one
  batch-level branch): a finite per-example gradient keeps a finite
  result."""
  fi = jnp.finfo(sq.dtype)
  ok = jnp.all(jnp.isfinite(sq) & (sq >= fi.tiny / fi.eps**2))
  return jax.lax.cond(ok, unscaled, scaled)


def _mean_sq(v: Array, b: int) -> Array:
  r"""``mean(v**2, 0)`` over the ``b`` rows of ``v``, as
  ``sum((v / sqrt(b))**2, 0)``: every term, and every partial sum, is at most
  the result, so it is finite wherever the result is representable (one
  row's ``v**2`` alone may overflow where the mean does not)."""
  return jnp.sum((v / math.sqrt(b)) ** 2, 0)


def _safe(t: Array) -> Array:
  r"""A per-example scale usable as a divisor: 1 where ``t`` is 0/inf/NaN."""
  return jnp.where((t > 0) & jnp.isfinite(t), t, jnp.ones_like(t))


class Factors(NamedTuple):
  r"""A dense layer's gradient factors for one example:
  ``dL/dw = outer(a_prev, delta)``, ``dL/db = delta``."""
  a_prev: Array
  delta: Array


class ConvFactors(NamedTuple):
  r"""A 1-D convolution's gradient factors for one example.

  ``patches: [T, k * c_in]`` (row ``t`` is the receptive field of output
  position ``t``, flattened as ``(k, c_in)``) and ``delta: [T, c_out]``;
  ``dL/dw = (patches.T @ delta).reshape(k, c_in, c_out)``,
  ``dL/db = sum_t delta_t``.
  """
  patches: Array
  delta: Array


class ScaleShiftFactors(NamedTuple):
  r"""An elementwise affine map ``y = xhat * scale + shift``, one example:
  ``dL/dscale = sum xhat * g``, ``dL/dshift = sum g`` over every axis but
  the last."""
  xhat: Array
  g: Array


class Outer:
  r"""The kind of :class:`Factors` (dense layers); ``make(w, b)`` builds the
  params-shaped result (``fnn.Dense``)."""

  def __init__(self, make):
    self.make = make

  def total(self, f: Factors):
    return self.make(f.a_prev.T @ f.delta,  # (n_in, n_out), summed over B
                     jnp.sum(f.delta, axis=0))

  def per_example(self, f: Factors):
    return self.make(jnp.einsum("bi,bj->bij", f.a_prev, f.delta), f.delta)

  def norms(self, f: Factors) -> Array:
    # |[outer(a, d); d]|_F = |d| sqrt(|a|^2 + 1), every factor scaled.
    return l2_norm(f.delta) * jnp.hypot(l2_norm(f.a_prev), 1.0)

  def second_moment(self, f: Factors, b: int):
    # g[k, j]^2 / B = (a_k t / sqrt(B))^2 (d_j / t)^2, t = max |d|: no
    # inf * 0, and the 1/B applied before the squares (see _mean_sq).
    t = jnp.max(jnp.abs(f.delta), -1, keepdims=True)  # (B, 1)
    d2 = (f.delta / _safe(t)) ** 2  # (B, n_out)
    return self.make(((f.a_prev * (t / math.sqrt(b))) ** 2).T @ d2,
                     _mean_sq(f.delta, b))

  def clipped_sum(self, f: Factors, c: Array, keep: Array):
    d = jnp.where(keep, f.delta * c[:, None], 0)  # (B, n_out)
    a = jnp.where(keep, f.a_prev, 0)  # an inf here would give NaN
    return self.make(a.T @ d, jnp.sum(d, 0))

  def dot(self, f: Factors, t) -> Array:
    return jnp.einsum("bi,ij,bj->b", f.a_prev, t.w, f.delta) + f.delta @ t.b

  def kfac(self, f: Factors, b: int):
    return (f.a_prev.T @ f.a_prev / b, f.delta.T @ f.delta / b,
            jnp.mean(f.a_prev, 0))

  def kfac_columns(self, f: Factors, b: int):
    # f has [B, K] axes: E[a a^T] from the B inputs (column 0; the same in
    # every column), E[sum_k d_k d_k^T] over the B K rows.
    a, d = f.a_prev[:, 0], _flat(f.delta)
    return a.T @ a / b, d.T @ d / b, jnp.mean(a, 0)

  def diag_ggn(self, f: Factors, b: int):
    # f has [B, K] axes; a_prev is the same in every column K.
    a, d2 = f.a_prev[:, 0], jnp.sum(f.delta ** 2, axis=1)  # (B, n_in/out)
    return self.make((a * a).T @ d2 / b, jnp.sum(d2, 0) / b)

  def gram(self, f: Factors, f2: Factors) -> Array:
    return (f.a_prev @ f2.a_prev.T + 1) * (f.delta @ f2.delta.T)

  def total_jvp(self, f: Factors, r: Factors):
    # R{a.T @ d} = a.T @ R{d} + R{a}.T @ d (product rule); R{a} = None is a
    # structural zero (the network's input).
    w = f.a_prev.T @ r.delta
    if r.a_prev is not None:
      w = w + r.a_prev.T @ f.delta
    return self.make(w, jnp.sum(r.delta, axis=0))

  def column_sq_norms(self, f: Factors) -> Array:
    # f has [B, K] axes: sum_k |g_bk|^2 = sum_k (|d_bk| hypot(|a_b|, 1))^2,
    # |a_b| from column 0 (the same in every column), each norm scaled.
    a = l2_norm(f.a_prev[:, 0])  # (B,)
    return jnp.sum((l2_norm(f.delta) * jnp.hypot(a, 1.0)[:, None]) ** 2, 1)

  def astype(self, f: Factors, dtype) -> Factors:
    return Factors(f.a_prev.astype(dtype), f.delta.astype(dtype))


class Conv:
  r"""The kind of :class:`ConvFactors`, for ``w: [k, c_in, c_out]``.

  The per-example norm: ``|G_i|_F^2 = sum_{t,t'} (p_t . p_t')(d_t . d_t')``
  (the Gram form, ``O(T^2 (k c_in + c_out))``) when ``T^2 < k c_in c_out``,
  else ``|P_i^T D_i|_F`` from the materialized ``[B, k c_in, c_out]``
  (``O(T k c_in c_out)``): whichever forms the smaller array. Both run
  unscaled first; when some square overflowed or came near underflow, the
  batch is done again with ``P_i`` and ``D_i`` scaled by their largest entry.
  """

  def __init__(self, make, kernel_size: int):
    self.make = make
    self.k = kernel_size

  def _w(self, flat: Array) -> Array:
    return flat.reshape(flat.shape[:-2] + (self.k, -1, flat.shape[-1]))

  def total(self, f: ConvFactors):
    # ONE 2-D matmul over the B T rows: XLA:CPU's dot with two contracting
    # dims (einsum "btp,bto->po") was 2.5x slower on MNIST-1D's CNN, B=1024.
    return self.make(self._w(_flat(f.patches).T @ _flat(f.delta)),
                     jnp.sum(f.delta, axis=(0, 1)))

  def per_example(self, f: ConvFactors):
    return self.make(self._w(jnp.einsum("btp,bto->bpo", f.patches, f.delta)),
                     jnp.sum(f.delta, axis=1))

  @staticmethod
  def uses_gram(t: int, p: int, c_out: int) -> bool:
    r"""Whether the norm takes the Gram form (``T^2 < k c_in c_out``)."""
    return t * t < p * c_out

  def norms(self, f: ConvFactors) -> Array:
    # Unscaled first (no max passes over the factors); the scaled form only
    # when some square overflowed or came near underflow (one batch-level
    # branch), so a finite per-example gradient still has a finite norm.
    sq = self._sq_norms(f.patches, f.delta)
    return _unless_extreme(sq, lambda: jnp.sqrt(sq),
                           lambda: self._scaled_norms(f))

  def _sq_norms(self, p: Array, d: Array) -> Array:
    r"""``|G_i|^2`` from factors, without scaling (Gram or materialized)."""
    _, t, n_p = p.shape
    if self.uses_gram(t, n_p, d.shape[-1]):
      w_sq = jnp.einsum("bts,bts->b", jnp.einsum("btp,bsp->bts", p, p),
                        jnp.einsum("bto,bso->bts", d, d))
      w_sq = jnp.maximum(w_sq, 0)  # a PSD form: rounding only
    else:  # a fused broadcast-multiply-sum over t
      g = jnp.sum(p[:, :, :, None] * d[:, :, None, :], axis=1)
      w_sq = jnp.sum(g * g, axis=(1, 2))
    b = jnp.sum(d, axis=1)
    return w_sq + jnp.sum(b * b, axis=-1)

  def _scaled_norms(self, f: ConvFactors) -> Array:
    mp = _safe(jnp.max(jnp.abs(f.patches), axis=(1, 2)))  # (B,)
    md = _safe(jnp.max(jnp.abs(f.delta), axis=(1, 2)))
    ps = f.patches / mp[:, None, None]
    ds = f.delta / md[:, None, None]
    _, t, p = ps.shape
    if self.uses_gram(t, p, ds.shape[-1]):
      gram = jnp.einsum("btp,bsp->bts", ps, ps) * jnp.einsum(
          "bto,bso->bts", ds, ds)  # (B, T, T)
      w_norm = jnp.sqrt(jnp.maximum(jnp.sum(gram, axis=(1, 2)), 0))
    else:
      w_norm = l2_norm(_rows(jnp.einsum("btp,bto->bpo", ps, ds)))
    b_norm = l2_norm(jnp.sum(ds, axis=1))
    return md * jnp.hypot(mp * w_norm, b_norm)

  def second_moment(self, f: ConvFactors, b: int):
    return jax.tree.map(lambda v: _mean_sq(v, b), self.per_example(f))

  def clipped_sum(self, f: ConvFactors, c: Array, keep: Array):
    k3 = keep[:, :, None]
    d = jnp.where(k3, f.delta * c[:, None, None], 0)
    # Zeroing a dropped example's patches (an inf there gives inf * 0 = NaN)
    # copies the largest factor: done only when some example is dropped.
    p = jax.lax.cond(jnp.all(keep), lambda: f.patches,
                     lambda: jnp.where(k3, f.patches, 0))
    return self.total(ConvFactors(p, d))

  def dot(self, f: ConvFactors, t) -> Array:
    tw = t.w.reshape(-1, t.w.shape[-1])  # (k c_in, c_out)
    return jnp.einsum("btp,po,bto->b", f.patches, tw, f.delta) + jnp.einsum(
        "bto,o->b", f.delta, t.b)

  def kfac(self, f: ConvFactors, b: int):
    # KFC (Grosse & Martens 2016): positions as extra samples, per example.
    p2, d2 = _flat(f.patches), _flat(f.delta)  # 2-D matmuls (see total)
    return (p2.T @ p2 / b, d2.T @ d2 / b, jnp.mean(jnp.sum(f.patches, 1), 0))

  def kfac_columns(self, f: ConvFactors, b: int):
    p = f.patches[:, 0]  # (B, T, k c_in), the same in every column
    # 2-D matmuls over the flattened rows (see total).
    p2, d2 = _flat(p), _flat(f.delta)  # (B T, k c_in), (B K T, c_out)
    return p2.T @ p2 / b, d2.T @ d2 / b, jnp.mean(jnp.sum(p, 1), 0)

  def diag_ggn(self, f: ConvFactors, b: int):
    # sum_{b,k} (P_b^T D_bk)**2 (f has [B, K] axes). Where T^2 < K k c_in,
    # by the positions' Gram: sum_b sum_{t,s} p_bt p_bs (sum_k d_bkt d_bks)
    # (a [B, T, T, c_out] intermediate instead of [B, K, k c_in, c_out]).
    p = f.patches[:, 0]  # (B, T, k c_in): the same in every column
    _, k, t, _ = f.delta.shape
    if t * t < k * p.shape[-1]:
      m = jnp.einsum("bkto,bkso->btso", f.delta, f.delta)
      w = jnp.einsum("btp,bsp,btso->po", p, p, m)
    else:
      w = jnp.sum(jnp.einsum("btp,bkto->bkpo", p, f.delta) ** 2, axis=(0, 1))
    return self.make(self._w(w / b),
                     jnp.sum(jnp.sum(f.delta, axis=2) ** 2, axis=(0, 1)) / b)

  def gram(self, f: ConvFactors, f2: ConvFactors) -> Array:
    t1, p = f.patches.shape[1:]
    t2, c_out = f2.patches.shape[1], f.delta.shape[-1]
    bias = jnp.sum(f.delta, 1) @ jnp.sum(f2.delta, 1).T
    if t1 * t2 < p * c_out:  # position pairs: [B, B2, T, T2]
      return jnp.einsum("itp,jsp,ito,jso->ij", f.patches, f2.patches,
                        f.delta, f2.delta) + bias
    g1 = _rows(jnp.einsum("btp,bto->bpo", f.patches, f.delta))
    g2 = _rows(jnp.einsum("btp,bto->bpo", f2.patches, f2.delta))
    return g1 @ g2.T + bias

  def column_sq_norms(self, f: ConvFactors) -> Array:
    # f has [B, K] axes. Gram form: sum_{t,s} (p_t . p_s) sum_k (d_kt . d_ks)
    # with the patches' Gram once per example, not once per column.
    p = f.patches[:, 0]  # (B, T, k c_in)
    _, t, n_p = p.shape
    if not self.uses_gram(t, n_p, f.delta.shape[-1]):
      return column_sq_norms_by(self.norms, f)
    pg = jnp.einsum("btp,bsp->bts", p, p)
    dg = jnp.einsum("bkto,bkso->bts", f.delta, f.delta)
    bias = jnp.sum(jnp.sum(f.delta, axis=2) ** 2, axis=(1, 2))  # (B,)
    w_sq = jnp.maximum(jnp.einsum("bts,bts->b", pg, dg), 0)
    # As norms: the scaled form where a square overflowed or underflowed.
    sq = w_sq + bias
    return _unless_extreme(sq, lambda: sq,
                           lambda: column_sq_norms_by(self._scaled_norms, f))

  def astype(self, f: ConvFactors, dtype) -> ConvFactors:
    return ConvFactors(f.patches.astype(dtype), f.delta.astype(dtype))


class ScaleShift:
  r"""The kind of :class:`ScaleShiftFactors` (LayerNorm's ``scale`` and
  ``shift``): per example ``(sum xhat * g, sum g)`` over leading positions."""

  def __init__(self, make):
    self.make = make

  @staticmethod
  def _pos(v: Array) -> tuple[int, ...]:
    return tuple(range(1, v.ndim - 1))  # positions between B and features

  def per_example(self, f: ScaleShiftFactors):
    ax = self._pos(f.g)
    return self.make(jnp.sum(f.xhat * f.g, axis=ax), jnp.sum(f.g, axis=ax))

  def total(self, f: ScaleShiftFactors):
    return jax.tree.map(lambda v: jnp.sum(v, 0), self.per_example(f))

  def norms(self, f: ScaleShiftFactors) -> Array:
    g = self.per_example(f)
    return jnp.hypot(l2_norm(g[0]), l2_norm(g[1]))

  def second_moment(self, f: ScaleShiftFactors, b: int):
    return jax.tree.map(lambda v: _mean_sq(v, b), self.per_example(f))

  def clipped_sum(self, f: ScaleShiftFactors, c: Array, keep: Array):
    g = self.per_example(f)
    return jax.tree.map(
        lambda v: jnp.sum(jnp.where(keep, v * c[:, None], 0), 0), g)

  def dot(self, f: ScaleShiftFactors, t) -> Array:
    g = self.per_example(f)
    return g[0] @ t[0] + g[1] @ t[1]

  def kfac(self, f, b):
    return None  # no Kronecker structure: not covered

  def kfac_columns(self, f, b):
    return None  # no Kronecker structure: not covered

  def diag_ggn(self, f: ScaleShiftFactors, b: int):
    return jax.tree.map(lambda v: jnp.sum(v ** 2, 0) / b,
                        self.per_example(flat_cols(f)))

  def gram(self, f: ScaleShiftFactors, f2: ScaleShiftFactors) -> Array:
    g1, g2 = self.per_example(f), self.per_example(f2)
    return g1[0] @ g2[0].T + g1[1] @ g2[1].T

  def column_sq_norms(self, f: ScaleShiftFactors) -> Array:
    return column_sq_norms_by(self.norms, f)

  def astype(self, f: ScaleShiftFactors, dtype) -> ScaleShiftFactors:
    return ScaleShiftFactors(f.xhat.astype(dtype), f.g.astype(dtype))

r"""Batch combinators over the one-example backward of :mod:`fnn.backward`.

Each function maps :func:`fnn.backward.loss_and_factors` over the batch with
``jax.vmap`` and combines the per-layer factors ``a_prev: [B, n_in]`` and
``delta: [B, n_out]``. None of them knows about activations or losses, and
only :func:`per_example_grads` ever forms a ``[B, n_in, n_out]`` array:

==========================  =============================================
combinator                  per layer
==========================  =============================================
``per_example_grads``       ``dw[i] = outer(a_prev[i], delta[i])``
``grad``                    ``dw = a_prev.T @ delta / B`` (one matmul)
``per_example_grad_norms``  ``|dw[i]| = |a_prev[i]| |delta[i]|``
==========================  =============================================

Norms are computed with scaling (:func:`l2_norm`, :func:`layer_norms`), never
by squaring raw entries, so a finite per-example gradient has a finite norm
even where ``|a_prev|^2`` alone would overflow (float32 inputs of ``2e19``).

The mean is seed 003's mini-batch rule ``(1/m) sum_x dC_x/dw`` and seed 000's
``dW = (1/m) sum (A - y) A_prev^T``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fnn import _checks
from fnn.backward import backprop, loss_and_factors
from fnn.layers.base import kind_leaves as _kind_leaves, map_kinds
from fnn.layers.dense import _OUTER
from fnn.layers.kinds import l2_norm as _l2_norm
from fnn.model import MLP, Params

Array = jax.Array


def _batched_factors(model, params, x: Array, y: Array, masks=None,
                     mean: bool = False):
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  _checks.check_masks(model, masks, x.shape[0])
  scale = 1.0 / x.shape[0] if mean else None  # deltas of the batch mean
  fn = functools.partial(loss_and_factors, model, params, scale=scale)
  # losses (B,), factors with leading B axes
  return jax.vmap(lambda xi, yi, mi: fn(xi, yi, masks=mi))(x, y, masks)


def factors(model, params, x: Array, y: Array, masks=None):
  r"""The per-example factors: fnn's public primitive.

  One vmapped hand-derived backward pass. Every quantity fnn computes
  (:func:`grad`, :func:`per_example_grad_norms`, :func:`fnn.grad_stats`,
  :func:`fnn.dp_grad`, ...) is a contraction of these, written once per
  factor kind (:mod:`fnn.layers.kinds`); :func:`contract` applies one.

  Args:
    model: an :class:`fnn.MLP` or :class:`fnn.Sequential`.
    params: from ``model.init``.
    x: ``[B, *in_shape]``; y: targets or labels (see ``model.mean_loss``).
    masks: optional dropout masks (see :func:`fnn.dropout_masks`).

  Returns:
    ``(losses, factors)``: ``losses: [B]`` (each example's own loss) and the
    factors in the params' structure, each with a leading ``B`` axis: for a
    dense layer ``Factors(a_prev: [B, n_in], delta: [B, n_out])``, for a
    ``Conv1d`` ``ConvFactors(patches, delta)``, for a ``LayerNorm``
    ``ScaleShiftFactors(xhat, g)``, ``()`` for parameterless layers.
  """
  return _batched_factors(model, params, x, y, masks)


def contract(model, fs, fn):
  r"""``fn(kind, f)`` for every parameter layer's batched factors ``f``,
  returned in the params' structure."""
  return model.compress(map_kinds(fn, model.layers, model.expand(fs)))


def kind_leaves(model, fs):
  r"""``[(path, layer, kind, f)]`` for every parameter layer, params order."""
  return _kind_leaves(model.layers, model.expand(fs))


def per_example_grads(model: MLP, params: Params, x: Array, y: Array
                      ) -> Params:
  r"""Every example's gradient: :func:`fnn.backprop` under ``jax.vmap``.

  Args:
    model: the network (static under ``jit``).
    params: from ``model.init``.
    x: ``[batch, n_in]``.
    y: ``[batch, n_out]`` targets or ``[batch]`` labels (see
      ``model.mean_loss``).

  Returns:
    Params-shaped, every leaf with a leading batch axis:
    ``w: [batch, n_in, n_out]``, ``b: [batch, n_out]``.
  """
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  return jax.vmap(functools.partial(backprop, model, params))(x, y)


def value_and_grad(model: MLP, params: Params, x: Array, y: Array, *,
                   masks=None) -> tuple[Array, Params]:
  r"""The batch-mean loss and its gradient, hand-derived.

  Equal to ``jax.value_and_grad(model.mean_loss)(params, x, y)``. Per layer
  ``dw = a_prev.T @ delta / B`` and ``db = mean(delta)``: the mean of the
  per-example outer products as one matrix product, never materialized.
  The ``1/B`` is applied once to the output delta (the backward is linear in
  it), so every layer's ``delta`` already carries it.

  Args:
    masks: optional inverted-dropout masks, one ``[batch, h_l]`` array per
      hidden layer (see :func:`fnn.dropout_masks`); the reference is then
      ``model.mean_loss(params, x, y, masks=masks)``.

  Returns:
    ``(loss, grads)``: a scalar and a params-shaped tuple of ``Dense``.
  """
  losses, fs = _batched_factors(model, params, x, y, masks, mean=True)
  # dense: a_prev.T @ delta (n_in, n_out); the deltas carry the 1/B
  return jnp.mean(losses), contract(model, fs, lambda k, f: k.total(f))


def grad(model: MLP, params: Params, x: Array, y: Array, *, masks=None
         ) -> Params:
  r"""The batch-mean gradient, equal to ``jax.grad(model.mean_loss)``.

  See :func:`value_and_grad`.
  """
  return value_and_grad(model, params, x, y, masks=masks)[1]


def l2_norm(v: Array, axis: int = -1) -> Array:
  r"""``|v|_2`` along ``axis`` without overflow or underflow in the squares.

  With ``m = max_k |v_k|``: ``|v| = m sqrt(sum_k (v_k / m)^2)`` (LAPACK's
  ``nrm2`` idea, one reduction more than ``sqrt(sum(v**2))``). Every
  ``|v_k / m| <= 1``, so the sum cannot overflow, and its largest term is
  ``1``, so underflow of tiny terms loses nothing that matters. The result is
  ``0`` for ``v == 0``, ``inf`` if an entry is infinite (or the norm itself
  exceeds the dtype's range) and NaN if an entry is NaN. Equal to
  ``jnp.linalg.norm`` to rounding wherever that does not overflow.

  Args:
    v: an array with at least one entry along ``axis``.
    axis: the axis reduced.

  Returns:
    ``v``'s shape without ``axis``.
  """
  return _l2_norm(v, axis)


def layer_norms(factors) -> Array:
  r"""``[B, L]``: each example's gradient norm per dense layer.

  ``|g_i^l| = |[outer(a_prev_i, delta_i); delta_i]|_F
  = |delta_i| sqrt(|a_prev_i|^2 + 1) = |delta_i| hypot(|a_prev_i|, 1)``
  (the ``+ 1`` is the bias row). Each factor's norm is :func:`l2_norm` and
  ``jnp.hypot`` scales too, so nothing is squared before it is scaled: the
  result is finite whenever the true norm is representable.

  Args:
    factors: per layer, ``a_prev: [B, n_in]`` and ``delta: [B, n_out]``.
  """
  return jnp.stack([_OUTER.norms(f) for f in factors], axis=-1)


def layer_norms_of(model, fs) -> Array:
  r"""``[B, L]``: each example's gradient norm per parameter layer (``L``
  of them, in params order), for any network: each factor kind's ``norms``
  (:mod:`fnn.layers.kinds`), all computed with scaling."""
  return jnp.stack([k.norms(f) for _, _, k, f in kind_leaves(model, fs)],
                   axis=-1)


def per_example_grad_norms(model: MLP, params: Params, x: Array, y: Array
                           ) -> Array:
  r"""The L2 norm of each example's whole gradient, ``[batch]``.

  Uses ``|outer(a, d)|_F = |a| |d|``: per example,
  ``|g| = (sum_l |delta^l|^2 (|a^{l-1}|^2 + 1))^{1/2}`` (the ``+ 1`` is the
  bias), so no per-example weight gradient is formed. Computed with scaling
  (:func:`layer_norms`, then :func:`l2_norm` over the layers): finite
  wherever the per-example gradient is finite and its norm representable.
  """
  _, fs = _batched_factors(model, params, x, y)
  return l2_norm(layer_norms_of(model, fs), axis=-1)  # (B,)


def per_example_losses(model: MLP, params: Params, x: Array, y: Array
                       ) -> Array:
  r"""Each example's loss, ``[batch]``, from the same forward pass."""
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  return jax.vmap(lambda xi, yi: loss_and_factors(model, params, xi, yi)[0])(
      x, y)

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
``per_example_grad_norms``  ``|dw[i]|^2 = |a_prev[i]|^2 |delta[i]|^2``
==========================  =============================================

The mean is seed 003's mini-batch rule ``(1/m) sum_x dC_x/dw`` and seed 000's
``dW = (1/m) sum (A - y) A_prev^T``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fnn import _checks
from fnn.backward import backprop, loss_and_factors
from fnn.model import Dense, MLP, Params

Array = jax.Array


def _batched_factors(model: MLP, params: Params, x: Array, y: Array,
                     masks=None, mean: bool = False):
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  _checks.check_masks(model, masks, x.shape[0])
  scale = 1.0 / x.shape[0] if mean else None  # deltas of the batch mean
  fn = functools.partial(loss_and_factors, model, params, scale=scale)
  # losses (B,), factors with leading B axes
  return jax.vmap(lambda xi, yi, mi: fn(xi, yi, masks=mi))(x, y, masks)


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
  losses, factors = _batched_factors(model, params, x, y, masks, mean=True)
  grads = tuple(Dense(f.a_prev.T @ f.delta,  # (n_in, n_out), mean over B
                      jnp.sum(f.delta, axis=0))
                for f in factors)
  return jnp.mean(losses), grads


def grad(model: MLP, params: Params, x: Array, y: Array, *, masks=None
         ) -> Params:
  r"""The batch-mean gradient, equal to ``jax.grad(model.mean_loss)``.

  See :func:`value_and_grad`.
  """
  return value_and_grad(model, params, x, y, masks=masks)[1]


def per_example_grad_norms(model: MLP, params: Params, x: Array, y: Array
                           ) -> Array:
  r"""The L2 norm of each example's whole gradient, ``[batch]``.

  Uses ``|outer(a, d)|_F = |a| |d|``: per example,
  ``|g|^2 = sum_l |delta^l|^2 (|a^{l-1}|^2 + 1)`` (the ``+ 1`` is the bias),
  so no per-example weight gradient is formed.
  """
  _, factors = _batched_factors(model, params, x, y)
  sq = sum(jnp.sum(f.delta**2, axis=-1) * (jnp.sum(f.a_prev**2, axis=-1) + 1)
           for f in factors)  # (B,)
  return jnp.sqrt(sq)


def per_example_losses(model: MLP, params: Params, x: Array, y: Array
                       ) -> Array:
  r"""Each example's loss, ``[batch]``, from the same forward pass."""
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  return jax.vmap(lambda xi, yi: loss_and_factors(model, params, xi, yi)[0])(
      x, y)

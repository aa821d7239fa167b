r"""Regularization with hand-derived gradients: L2 weight decay and dropout.

L2: the penalty ``(lambda / 2) sum_l |w^l|^2`` over WEIGHTS only (biases are
not decayed), added to the batch-mean loss; its gradient is ``lambda w``.
Nielsen's network2.py writes ``C = C_0 + (lambda_N / 2n) sum w^2`` with ``n``
the training-set size, i.e. ``lambda = lambda_N / n``, and with SGD
``w <- (1 - eta lambda_N / n) w - eta grad C_0``.

Dropout: inverted dropout on hidden layers. Each hidden unit is kept with
probability ``1 - rate`` and scaled by ``1 / (1 - rate)``, so evaluation uses
the network as is. The same mask multiplies ``dL/da`` in the backward (see
:func:`fnn.backward.hidden_delta`).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _random
from fnn.model import MLP, Params


def _is_weight(path) -> bool:
  r"""Whether a params leaf is decayed: a field named ``w`` (Dense and
  Conv1d weights); biases and LayerNorm's scale and shift are not."""
  return bool(path) and getattr(path[-1], "name", None) == "w"


def l2_penalty(params: Params, weight_decay: float):
  r"""``(weight_decay / 2) sum_l |w^l|_F^2``: every weight leaf (``w`` of
  Dense and Conv1d layers); biases and LayerNorm's parameters are not
  decayed."""
  leaves = [v for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
            if _is_weight(path)]
  return 0.5 * weight_decay * sum(jnp.sum(w**2) for w in leaves)


def l2_grad(params: Params, weight_decay: float) -> Params:
  r"""The gradient of :func:`l2_penalty`: ``weight_decay * w``, 0 for the
  other leaves."""
  return jax.tree_util.tree_map_with_path(
      lambda path, v: weight_decay * v if _is_weight(path)
      else jnp.zeros_like(v), params)


# The keep test compares a 16-bit uniform integer with a threshold: four draws
# per 64-bit Threefry block (fnn._random), a quarter of the random bits of
# ``jax.random.bernoulli``. The keep probability is rounded to a multiple of
# 2^-16, an error of at most 2^-17 ~ 7.6e-6.
_DROPOUT_BITS = 16


class Keep(NamedTuple):
  r"""A dropout rate as :func:`dropout_masks` uses it, precomputed on the
  host: ``threshold = round((1 - rate) 2^16)`` (uint32) and ``kept = 1 -
  rate`` in the masks' float32/float64 dtype. Pass one as ``rate`` to use
  per-run rates under ``vmap`` (:func:`fnn.fit_many`); the masks equal those
  of the float rate bit for bit."""
  threshold: Any
  kept: Any


def keep(rate: float, dtype=jnp.float32) -> Keep:
  r"""The :class:`Keep` of a concrete ``rate`` for masks of ``dtype``."""
  if not 0 <= rate < 1:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  wide = jnp.promote_types(dtype, jnp.float32)
  # The threshold may equal 2^16 (every unit kept: rate below 2^-17).
  return Keep(np.uint32(round((1.0 - rate) * (1 << _DROPOUT_BITS))),
              np.asarray(1.0 - rate, wide))


def dropout_masks(model: MLP, key, batch: int, rate, dtype=jnp.float32):
  r"""Inverted-dropout masks, one ``[batch, h_l]`` per hidden layer (for a
  :class:`fnn.Sequential`, ``[batch, *shape]`` per top-level Activation).

  Entries are 0 (dropped, probability ``rate``) or ``1 / (1 - rate)``. Each
  unit is kept when a 16-bit uniform integer ``u`` drawn from ``key`` is below
  ``round((1 - rate) 2^16)``: the keep probability is ``1 - rate`` to within
  ``2^-17``. Returns ``None`` when ``rate == 0`` or the model has no hidden
  layer. ``rate`` may also be a :class:`Keep` (traced values allowed).

  The scale ``1 / (1 - rate)`` is computed in float32 (float64 for float64
  masks) and rounded to ``dtype`` once: in bfloat16 a division in bfloat16
  would round ``1 - rate`` first (``rate = 0.15`` gave ``1.171875``, the
  nearest bfloat16 to ``1 / 0.85`` is ``1.1796875``).

  Raises:
    ValueError: ``rate`` outside ``[0, 1)``.
  """
  shapes = model.dropout_shapes  # one example's shape per hidden output
  if not isinstance(rate, Keep):
    concrete, rate = rate, keep(rate, dtype)  # checks it
    if concrete == 0:
      return None
  if not shapes:
    return None
  # One stream per layer, row-major: row i's mask depends only on i, so a
  # batch padded with extra rows (Poisson buffers) keeps its masks.
  keys = jax.random.split(key, len(shapes))
  wide = jnp.promote_types(dtype, jnp.float32)  # float32, or float64
  return tuple(
      ((_random.uniform16(k, batch * math.prod(sh)) < rate.threshold
        ).astype(wide) / rate.kept).astype(dtype).reshape(batch, *sh)
      for k, sh in zip(keys, shapes))

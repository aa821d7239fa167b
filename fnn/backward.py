r"""The hand-derived backward pass for ONE example (BP1-BP4).

Nothing here knows about batches: :mod:`fnn.gradients` batches these
functions with ``jax.vmap`` and combines the per-layer factors.

Data flow, for layers ``l = 1..L`` (row vectors, ``w^l: [n_{l-1}, n_l]``)::

  forward   z^l = a^{l-1} @ w^l + b^l,  a^l = sigma_l(z^l),  a^0 = x
  BP1       delta^L = dL/da^L * sigma_L'(z^L)   (fused: a^L - y)
  BP2       delta^l = (delta^{l+1} @ w^{l+1}.T) * sigma_l'(z^l)
  BP3/BP4   dL/db^l = delta^l,  dL/dw^l = outer(a^{l-1}, delta^l)

In seed 003's column form (``z = W a + b``, ``W = w.T``) BP2 reads
``delta^l = ((W^{l+1})^T delta^{l+1}) * sigma'(z^l)`` and BP4
``dC/dW^l_{jk} = a^{l-1}_k delta^l_j``.

References:
  Nielsen, *Neural Networks and Deep Learning*, ch. 2; seeds 000-003.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn import _checks
from fnn.layers import base as layer_base
from fnn.layers import kinds
from fnn.model import Dense, MLP, Params

Array = jax.Array


class Layer(NamedTuple):
  r"""What the forward pass keeps of one layer, for one example.

  Attributes:
    a_prev: ``[n_in]`` the layer's input ``a^{l-1}``.
    z: ``[n_out]`` the pre-activation.
    a: ``[n_out]`` the activation ``sigma(z)``.
  """
  a_prev: Array
  z: Array
  a: Array


# The two factors of one dense layer's gradient for one example:
# ``dL/dw = outer(a_prev, delta)``, ``dL/db = delta`` (fnn.layers.kinds).
Factors = kinds.Factors


def forward(model: MLP, params: Params, x: Array, masks=None
            ) -> tuple[Layer, ...]:
  r"""Forward pass of one example ``x: [n_in]``, keeping ``(a_prev, z, a)``.

  ``masks``, if given, holds one ``[h_l]`` inverted-dropout mask per hidden
  layer (entries 0 or ``1/(1-rate)``): the next layer sees ``a * mask``. The
  cache keeps the unmasked ``a`` (for ``sigma'``) and the masked ``a_prev``.
  """
  cache = []
  a = x
  for l, (layer, act) in enumerate(zip(params, model.activations)):
    z = a @ layer.w + layer.b  # (n_out,)
    a_next = act.fn(z)
    cache.append(Layer(a, z, a_next))
    a = a_next if masks is None or l == model.num_layers - 1 else (
        a_next * masks[l])
  return tuple(cache)


def example_loss(model: MLP, last: Layer, y: Array) -> Array:
  r"""The loss of one example from the last layer (stable for fused pairs)."""
  if model.fused:
    return model.loss.fn_z(last.z, y)
  return model.loss.fn(last.a, y)


def output_delta(model: MLP, last: Layer, y: Array) -> Array:
  r"""BP1: ``delta^L = dL/dz^L``.

  Canonical pairs use the fused error (``a - y``; seeds 000/001, Nielsen
  eq. 66); otherwise ``delta^L = dL/da^L * sigma'(z^L)`` (BP1), or for a
  softmax output its vector-Jacobian product ``a * (g - <g, a>)``.
  """
  if model.fused:
    return model.loss.delta_z(last.z, last.a, y)
  g = model.loss.grad(last.a, y)  # dL/da^L, (n_out,)
  return model.output.backward(last.z, last.a, g)


def dense_backward(w: Array, a_prev: Array, delta: Array
                   ) -> tuple[Dense, Array]:
  r"""Backward of one dense layer given its ``delta = dL/dz``.

  Implements ``dw = outer(a_prev, delta)`` (BP4), ``db = delta`` (BP3) and
  ``dL/da_prev = delta @ w.T`` (seed 000's ``dL/dA_prev = dL/dZ W``).

  Args:
    w: ``[n_in, n_out]``.
    a_prev: ``[n_in]``.
    delta: ``[n_out]``.

  Returns:
    ``(Dense(dw, db), da_prev)`` with ``da_prev: [n_in]``.
  """
  return Dense(jnp.outer(a_prev, delta), delta), delta @ w.T


def hidden_delta(w_next: Array, delta_next: Array, layer: Layer, act,
                 mask=None) -> Array:
  r"""BP2: ``delta^l = (delta^{l+1} @ w^{l+1}.T) * sigma_l'(z^l)``.

  With inverted dropout the layer's output was ``a * mask``, so the same
  mask multiplies ``dL/da^l`` before ``sigma'``.
  """
  # Written delta @ w.T (not w @ delta) so that under vmap the batch axis
  # stays leading and XLA needs no transpose of the (B, n_l) result.
  g = delta_next @ w_next.T  # dL/da^l, (n_l,)
  if mask is not None:
    g = g * mask
  return act.backward(layer.z, layer.a, g)


def backward_factors(model: MLP, params: Params, cache: tuple[Layer, ...],
                     y: Array, scale=None, masks=None
                     ) -> tuple[Factors, ...]:
  r"""BP1 then BP2 down the layers: ``(a_prev, delta)`` for every layer.

  ``scale``, if given, multiplies ``delta^L``. BP2 is linear in ``delta``, so
  every layer's ``delta`` carries the factor: the combinators pass ``1/B`` here
  and the mean gradient comes straight out of one matmul, as in reverse-mode
  autodiff of a mean (one multiply on ``[B, n_out]``, not on every
  ``[n_in, n_out]`` gradient).
  """
  delta = output_delta(model, cache[-1], y)
  if scale is not None:
    delta = delta * scale
  factors = [Factors(cache[-1].a_prev, delta)]
  for l in range(model.num_layers - 2, -1, -1):
    mask = None if masks is None else masks[l]
    delta = hidden_delta(params[l + 1].w, delta, cache[l], model.activation[l],
                         mask)
    factors.append(Factors(cache[l].a_prev, delta))
  return tuple(reversed(factors))


def run(model, params, x: Array, y: Array, scale=None, masks=None):
  r"""THE forward and backward loop of every network, for ONE example.

  Runs ``model.layers`` forward (each layer's ``forward``), the output delta
  (BP1, fused ``a - y`` for canonical pairs), then every layer's hand-derived
  ``backward`` from the last to the first. ``params`` are the model's own
  (``model.expand`` gives one entry per layer); the factors come back in the
  same structure (``model.compress``).

  Returns:
    ``(loss, factors, dL/dx)``.
  """
  full = model.expand(params)
  slots = model.mask_slots
  z, caches = layer_base.run_forward(model.layers, full, x, masks, slots)
  last = Layer(None, z, model.output.fn(z))
  delta = output_delta(model, last, y)
  if scale is not None:
    delta = delta * scale
  g_in, factors = layer_base.run_backward(model.layers, full, caches, delta,
                                          masks, slots)
  return example_loss(model, last, y), model.compress(factors), g_in


def loss_and_factors(model, params, x: Array, y: Array, scale=None,
                     masks=None):
  r"""One example's loss and per-layer gradient factors (no validation).

  ``x``: one example, ``y``: its validated target; ``scale`` multiplies the
  output delta (BP2 is linear, so every layer's factors carry it: the
  combinators pass ``1/B`` and the mean gradient is one contraction);
  ``masks``: one dropout mask per slot. This is the function
  :mod:`fnn.gradients` maps over the batch. See :func:`run`.
  """
  loss, factors, _ = run(model, params, x, y, scale, masks)
  return loss, factors


def _per_example(model, factors):
  r"""One example's gradient from its factors (each kind's ``per_example``
  on a batch of one)."""
  full = model.expand(jax.tree.map(lambda v: v[None], factors))
  g = layer_base.map_kinds(lambda k, f: k.per_example(f), model.layers, full)
  return jax.tree.map(lambda v: v[0], model.compress(g))


def backprop(model, params, x: Array, y: Array):
  r"""The hand-derived gradient of ONE example's loss.

  Args:
    model: the network (static under ``jit``): an :class:`fnn.MLP` or
      :class:`fnn.Sequential`.
    params: from ``model.init``.
    x: one example (``[n_in]`` for an MLP).
    y: ``[n_out]`` targets, a scalar integer class label, or a scalar target
      when ``n_out == 1``.

  Returns:
    Params-shaped; for a dense layer ``Dense(dw, db)`` with
    ``dw = outer(a_prev, delta)``, ``db = delta`` (BP3, BP4).
  """
  x, y = _checks.check_batch(model, params, x, y, batched=False)
  _, factors = loss_and_factors(model, params, x, y)
  return _per_example(model, factors)


def input_grad(model, params, x: Array, y: Array) -> Array:
  r"""``dL/dx`` for ONE example: the first layer's backward carried to the
  input (for an MLP the first layer's ``delta @ w.T``).

  The input gradient of seed 000's ``dL/dA_prev``, carried to the network's
  input (saliency maps, adversarial examples). Shapes as in :func:`backprop`.
  """
  x, y = _checks.check_batch(model, params, x, y, batched=False)
  return run(model, params, x, y)[2]

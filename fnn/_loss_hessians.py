r"""The output level of the curvature products: the loss's Hessian and the
output activation's R-operators, in closed form.

Pearlmutter's ``R{.}`` (see :mod:`fnn.curvature_vp`) at the top of the
network: ``R{z}`` (the logits' tangent) in, ``R{delta_L}`` (the R of the
output delta) or the GGN's ``H R{f}`` out.

* :data:`FUSED_HESSIANS`: ``H_z r = d^2 l / dz^2 r`` of a built-in fused
  pair (softmax + categorical cross-entropy, sigmoid + binary
  cross-entropy, identity + half squared error), keyed by the loss.
* :data:`LOSS_HESSIANS`: ``H_a r = d^2 loss.fn(a, y) / da^2 r`` of a
  built-in loss at the output ``a`` (diagonal).
* :func:`softmax_jvp`, :func:`softmax_backward_jvp`: the R of softmax's
  forward and of its vjp (it mixes units, so it has no ``grad2``).

A user-registered loss (or a user's output activation that mixes units) has
no field for its second derivative: there, and only there, ``jax.jvp``
differentiates the user's own hand-derived ``grad`` (``delta_z``, ``vjp``),
so the products stay consistent with fnn's gradient of that loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn import activations as act_lib
from fnn import losses as loss_lib

Array = jax.Array


def _dot(u: Array, w: Array) -> Array:
  return jnp.sum(u * w, axis=-1, keepdims=True)


def _softmax_ce_hz(z, a, y, r):
  r"""``l = s logsumexp(z) - <y, z>`` (``s = sum(y)``): ``dl/dz = s a - y``
  and ``H_z r = s (a * r - a <a, r>)`` (``da/dz = diag(a) - a a^T``)."""
  del z
  return jnp.sum(y, -1, keepdims=True) * a * (r - _dot(a, r))


def _sigmoid_bce_hz(z, a, y, r):
  r"""``dl/dz = a - y``, so ``H_z = diag(a (1 - a))``."""
  del z, y
  return a * (1 - a) * r


def _identity_half_se_hz(z, a, y, r):
  r"""``dl/dz = z - y``, so ``H_z = I``."""
  del z, a, y
  return r


FUSED_HESSIANS = {
    loss_lib.CATEGORICAL_CROSS_ENTROPY: _softmax_ce_hz,
    loss_lib.BINARY_CROSS_ENTROPY: _sigmoid_bce_hz,
    loss_lib.HALF_SQUARED_ERROR: _identity_half_se_hz,
}
r"""``H_z r`` of a built-in fused pair, ``(z, a, y, r) -> [n_out]``, keyed by
the loss (its ``canonical`` output)."""


LOSS_HESSIANS = {
    loss_lib.SQUARED_ERROR: lambda a, y, r: 2 * r,  # d/da 2 (a - y)
    loss_lib.HALF_SQUARED_ERROR: lambda a, y, r: r,  # d/da (a - y)
    # d/da [-y/a + (1 - y)/(1 - a)] = y/a^2 + (1 - y)/(1 - a)^2
    loss_lib.BINARY_CROSS_ENTROPY:
        lambda a, y, r: (y / (a * a) + (1 - y) / ((1 - a) * (1 - a))) * r,
    loss_lib.CATEGORICAL_CROSS_ENTROPY:  # d/da (-y/a) = y/a^2
        lambda a, y, r: y / (a * a) * r,
}
r"""``H_a r = d^2 loss.fn(a, y)/da^2 r`` of a built-in loss (diagonal),
``(a, y, r) -> [n_out]``."""


def softmax_jvp(z: Array, a: Array, r: Array) -> Array:
  r"""``R{a} = J R{z}`` with ``J = diag(a) - a a^T``: ``a * (r - <a, r>)``."""
  del z
  return a * (r - _dot(a, r))


def softmax_backward_jvp(z, a, g, r_z, r_g):
  r"""The R of softmax's vjp ``delta = a * (g - <g, a>)``, product rule::

    R{delta} = R{a} * (g - <g, a>) + a * (R{g} - <R{g}, a> - <g, R{a}>)

  with ``R{a} = softmax_jvp(z, a, R{z})``.
  """
  r_a = softmax_jvp(z, a, r_z)
  return r_a * (g - _dot(g, a)) + a * (r_g - _dot(r_g, a) - _dot(g, r_a))


MIXERS = {act_lib.SOFTMAX: (softmax_jvp, softmax_backward_jvp)}
r"""``(jvp, backward_jvp)`` of a built-in output activation that mixes units."""


def loss_hessian(loss, a, y, r):
  r"""``H_a r``: a closed form, else (a user's loss) the R of its ``grad``."""
  h = LOSS_HESSIANS.get(loss)
  if h is not None:
    return h(a, y, r)
  return jax.jvp(lambda a_: loss.grad(a_, y), (a,), (r,))[1]


def fused_hessian(model, z, a, y, r):
  r"""``H_z r`` of a fused pair: a closed form, else the R of the user's
  ``delta_z(z, sigma(z), y)``."""
  h = FUSED_HESSIANS.get(model.loss)
  if h is not None:
    return h(z, a, y, r)
  out, loss = model.output, model.loss
  return jax.jvp(lambda z_: loss.delta_z(z_, out.fn(z_), y), (z,), (r,))[1]


def output_jvp(out, z, a, r):
  r"""``R{a} = (da/dz) R{z}`` of the output activation."""
  if out.grad is not None:
    return out.grad(z, a) * r
  if out in MIXERS:
    return MIXERS[out][0](z, a, r)
  return jax.jvp(out.fn, (z,), (r,))[1]  # a user's mixer: no closed form


def output_backward_jvp(out, z, a, g, r_z, r_g):
  r"""``R{delta_L}``, the R of ``out.backward(z, a, g)``."""
  if out.grad is not None:
    return out.backward_jvp(z, a, g, r_z, r_g)
  if out in MIXERS:
    return MIXERS[out][1](z, a, g, r_z, r_g)
  return jax.jvp(lambda z_, g_: out.vjp(z_, out.fn(z_), g_), (z, g),
                 (r_z, r_g))[1]

r"""Curvature and per-example geometry from the factors of ONE pass.

The generalized Gauss-Newton (GGN) of the batch-mean loss splits the network
into ``f(x; theta)`` and a convex loss of ``f``::

  G = (1/B) sum_b J_b^T H_b J_b,   J_b = df(x_b)/dtheta,   H_b = d^2 L/df^2

The split: for the fused (output, loss) pairs (softmax + categorical cross
entropy, sigmoid + binary cross entropy, identity + half squared error)
``f`` is the logits ``z`` and ``H`` the loss's Hessian in ``z``; for every
other pair ``f`` is the output activation ``a = sigma(z)`` and ``H`` the
loss's Hessian in ``a`` (the output activation's Jacobian is part of ``J``).

With a square root ``H_b = S_b S_b^T`` (``S_b: [n_out, K]``), the GGN is a
sum of ``K`` outer products per example: ``G = (1/B) sum_{b,k} g_bk g_bk^T``
with ``g_bk = J_b^T S_b[:, k]``, and ``J_b^T s`` is exactly fnn's
hand-derived backward started from ``s`` instead of ``dL/dz`` (it is linear
in its start). So one forward pass and ``K`` backward passes of each example
(``jax.vmap`` over the columns, the forward caches shared) give factors with
a column axis ``[B, K, ...]``, and every quantity is a contraction of them,
written once per factor kind (:mod:`fnn.layers.kinds`):

=================  =========================================================
quantity           contraction
=================  =========================================================
``diag_ggn``       ``(1/B) sum_{b,k} g_bk ** 2`` (dense: ``(a**2).T @ sum_k d_k**2``)
``ggn_trace``      ``sum_k |g_bk|^2`` per example (the norms of the factors)
``grad_gram``      ``<g_i, g_j>`` (dense: ``(a_i.a_j + 1)(d_i.d_j)``)
``kfac_factors``   ``E[a a^T]``, ``E[sum_k d_k d_k^T]`` (``kind="exact"``)
=================  =========================================================

Square roots (``p = softmax(z)`` or ``sigmoid(z)``):

* softmax + cross entropy: ``H = s (diag(p) - p p^T)`` with ``s = sum(y)``
  (1 for a label), ``S = sqrt(s) (diag(sqrt p) - p sqrt(p)^T)``, since
  ``sqrt(p)^T sqrt(p) = 1``;
* sigmoid + binary cross entropy: ``H = diag(p (1 - p))``, ``S = sqrt(H)``;
* squared errors: ``H = 2 I`` (``S = sqrt(2) I``), half: ``S = I``;
* any other pair: ``H`` of the loss in ``a`` (``jax.hessian`` of the
  registered scalar loss, ``[n_out, n_out]``), ``S = V sqrt(max(lambda, 0))``
  from its eigendecomposition (negative curvature of a non-convex loss is
  dropped: the GGN assumes a convex loss), then ``S_z = J_sigma^T S`` by the
  output activation's own ``backward``, column by column.

Monte-Carlo (``mc_samples = M``): column ``m`` is ``dL(z, y_m)/dz / sqrt(M)``
with ``y_m`` drawn from the model's predictive distribution (a class from
``softmax(z)``, a Bernoulli label from ``sigmoid(z)``); for the other pairs
``S eps_m / sqrt(M)`` with ``eps_m ~ N(0, I)`` (the Gaussian whose precision
is ``H``). Either way ``E[c c^T] = H / M`` per column, so the estimate is
unbiased. BackPACK's DiagGGNMC draws the same way.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _checks, gradients
from fnn.layers import base as layer_base, kinds
from fnn.layers.dense import is_int

Array = jax.Array

def loss_hessian_sqrt(model, z: Array, y: Array) -> Array:
  r"""``S: [n_out, K]`` with ``S S^T = d^2 L/dz^2`` restricted to the GGN
  split (see the module docstring), for ONE example: ``z: [n_out]`` logits,
  ``y: [n_out]`` validated targets (one-hot for labels)."""
  a = model.output.fn(z)
  name = model.loss.name
  if model.fused and name == "categorical_cross_entropy":
    sp = jnp.sqrt(a)
    return jnp.sqrt(jnp.sum(y)) * (jnp.diag(sp) - jnp.outer(a, sp))
  if model.fused and name == "binary_cross_entropy":
    return jnp.diag(jnp.sqrt(a * (1 - a)))
  if model.fused and name == "half_squared_error":
    return jnp.eye(z.shape[-1], dtype=z.dtype)
  if model.fused:  # a user-registered canonical pair: its fn_z's Hessian
    return _psd_sqrt(jax.hessian(lambda v: model.loss.fn_z(v, y))(z))
  s_a = _loss_sqrt_a(model.loss, a, y)
  # J_sigma^T S, column by column, by the output activation's backward.
  return jax.vmap(lambda col: model.output.backward(z, a, col), in_axes=1,
                  out_axes=1)(s_a)


def _loss_sqrt_a(loss, a: Array, y: Array) -> Array:
  n = a.shape[-1]
  if loss.name == "half_squared_error":
    return jnp.eye(n, dtype=a.dtype)
  if loss.name == "squared_error":
    return jnp.sqrt(jnp.asarray(2, a.dtype)) * jnp.eye(n, dtype=a.dtype)
  return _psd_sqrt(jax.hessian(lambda v: loss.fn(v, y))(a))


def _psd_sqrt(h: Array) -> Array:
  r"""``V sqrt(max(lambda, 0))`` of a symmetric ``h``: ``S S^T = h`` where
  ``h`` is positive semi-definite."""
  lam, v = jnp.linalg.eigh((h + h.T) / 2)
  return v * jnp.sqrt(jnp.maximum(lam, 0))[None, :]


def _mc_columns(model, z: Array, y: Array, key, m: int) -> Array:
  r"""``[n_out, m]`` Monte-Carlo columns, ``E[c c^T] = H / m`` each."""
  a = model.output.fn(z)
  name, n = model.loss.name, z.shape[-1]
  scale = 1 / jnp.sqrt(jnp.asarray(m, z.dtype))
  if model.fused and name == "categorical_cross_entropy":
    labels = jax.random.categorical(key, jnp.log(a), shape=(m,))
    yhat = jax.nn.one_hot(labels, n, dtype=z.dtype) * jnp.sum(y)
    return jax.vmap(lambda t: model.loss.delta_z(z, a, t), out_axes=1)(
        yhat) * scale
  if model.fused and name == "binary_cross_entropy":
    # p broadcast explicitly: rank promotion may be set to raise.
    yhat = jax.random.bernoulli(key, jnp.broadcast_to(a, (m, n))).astype(
        z.dtype)
    return jax.vmap(lambda t: model.loss.delta_z(z, a, t), out_axes=1)(
        yhat) * scale
  s = loss_hessian_sqrt(model, z, y)
  eps = jax.random.normal(key, (s.shape[1], m), z.dtype)
  return s @ eps * scale


def _example_sqrt_factors(model, params, x: Array, y: Array, key=None,
                          mc: int = 0):
  r"""One example: factors with a leading column axis ``K``, from one
  forward pass and the backward vmapped over the columns of ``S``."""
  full = model.expand(params)
  z, caches = layer_base.run_forward(model.layers, full, x)
  cols = (loss_hessian_sqrt(model, z, y) if mc == 0
          else _mc_columns(model, z, y, key, mc))
  _, fs = jax.vmap(
      lambda g: layer_base.run_backward(model.layers, full, caches, g),
      in_axes=1)(cols)
  return model.compress(fs)


def sqrt_factors(model, params, x: Array, y: Array, *, mc_samples: int = 0,
                 key=None):
  r"""The GGN's factors: per example and column of ``S`` (or Monte-Carlo
  sample), each layer's factors with leading ``[B, K]`` axes, in the params'
  structure. Every GGN quantity contracts these."""
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  mc = _check_mc(mc_samples, key)
  keys = (jax.random.split(key, x.shape[0]) if mc
          else jnp.zeros((x.shape[0],)))
  fn = functools.partial(_example_sqrt_factors, model, params, mc=mc)
  return jax.vmap(lambda xi, yi, ki: fn(xi, yi, ki if mc else None))(x, y,
                                                                     keys)


def _check_mc(mc_samples, key) -> int:
  if not is_int(mc_samples) or mc_samples < 0:
    raise ValueError(f"mc_samples must be an int >= 0, got {mc_samples!r}")
  if mc_samples and key is None:
    raise ValueError(f"mc_samples={mc_samples} draws labels from the model "
                     f"and needs a key (e.g. key=jax.random.key(0))")
  return int(mc_samples)


def kind_method(kind, method: str, where: str = ""):
  r"""``kind.<method>``, or a ValueError naming the layer (``where``) and
  the factor kind that lacks the contraction."""
  fn = getattr(kind, method, None)
  if fn is None:
    raise ValueError(f"{where}factor kind {type(kind).__name__} has no "
                     f"{method!r} contraction (see fnn.layers.kinds)")
  return fn


def _contract(model, fs, method: str, *args):
  def one(kind, f):
    return kind_method(kind, method)(f, *args)
  return model.compress(layer_base.map_kinds(one, model.layers,
                                             model.expand(fs)))


def diag_ggn(model, params, x: Array, y: Array, *, mc_samples: int = 0,
             key=None):
  r"""The diagonal of the GGN of the batch-mean loss, params-shaped.

  Exact with ``mc_samples=0`` (the loss Hessian's square root propagated:
  ``n_out`` backward columns per example, one for sigmoid + binary cross
  entropy with one output); with ``mc_samples=M`` a Monte-Carlo estimate
  from ``M`` labels drawn from the model's predictive distribution
  (``key`` required). See the module docstring for the split and ``S``.

  Per dense layer ``(1/B) (a**2).T @ sum_k d_k**2`` (never a per-example
  weight gradient); per ``Conv1d`` ``(1/B) sum_{b,k} (P_b^T D_bk)**2``; per
  ``LayerNorm`` the squares of its per-example ``(xhat g, g)``.
  """
  fs = sqrt_factors(model, params, x, y, mc_samples=mc_samples, key=key)
  return _contract(model, fs, "diag_ggn", jax.tree.leaves(fs)[0].shape[0])


def ggn_trace(model, params, x: Array, y: Array, *,
              per_example: bool = False) -> Array:
  r"""The exact trace of the GGN of the batch-mean loss (a scalar), or with
  ``per_example=True`` the ``[B]`` traces of each example's own loss's GGN
  (their mean is the batch trace).

  ``tr(J^T S S^T J) = sum_k |J^T s_k|^2``: the squared norms of the column
  gradients, from each kind's ``column_sq_norms`` (dense ``(|a|^2 + 1)
  sum_k |d_k|^2``, each norm scaled; Conv1d's Gram form with the patches'
  Gram once per example), so memory is ``O(B K)`` beyond the factors and
  no gradient is formed.
  """
  if not isinstance(per_example, (bool, np.bool_)):
    raise ValueError(f"per_example must be True or False, got "
                     f"{per_example!r}")
  fs = sqrt_factors(model, params, x, y)
  per = sum(_column_sq_norms(kind, f, path, layer) for path, layer, kind, f
            in gradients.kind_leaves(model, fs))
  return per if per_example else jnp.mean(per)


def _column_sq_norms(kind, f, path, layer) -> Array:
  r"""``[B]``: ``sum_k |g_bk|^2`` of one layer, by its kind's
  ``column_sq_norms`` (each example's input factor reduced once, not once
  per column), else its ``norms`` over the ``B K`` rows."""
  fn = getattr(kind, "column_sq_norms", None)
  if fn is not None:
    return fn(f)
  norms = kind_method(kind, "norms", f"layer {path} {layer!r}: ")
  return kinds.column_sq_norms_by(norms, f)


def grad_gram(model, params, x: Array, y: Array, x2: Optional[Array] = None,
              y2: Optional[Array] = None) -> Array:
  r"""``[B, B2]``: dot products of per-example gradients, each of its own
  example's loss (as :func:`fnn.per_example_grads` gives them), summed over
  every layer; against ``(x2, y2)`` if given, else ``(x, y)`` itself.

  From the factors only: per dense layer ``(a_i . a_j + 1)(d_i . d_j)`` (the
  ``+ 1`` is the bias); per ``Conv1d`` ``sum_{t,s} (p_it . p_js)(d_it .
  d_js) + (sum_t d_it).(sum_s d_js)`` (or the per-example gradients where
  they are the smaller array); per ``LayerNorm`` its per-example gradients.
  The diagonal is the squared per-example norms (TracIn's self-influence).
  """
  if (x2 is None) != (y2 is None):
    raise ValueError("grad_gram takes x2 and y2 together (or neither)")
  _, f1 = gradients.factors(model, params, x, y)
  f2 = f1 if x2 is None else gradients.factors(model, params, x2, y2)[1]
  leaves1 = gradients.kind_leaves(model, f1)
  leaves2 = gradients.kind_leaves(model, f2)
  total = 0
  for (path, layer, kind, a), (_, _, _, b) in zip(leaves1, leaves2):
    total = total + kind_method(kind, "gram", f"layer {path} {layer!r}: ")(
        a, b)
  return total

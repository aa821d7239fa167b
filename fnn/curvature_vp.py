r"""Curvature-vector products of the batch-mean loss, derived by hand.

For a params-shaped tangent ``v``, Pearlmutter's (1994) operator
``R{q} = d/dt q(params + t v) |_{t=0}`` is carried through fnn's own
one-example forward and backward, layer by layer (each layer's ``jvp`` and
``backward_jvp``, :mod:`fnn.layers.base`); nothing here calls ``jax.jvp`` or
``jax.grad`` on the network::

  R-forward   R{x} = 0,  R{y} = layer.jvp(params, cache, v, R{x})
  output      R{delta_L} = H_z R{z_L}        (H_z = d^2 l / dz^2)
  R-backward  R{g_in}, R{factors} = layer.backward_jvp(..., g, R{g})
  params      (H v)_layer = R{kind.total(factors)}   (the product rule)

* :func:`hvp` is the exact Hessian-vector product ``H v`` (the R of the
  whole backward, every second derivative included: ``sigma''`` of each
  activation, LayerNorm's curvature, the loss's).
* :func:`ggn_vp` is the generalized Gauss-Newton product
  ``G v = (1/B) sum_b J_b^T H_b J_b v`` (Schraudolph 2002; Martens 2014):
  only the R-forward (``J v``), the loss's Hessian ``H_b`` at the split
  point, then the ORDINARY backward with ``g = H_b J_b v`` (it is linear in
  ``g``). The split: for the fused pairs (softmax + categorical
  cross-entropy, sigmoid + binary cross-entropy, identity + half squared
  error) at the logits ``z`` (``H = d^2 l / dz^2``); for every other pair at
  the output ``a = sigma(z)`` (``H = d^2 loss.fn(a, y) / da^2``, and the
  output activation's Jacobian belongs to ``J``).
* :func:`hessian_eigs`: the top eigenvalues by Lanczos on either product.
* :func:`check_layer_rops` (in :mod:`fnn._rop_check`, re-exported): each
  layer's ``jvp`` and ``backward_jvp`` and the output level's second
  derivatives against ``jax.jvp`` of the same code's first order, one
  :class:`RopRow` each, naming the layer whose R-operator is wrong.

The loss level has closed forms for the built-in losses
(:data:`FUSED_HESSIANS` at ``z``, :data:`LOSS_HESSIANS` at ``a``) and for
the softmax output (:func:`softmax_jvp`, :func:`softmax_backward_jvp`), in
:mod:`fnn._loss_hessians` (re-exported here). A
user-registered loss (or an output activation that mixes units, other than
softmax) has no field for its second derivative: there, and only there,
``jax.jvp`` differentiates the user's own hand-derived ``grad``
(``delta_z``, ``vjp``), so the products stay consistent with fnn's gradient
of that loss. A hidden or output elementwise activation must carry its
``grad2`` (``sigma''``) for :func:`hvp`, which raises ``ValueError``
otherwise.

Dropout masks are not taken (the products are of the deterministic loss).

References:
  Pearlmutter (1994), "Fast exact multiplication by the Hessian".
  Schraudolph (2002), "Fast curvature matrix-vector products for
  second-order gradient descent"; Martens (2014), "New insights and
  perspectives on the natural gradient method", sec. 8.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fnn import _checks
from fnn._lanczos import lanczos, ritz_values
from fnn._loss_hessians import (FUSED_HESSIANS, LOSS_HESSIANS,  # noqa: F401
                                softmax_backward_jvp, softmax_jvp)
from fnn._loss_hessians import fused_hessian as _fused_hessian
from fnn._loss_hessians import loss_hessian as _loss_hessian
from fnn._loss_hessians import output_backward_jvp as _output_backward_jvp
from fnn._loss_hessians import output_jvp as _output_jvp
from fnn._rop_check import RopRow, check_layer_rops  # noqa: F401
from fnn.layers import base as layer_base
from fnn.layers.dense import DenseLayer, is_int

Array = jax.Array


# --- One example. -----------------------------------------------------------

def _forward_jvp(model, full, vf, x):
  z, caches = layer_base.run_forward(model.layers, full, x)
  # R{x} = 0: a structural zero (None) for a first Dense layer, which then
  # forms neither R{x} @ w nor R{x}.T @ delta (XLA does not fold dot(0, .)).
  r_x = None if isinstance(model.layers[0], DenseLayer) else jnp.zeros_like(x)
  r_z, r_caches = layer_base.run_jvp(model.layers, full, caches, vf, r_x)
  return z, caches, r_z, r_caches


def ggn_factors(model, params, v, x: Array, y: Array, scale=1.0):
  r"""One example's factors of ``J^T H J v`` (see the module docstring).

  ``J v = R{f}`` by the R-forward; ``u = H R{f}`` at the split point
  (fused: ``f = z``; else ``f = a`` and ``u`` goes back through the output
  activation: ``out.backward(z, a, H_a R{a})``); then the ordinary backward
  from ``scale * u`` (linear in it). ``x``, ``y`` validated.
  """
  full, vf = model.expand(params), model.expand(v)
  z, caches, r_z, _ = _forward_jvp(model, full, vf, x)
  a = model.output.fn(z)
  if model.fused:
    u = _fused_hessian(model, z, a, y, r_z)
  else:
    r_a = _output_jvp(model.output, z, a, r_z)
    u = model.output.backward(z, a, _loss_hessian(model.loss, a, y, r_a))
  _, factors = layer_base.run_backward(model.layers, full, caches, u * scale)
  return model.compress(factors)


def hvp_factors(model, params, v, x: Array, y: Array, scale=1.0):
  r"""One example's gradient factors and their R (Pearlmutter).

  Output level: fused, ``delta = delta_z(z, a, y)`` and
  ``R{delta} = H_z R{z}``; otherwise ``g = loss.grad(a, y)``,
  ``delta = out.backward(z, a, g)`` and, with ``R{a} = J_out R{z}`` and
  ``R{g} = H_a R{a}``, ``R{delta} = R{g} sigma'(z) + g sigma''(z) R{z}``
  (softmax: :func:`softmax_backward_jvp`). Then every layer's backward and
  its R, from ``scale * delta`` and ``scale * R{delta}``.

  Returns:
    ``(factors, r_factors)``, both in the params' structure.
  """
  full, vf = model.expand(params), model.expand(v)
  z, caches, r_z, r_caches = _forward_jvp(model, full, vf, x)
  out, loss = model.output, model.loss
  a = out.fn(z)
  if model.fused:
    delta = loss.delta_z(z, a, y)
    r_delta = _fused_hessian(model, z, a, y, r_z)
  else:
    g = loss.grad(a, y)
    delta = out.backward(z, a, g)
    r_g = _loss_hessian(loss, a, y, _output_jvp(out, z, a, r_z))
    r_delta = _output_backward_jvp(out, z, a, g, r_z, r_g)
  _, factors, _, r_factors = layer_base.run_backward_jvp(
      model.layers, full, caches, vf, r_caches, delta * scale,
      r_delta * scale)
  return model.compress(factors), model.compress(r_factors)


# --- Contractions. ----------------------------------------------------------

def total_jvp(kind, f, r):
  r"""``R{kind.total(f)}`` from the factors ``f`` and their R ``r``.

  A kind may define ``total_jvp(f, r)``; otherwise its factors are a pair
  ``(p, d)`` whose total is ``T(p, d) = B(p, d) + C(d)``, bilinear plus a
  term of ``d`` alone (Outer: ``(a^T d, sum d)``; Conv:
  ``(P^T D, sum D)``; ScaleShift: ``(sum xhat g, sum g)``), so by the
  product rule::

    R{T} = B(R{p}, d) + B(p, R{d}) + C(R{d})
         = T(p, R{d}) + [T(R{p}, d) - T(0, d)]

  (the two ``C(d)`` are the same computation: they cancel exactly).
  """
  if hasattr(kind, "total_jvp"):
    return kind.total_jvp(f, r)
  zero = type(f)(jnp.zeros_like(f[0]), *f[1:])
  return jax.tree.map(lambda u, w, s: u + (w - s), kind.total(
      type(f)(f[0], r[1])), kind.total(type(f)(r[0], f[1])), kind.total(zero))


def _pair(layers, fs, rs):
  r"""Per parameter layer ``(f, r)``, nested like the factors."""
  out = []
  for layer, f, r in zip(layers, fs, rs):
    if layer.kind is not None:
      out.append((f, r))
    elif layer.sublayers():
      out.append(_pair(layer.sublayers(), f, r))
    else:
      out.append(())
  return tuple(out)


def _ggn_vp(model, params, x, y, v):
  scale = 1.0 / x.shape[0]  # the batch mean, carried by u (linear)
  fs = jax.vmap(functools.partial(ggn_factors, model, params, v, scale=scale)
                )(x, y)
  return model.compress(layer_base.map_kinds(
      lambda k, f: k.total(f), model.layers, model.expand(fs)))


def _hvp(model, params, x, y, v):
  scale = 1.0 / x.shape[0]
  fs, rs = jax.vmap(functools.partial(hvp_factors, model, params, v,
                                      scale=scale))(x, y)
  pairs = _pair(model.layers, model.expand(fs), model.expand(rs))
  return model.compress(layer_base.map_kinds(
      lambda k, p: total_jvp(k, *p), model.layers, pairs))


# --- The public products. ---------------------------------------------------

def check_tangent(params, v):
  r"""``v`` as params-shaped arrays of the params' dtype.

  Raises:
    ValueError: a structure that is not the params', or a leaf whose shape
      differs (naming the leaf).
    TypeError: a non-numeric leaf.
  """
  p_leaves, p_def = jax.tree_util.tree_flatten_with_path(params)
  v_def = jax.tree.structure(v)
  if v_def != p_def:
    raise ValueError(f"v must have the params' structure {p_def}, got "
                     f"{v_def}")
  out = []
  for (path, p), u in zip(p_leaves, jax.tree.leaves(v)):
    where = jax.tree_util.keystr(path)
    u = _checks._as_array(u, f"v{where}")
    if tuple(u.shape) != tuple(p.shape):
      raise ValueError(f"v{where} has shape {tuple(u.shape)}, the params "
                       f"leaf has {tuple(p.shape)}")
    out.append(jnp.asarray(u, p.dtype))
  return jax.tree.unflatten(p_def, out)


def _checked(model, params, x, y, v):
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  return x, y, check_tangent(params, v)


def ggn_vp(model, params, x: Array, y: Array, v):
  r"""The generalized Gauss-Newton matrix of the batch-mean loss times ``v``.

  ``G v = (1/B) sum_b J_b^T H_b J_b v``: ``J_b v`` by the hand-derived
  R-forward, ``H_b`` the loss's Hessian at the split point (fused pairs: the
  logits ``z``; every other pair: the output ``a``, the output activation's
  Jacobian in ``J_b``), then fnn's backward from ``H_b J_b v``. ``G`` is
  positive semi-definite for a convex loss of ``f``. See
  :mod:`fnn.curvature_vp`.

  Args:
    model: an :class:`fnn.MLP` or :class:`fnn.Sequential` (static under
      ``jit``).
    params: from ``model.init``.
    x: ``[B, *in_shape]``; y: targets or labels (see ``model.mean_loss``).
    v: params-shaped tangent.

  Returns:
    Params-shaped ``G v``.

  Raises:
    ValueError: bad ``x``/``y``, or ``v`` not shaped like ``params``.
  """
  x, y, v = _checked(model, params, x, y, v)
  return _ggn_vp(model, params, x, y, v)


def hvp(model, params, x: Array, y: Array, v):
  r"""The Hessian of the batch-mean loss times ``v``, by Pearlmutter's R.

  Equal to ``jax.jvp(jax.grad(model.mean_loss), ...)`` along ``v``, but
  computed as the R of fnn's own hand-derived forward and backward: every
  layer's ``jvp`` and ``backward_jvp``, each activation's ``grad2``, the
  loss's Hessian in closed form, and the product rule on each factor kind's
  total (:func:`total_jvp`). See :mod:`fnn.curvature_vp`.

  Args:
    As for :func:`ggn_vp`.

  Returns:
    Params-shaped ``H v``.

  Raises:
    ValueError: bad ``x``/``y``, ``v`` not shaped like ``params``, or an
      elementwise activation without ``grad2`` (naming it).
    NotImplementedError: a layer without ``jvp``/``backward_jvp``.
  """
  x, y, v = _checked(model, params, x, y, v)
  return _hvp(model, params, x, y, v)


# --- Eigenvalues. -----------------------------------------------------------

def hessian_eigs(model, params, x: Array, y: Array, k: int = 1, *,
                 ggn: bool = False, key=None, iters=None) -> Array:
  r"""The ``k`` largest (algebraic, not in magnitude) eigenvalues of the
  batch-mean loss's Hessian (or its GGN with ``ggn=True``).

  Lanczos with full reorthogonalization (:func:`fnn._lanczos.lanczos`) on
  :func:`hvp` (or :func:`ggn_vp`) over the flattened parameters: the Ritz
  values of ``iters`` steps, exact when ``iters`` is the parameter count
  ``P``, otherwise converging first at the ends of the spectrum. Memory
  ``O(iters P)``. Under ``jax.jit`` pass ``model``, ``k``, ``ggn`` and
  ``iters`` as static.

  Args:
    model, params, x, y: as for :func:`hvp`.
    k: how many eigenvalues, ``1 <= k <= P``.
    ggn: use the GGN instead of the Hessian.
    key: a PRNG key for the starting vector (required).
    iters: Lanczos steps, ``k <= iters <= P``; default
      ``min(P, 3 k + 20)``.

  Returns:
    ``[k]``, the largest first.

  Raises:
    ValueError: no ``key``, ``k`` or ``iters`` out of range, bad ``x``/``y``.
  """
  if key is None:
    raise ValueError("hessian_eigs needs key=jax.random.key(...) for Lanczos's "
                     "starting vector")
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  flat, unravel = ravel_pytree(params)
  n = flat.size
  if not is_int(k) or not 1 <= k <= n:
    raise ValueError(f"k must be an int in [1, {n}] (the parameter count), "
                     f"got {k!r}")
  if iters is None:
    iters = min(n, 3 * k + 20)
  if not is_int(iters) or not k <= iters <= n:
    raise ValueError(f"iters must be an int in [k, P] = [{k}, {n}], got "
                     f"{iters!r}")
  product = _ggn_vp if ggn else _hvp
  matvec = lambda q: ravel_pytree(product(model, params, x, y, unravel(q)))[0]
  alpha, beta = lanczos(matvec, n, int(iters), key, flat.dtype)
  return ritz_values(alpha, beta)[:k]

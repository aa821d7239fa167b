r"""Brute-force references for :mod:`fnn.quantities`, by autodiff on the
batched forward (every layer's ``apply``), never fnn's hand backward.

``f`` is the network up to the GGN split: the logits ``z`` for the fused
(output, loss) pairs, the output ``sigma(z)`` otherwise; ``H_b`` is the
Hessian of the example's loss in ``f`` (``loss.fn_z`` or ``loss.fn``), as
:mod:`fnn.curvature` documents. ``y`` is validated (one-hot labels).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def _f(model, params, x):
  z = model._logits(params, x)
  return z if model.fused else model.output.fn(z)


def _loss_of_f(model):
  return model.loss.fn_z if model.fused else model.loss.fn


def _tapped(layers, params, x, path, e):
  r"""The batched forward with ``e`` added to the output of the layer at
  index ``path`` (its pre-activation; a ``Residual`` is ``x + block(x)``)."""
  for i, (layer, p) in enumerate(zip(layers, params)):
    if path[:1] != (i,):
      x = layer.apply(p, x)
    elif len(path) == 1:
      x = layer.apply(p, x) + e
    else:
      x = x + _tapped(layer.sublayers(), p, x, path[1:], e)
  return x


def _input_at(layers, params, x, path):
  for i, (layer, p) in enumerate(zip(layers, params)):
    if path[:1] == (i,):
      return x if len(path) == 1 else _input_at(layer.sublayers(), p, x,
                                                path[1:])
    x = layer.apply(p, x)
  raise ValueError(f"no layer at {path}")


def layer_reference(model, params, x, y, path, layer, p):
  r"""KFAC's references for the Dense or Conv1d at ``path`` (``y``
  validated): ``(a_cov, a_mean, delta_cov empirical, delta_cov exact)``,
  positions as extra samples (KFC) for a Conv1d."""
  layers, full = model.layers, model.expand(params)
  inp = _input_at(layers, full, x, path)
  z_shape = layer.apply(p, inp[:1]).shape[1:]
  c = z_shape[-1]
  n_w = p.w.size // c

  def patches(xi):  # (T, n_w): d z[t, o] / d w[..., o]
    jw = jax.jacfwd(lambda w: layer.apply(p._replace(w=w), xi[None])[0])(p.w)
    return jw.reshape(-1, c, n_w, c)[:, 0, :, 0]

  def f_of_e(xi, e):
    z = _tapped(layers, full, xi[None], path, e[None])[0]
    return z if model.fused else model.output.fn(z)

  zero = jnp.zeros(z_shape, x.dtype)
  loss = _loss_of_f(model)
  pt = jax.vmap(patches)(inp)  # (B, T, n_w)
  d = jax.vmap(lambda xi: jax.jacfwd(lambda e: f_of_e(xi, e))(zero))(x)
  d = d.reshape(d.shape[:2] + (-1, c))  # (B, n_f, T, c)
  emp = jax.vmap(lambda xi, yi: jax.grad(
      lambda e: loss(f_of_e(xi, e), yi))(zero))(x, y).reshape(x.shape[0], -1,
                                                              c)
  h = jax.vmap(jax.hessian(loss))(_f(model, params, x), y)
  b = x.shape[0]
  return (jnp.einsum("btp,btq->pq", pt, pt) / b, jnp.sum(pt, 1).mean(0),
          jnp.einsum("bto,bts->os", emp, emp) / b,
          jnp.einsum("bkto,bkl,blts->os", d, h, d) / b)


def ggn_blocks(model, params, x, y):
  r"""``[B, P, P]``: each example's GGN ``J_b^T H_b J_b`` over the
  flattened params (``y`` validated); their mean is the batch's GGN."""
  flat, unravel = ravel_pytree(params)
  h = jax.vmap(jax.hessian(_loss_of_f(model)))(_f(model, params, x), y)

  def one(xi, hi):
    j = jax.jacfwd(lambda t: _f(model, unravel(t), xi[None])[0])(flat)
    return j.T @ hi @ j

  return jax.vmap(one)(x, h)


def flat_per_example_grads(model, params, x, y):
  r"""``[B, P]``: ``jax.vmap(jax.grad)`` of each example's own loss."""
  one = lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])
  g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
  return jax.vmap(lambda t: ravel_pytree(t)[0])(g)

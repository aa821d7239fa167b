"""fnn.diag_ggn, fnn.ggn_trace, fnn.grad_gram and fnn.kfac_factors's
``kind="exact"``/``"mc"`` against brute force in float64.

The references are the definitions, by autodiff on the batched forward
(each layer's ``apply``), never fnn's hand backward:

* the GGN of the batch-mean loss ``G = (1/B) sum_b J_b^T H_b J_b`` with
  ``J_b = jax.jacfwd`` of ``f(x_b; theta)`` over the flattened params and
  ``H_b = jax.hessian`` of the loss in ``f`` (the split fnn documents: fused
  pairs at the logits with ``loss.fn_z``, other pairs at the output
  ``a = sigma(z)`` with ``loss.fn``);
* per-example gradients ``jax.vmap(jax.grad)`` of each example's loss;
* KFAC's factors per parameter layer from a forward "tap" that adds ``e``
  to the layer's output (its pre-activation ``z_l``): the layer's input
  patches are ``d z_l / d w`` (``jax.jacfwd`` of the layer's ``apply`` in
  ``w``), and the propagated deltas are ``D_b = d f / d z_l`` (``jax.jacfwd``
  in ``e``), so ``delta_cov = (1/B) sum_{b,t} D_bt^T H_b D_bt`` (``t`` the
  positions of a Conv1d; one for Dense).

Cases: every (output, loss) pair once (depths 1-4 cycled, batches 1, 3, 5
cycled, the hidden activations cycled so that each appears), and
test_layers' stacks (Conv1d with stride/padding variety, LayerNorm,
Residual, Flatten, Dense) at batches 5 and 1. Each case is one jitted
program (``layer_helpers.run_jit``) returning fnn's values and references.

Tolerance: ``max |got - want| <= RTOL max |want|`` per array (RTOL = 1e-10,
:mod:`layer_helpers`: both sides sum the same terms in other orders, ~1e-15
measured; a wrong term is O(1e-2) or more), so it does not grow with size.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats as sp_stats

import fnn
from fnn import _checks
from fnn.layers import base as layer_base
from helpers import HIDDEN, PAIRS, sizes_for
from layer_helpers import all_shapes, assert_close, problem, run_jit
from test_layers import MODELS as SEQ_MODELS

L = fnn.layers


# ---------------------------------------------------------------------------
# Brute-force references.

def _f(model, params, x):
  """The network up to the GGN split, batched: logits or outputs."""
  z = model._logits(params, x)
  return z if model.fused else model.output.fn(z)


def _loss_of_f(model):
  return model.loss.fn_z if model.fused else model.loss.fn


def _loss_hessians(model, f, y):
  """``[B, n_f, n_f]``: ``H_b`` of each example's loss in ``f``."""
  loss = _loss_of_f(model)
  return jax.vmap(jax.hessian(lambda v, t: loss(v, t)))(f, y)


def ggn_blocks(model, params, x, y):
  """``[B, P, P]``: each example's own GGN ``J_b^T H_b J_b``; their mean
  is the batch-mean loss's GGN (``y`` validated: one-hot labels)."""
  flat, unravel = ravel_pytree(params)

  def one(xi, hi):
    j = jax.jacfwd(lambda t: _f(model, unravel(t), xi[None])[0])(flat)
    return j.T @ hi @ j  # (P, P)

  return jax.vmap(one)(x, _loss_hessians(model, _f(model, params, x), y))


def flat_per_example_grads(model, params, x, y):
  """``[B, P]``: ``jax.vmap(jax.grad)`` of each example's own loss."""
  one = lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])
  g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
  return jax.vmap(lambda t: ravel_pytree(t)[0])(g)


def _tapped(layers, params, x, path, e):
  """The batched forward (each layer's ``apply``) with ``e`` added to the
  output of the layer at index ``path`` (a ``Residual`` is ``x +
  block(x)``)."""
  for i, (layer, p) in enumerate(zip(layers, params)):
    if path[:1] != (i,):
      x = layer.apply(p, x)
    elif len(path) == 1:
      x = layer.apply(p, x) + e
    else:
      assert isinstance(layer, L.Residual), layer
      x = x + _tapped(layer.sublayers(), p, x, path[1:], e)
  return x


def _input_at(layers, params, x, path):
  """The batched input of the layer at index ``path``."""
  for i, (layer, p) in enumerate(zip(layers, params)):
    if path[:1] == (i,):
      return x if len(path) == 1 else _input_at(layer.sublayers(), p, x,
                                                path[1:])
    x = layer.apply(p, x)
  raise AssertionError(path)


def kfac_reference(model, params, x, y, path, layer, p):
  """``(a_cov, a_mean, delta_cov)`` of the Dense or Conv1d at ``path`` by
  the definitions (KFLR's exact ``delta_cov``; KFC over positions)."""
  layers, full = model.layers, model.expand(params)
  inp = _input_at(layers, full, x, path)  # (B, *in_shape)
  z_shape = layer.apply(p, inp[:1]).shape[1:]
  c_out = z_shape[-1]

  def patches(xi):  # (T, k c_in): row t is d z[t, o] / d w[:, :, o]
    jw = jax.jacfwd(lambda w: layer.apply(p._replace(w=w), xi[None])[0])(p.w)
    return jw.reshape(-1, c_out, jw.size // (c_out * math.prod(z_shape)),
                      c_out)[:, 0, :, 0]

  def deltas(xi):  # (n_f, T, c_out): d f / d z_l
    fz = lambda e: (lambda z: z if model.fused else model.output.fn(z))(
        _tapped(layers, full, xi[None], path, e[None])[0])
    return jax.jacfwd(fz)(jnp.zeros(z_shape, x.dtype)).reshape(
        -1, math.prod(z_shape) // c_out, c_out)

  pt = jax.vmap(patches)(inp)  # (B, T, k c_in)
  d = jax.vmap(deltas)(x)  # (B, n_f, T, c_out)
  h = _loss_hessians(model, _f(model, params, x), y)  # (B, n_f, n_f)
  b = x.shape[0]
  return (jnp.einsum("btp,btq->pq", pt, pt) / b, jnp.sum(pt, 1).mean(0),
          jnp.einsum("bkto,bkl,blts->os", d, h, d) / b)


# ---------------------------------------------------------------------------
# Cases.

def _mlp_cases():
  """One MLP per (output, loss) pair: depth 1 + i mod 4, batch (1, 3, 5)
  cycled, hidden activations cycled over every built-in one."""
  hidden = itertools.cycle(HIDDEN)
  cases = []
  for i, (out, loss) in enumerate(PAIRS):
    depth, batch = 1 + i % 4, (1, 3, 5)[i % 3]
    acts = tuple(next(hidden) for _ in range(depth - 1))
    cases.append((out, loss, depth, batch, acts))
  return cases


MLP_CASES = _mlp_cases()


def test_cases_cover_the_registry():
  assert {a for *_, acts in MLP_CASES for a in acts} == set(HIDDEN)
  assert {(o, l) for o, l, *_ in MLP_CASES} == set(PAIRS)
  assert {d for _, _, d, _, _ in MLP_CASES} == {1, 2, 3, 4}
  assert {b for _, _, _, b, _ in MLP_CASES} == {1, 3, 5}


def _mlp(out, loss, depth, acts):
  return fnn.MLP(sizes_for(depth), activation=acts or "tanh", output=out,
                 loss=loss)


def _results(model, params, x, y, x2, y2, kfac_layers=None, full=True):
  """fnn's quantities and their references, as ``{name: (got, want)}``.

  Always the ones that depend on the loss Hessian's square root (diag_ggn,
  per-example traces, KFAC's exact factors for the parameter layers at
  indices ``kfac_layers``, default all); with ``full`` also the batch trace
  and the Gram matrices (which depend on the pair only through the ordinary
  gradient, checked for every pair by test_gradients).
  """
  x, yv = _checks.check_batch(model, params, x, y, batched=True)
  blocks = ggn_blocks(model, params, x, yv)  # (B, P, P)
  flat = lambda t: ravel_pytree(t)[0]
  out = dict(
      diag_ggn=(flat(fnn.diag_ggn(model, params, x, y)),
                jnp.diagonal(jnp.mean(blocks, 0))),
      ggn_trace_per_example=(
          fnn.ggn_trace(model, params, x, y, per_example=True),
          jnp.trace(blocks, axis1=1, axis2=2)))
  if full:
    g1 = flat_per_example_grads(model, params, x, y)
    g2 = flat_per_example_grads(model, params, x2, y2)
    out.update(
        ggn_trace=(fnn.ggn_trace(model, params, x, y),
                   jnp.trace(jnp.mean(blocks, 0))),
        grad_gram=(fnn.grad_gram(model, params, x, y), g1 @ g1.T),
        grad_gram_x2=(fnn.grad_gram(model, params, x, y, x2, y2),
                      g1 @ g2.T))
  kfac = fnn.kfac_factors(model, params, x, y, kind="exact")
  leaves = layer_base.kind_leaves(model.layers, model.expand(params))
  assert len(kfac) == len(leaves)
  for i, ((path, layer, _, p), k) in enumerate(zip(leaves, kfac)):
    if kfac_layers is not None and i not in kfac_layers:
      continue
    if k is None:  # LayerNorm: no Kronecker structure
      assert isinstance(layer, L.LayerNorm), layer
      continue
    a_cov, a_mean, d_cov = kfac_reference(model, params, x, yv, path, layer,
                                          p)
    name = ".".join(map(str, path))
    out[f"kfac_exact_a_cov_{name}"] = (k.a_cov, a_cov)
    out[f"kfac_exact_a_mean_{name}"] = (k.a_mean, a_mean)
    out[f"kfac_exact_delta_cov_{name}"] = (k.delta_cov, d_cov)
  return out


def _check_all(model, params, x, y, x2, y2, kfac_layers=None, full=True):
  out = run_jit(functools.partial(_results, model, kfac_layers=kfac_layers,
                                  full=full), params, x, y, x2, y2)
  failed = []
  for name, (got, want) in out.items():
    try:
      assert_close(got, want)
    except AssertionError as e:
      failed.append(f"{name}: {e}")
  assert not failed, "\n".join(failed)
  return out


@pytest.mark.parametrize(
    "i,out,loss,depth,batch,acts", [(i, *c) for i, c in enumerate(MLP_CASES)],
    ids=[f"{o}-{l}-d{d}-b{b}" for o, l, d, b, _ in MLP_CASES])
def test_mlp_equals_brute_force(i, out, loss, depth, batch, acts):
  model = _mlp(out, loss, depth, acts)
  params, x, y = problem(model, seed=depth, b=batch)
  _, x2, y2 = problem(model, seed=depth + 10, b=2)
  # KFAC's brute force (a jacfwd per layer) for the first layer only: its
  # deltas come through every layer above it (the last layer's are the loss
  # Hessian's square root itself); the stacks below check every layer.
  # Everything on the first four cases (depths 1-4, batches 1, 3, 5).
  out = _check_all(model, params, x, y, x2, y2, kfac_layers=(0,),
                   full=i < 4)
  assert "kfac_exact_delta_cov_0" in out and ("grad_gram" in out) == (i < 4)


# KFAC's brute force per model: every_layer's deepest conv (stride 3,
# padding 0, over channels) and the Dense inside its Residual (parameter
# layers 1 and 6); every layer of the other stack (its first conv has
# stride 2 and padding 1, the second sits in a Residual).
SEQ_CASES = [("every_layer", 5, (1, 6)), ("conv_channels_nonfused", 1, None)]


@pytest.mark.parametrize("name,batch,kfac_layers", SEQ_CASES,
                         ids=[f"{n}-b{b}" for n, b, _ in SEQ_CASES])
def test_sequential_equals_brute_force(name, batch, kfac_layers):
  model = SEQ_MODELS[name][0]()
  params, x, y = problem(model, b=batch)
  _, x2, y2 = problem(model, seed=7, b=3)
  out = _check_all(model, params, x, y, x2, y2, kfac_layers)
  assert sum(k.startswith("kfac_exact_delta_cov") for k in out) == (
      len(kfac_layers) if kfac_layers else 3)

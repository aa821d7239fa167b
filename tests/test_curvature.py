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
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

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

  Always two different contractions of the propagated square root of the
  loss Hessian (``S``, which is where the (output, loss) pair enters):
  diag_ggn and KFAC's exact factors (for the parameter layers at indices
  ``kfac_layers``, default all). With ``full`` also the traces (the norms
  contraction of the same factors) and the Gram matrices (which depend on
  the pair only through the ordinary gradient, which test_gradients checks
  for every pair).
  """
  x, yv = _checks.check_batch(model, params, x, y, batched=True)
  blocks = ggn_blocks(model, params, x, yv)  # (B, P, P)
  flat = lambda t: ravel_pytree(t)[0]
  out = dict(diag_ggn=(flat(fnn.diag_ggn(model, params, x, y)),
                       jnp.diagonal(jnp.mean(blocks, 0))))
  if full:
    g1 = flat_per_example_grads(model, params, x, y)
    g2 = flat_per_example_grads(model, params, x2, y2)
    out.update(
        ggn_trace_per_example=(
            fnn.ggn_trace(model, params, x, y, per_example=True),
            jnp.trace(blocks, axis1=1, axis2=2)),
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


# KFAC's brute force (a jacfwd per layer, most of a stack's compile time):
# every layer of conv_channels_nonfused (its first conv has stride 2 and
# padding 1, the second sits in a Residual), every_layer's conv over
# channels with stride 3 and padding 0 (parameter layer 1).
SEQ_CASES = [("every_layer", 5, (1,)), ("conv_channels_nonfused", 1, None)]


@pytest.mark.parametrize("name,batch,kfac_layers", SEQ_CASES,
                         ids=[f"{n}-b{b}" for n, b, _ in SEQ_CASES])
def test_sequential_equals_brute_force(name, batch, kfac_layers):
  model = SEQ_MODELS[name][0]()
  params, x, y = problem(model, b=batch)
  _, x2, y2 = problem(model, seed=7, b=3)
  out = _check_all(model, params, x, y, x2, y2, kfac_layers)
  assert sum(k.startswith("kfac_exact_delta_cov") for k in out) == (
      len(kfac_layers) if kfac_layers else 3)


# ---------------------------------------------------------------------------
# KFAC's exact factors for ONE dense layer.
#
# For z = a @ w + b, each example's GGN block of (w, b) is
# G_b = (u_b u_b^T) kron M_b with u_b = [a_b, 1] (the bias-augmented input)
# and M_b = sum_k d_bk d_bk^T = J_sigma^T H_b J_sigma (the propagated square
# root; J_sigma = I for the fused pairs). KFAC's exact factors are
# A = E[u u^T] = [[a_cov, a_mean], [a_mean^T, 1]] and D = E[M] = delta_cov,
# so kron(A, D) = E[u u^T] kron E[M] while G = E[u u^T kron M]: the two are
# EQUAL when M_b does not vary over the batch (B = 1, or an identity output
# with a squared error: M_b = I, or 2 I), and differ otherwise (the
# negative control: softmax + cross-entropy over 5 examples).

ONE_LAYER = [("sigmoid", "binary_cross_entropy", 1, True),
             ("softmax", "categorical_cross_entropy", 1, True),
             ("tanh", "squared_error", 1, True),
             ("identity", "squared_error", 5, True),
             ("identity", "half_squared_error", 5, True),
             ("softmax", "categorical_cross_entropy", 5, False)]


def _kron_aug(k):
  a_aug = jnp.block([[k.a_cov, k.a_mean[:, None]],
                     [k.a_mean[None, :], jnp.ones((1, 1), k.a_cov.dtype)]])
  return jnp.kron(a_aug, k.delta_cov)  # rows ordered as ravel((w, b))


def test_one_layer_kfac_exact_is_the_ggn_block():
  models = [fnn.MLP((5, 3), output=o, loss=l) for o, l, _, _ in ONE_LAYER]
  data = [problem(m, seed=i, b=b)
          for i, (m, (_, _, b, _)) in enumerate(zip(models, ONE_LAYER))]

  def compute(data):
    out = []
    for m, (params, x, y) in zip(models, data):
      _, yv = _checks.check_batch(m, params, x, y, batched=True)
      (k,) = fnn.kfac_factors(m, params, x, y, kind="exact")
      out.append((_kron_aug(k), jnp.mean(ggn_blocks(m, params, x, yv), 0)))
    return out

  for (o, l, b, equal), (got, want) in zip(ONE_LAYER, run_jit(compute, data)):
    got, want = np.asarray(got), np.asarray(want)
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    if equal:
      assert rel <= 1e-10, (o, l, b, rel)
    else:  # the statement is sharp: a per-example M_b breaks it
      assert rel > 1e-2, (o, l, b, rel)


# ---------------------------------------------------------------------------
# Monte-Carlo: diag_ggn(mc_samples=M) and kfac_factors(kind="mc") are
# unbiased, and the M-sample estimate converges at the 1/sqrt(M) rate.
#
# N_DRAWS independent single-sample estimates X_1..X_N (keys split from one
# key) give, per entry, the mean and the standard error s / sqrt(N). Under
# the null (E[X] = exact) z = (mean - exact) / (s / sqrt(N)) is ~N(0, 1)
# (central limit theorem; N = 400). One M_BIG-sample estimate is the mean of
# M_BIG single-sample draws, so (est - exact) / (s / sqrt(M_BIG)) is ~N(0, 1)
# too (s from the N draws: its relative error is ~1/sqrt(2N) = 4%, the 1.25
# factor covers it). Each test compares every entry at
# z_crit = Phi^-1(1 - ALPHA / (2 m)) over its m entries (Bonferroni), so a
# correct implementation fails with probability at most ALPHA = 1e-3 per
# test (3e-3 for the three below together); the keys are fixed, so the
# outcome is deterministic anyway. A biased estimator (a wrong 1/sqrt(M), a
# wrong sampling distribution) is off by O(1) relative, i.e. z ~ sqrt(N) =
# 20 standard errors per entry.

N_DRAWS, M_BIG, ALPHA = 400, 1000, 1e-3
# One model per sampling branch of fnn.curvature: a class from softmax, a
# Bernoulli label from sigmoid, and S eps (a Gaussian) for the other pairs.
MC_PAIRS = [("softmax", "categorical_cross_entropy"),
            ("sigmoid", "binary_cross_entropy"), ("tanh", "squared_error")]


def _mc_results(model, params, x, y, key):
  flat = lambda t: ravel_pytree(t)[0]
  keys = jax.random.split(key, N_DRAWS + 1)
  one = jax.vmap(lambda k: flat(fnn.diag_ggn(model, params, x, y,
                                             mc_samples=1, key=k)))
  kfac_mc = jax.vmap(lambda k: fnn.kfac_factors(model, params, x, y,
                                                kind="mc", key=k))
  return dict(
      exact=flat(fnn.diag_ggn(model, params, x, y)), draws=one(keys[1:]),
      big=flat(fnn.diag_ggn(model, params, x, y, mc_samples=M_BIG,
                            key=keys[0])),
      kfac_exact=fnn.kfac_factors(model, params, x, y, kind="exact"),
      kfac_draws=kfac_mc(keys[1:]))


def _z_scores(mean, exact, se):
  """``|mean - exact| / se``; entries with ``se == 0`` (a deterministic
  entry) must equal ``exact`` to rounding (else ``inf``)."""
  diff = np.abs(mean - exact)
  tiny = 1e-12 * np.max(np.abs(exact))
  return np.where(se > 0, diff / np.where(se > 0, se, 1),
                  np.where(diff <= tiny, 0.0, np.inf))


@pytest.mark.parametrize("out,loss", MC_PAIRS,
                         ids=[f"{o}-{l}" for o, l in MC_PAIRS])
def test_monte_carlo_is_unbiased_and_converges(out, loss):
  model = fnn.MLP((5, 7, 3), activation="tanh", output=out, loss=loss)
  params, x, y = problem(model, b=3)
  r = run_jit(functools.partial(_mc_results, model), params, x, y,
              jax.random.key(11))
  r = jax.tree.map(np.asarray, r)
  draws = r["draws"]  # (N, P)
  s = np.std(draws, axis=0, ddof=1)
  z_diag = _z_scores(draws.mean(0), r["exact"], s / math.sqrt(N_DRAWS))
  z_big = _z_scores(r["big"], r["exact"], 1.25 * s / math.sqrt(M_BIG))
  z_kfac = []
  for k_exact, k_draws in zip(r["kfac_exact"], r["kfac_draws"]):
    # a_cov and a_mean do not depend on the labels: equal in every draw.
    assert_close(k_draws.a_cov, np.broadcast_to(k_exact.a_cov,
                                                k_draws.a_cov.shape))
    d = k_draws.delta_cov  # (N, n_out, n_out)
    z_kfac.append(_z_scores(d.mean(0), k_exact.delta_cov,
                            np.std(d, 0, ddof=1) / math.sqrt(N_DRAWS)))
  zs = [z_diag, z_big] + z_kfac
  m = sum(z.size for z in zs)
  z_crit = statistics.NormalDist().inv_cdf(1 - ALPHA / (2 * m))  # ~4.9
  for name, z in zip(["diag_ggn mean of draws", f"diag_ggn M={M_BIG}"]
                     + [f"kfac delta_cov layer {i}" for i in range(2)], zs):
    assert np.max(z) <= z_crit, (name, np.max(z), z_crit)
  # The draws do vary (the test has power): most entries have s > 0.
  assert np.mean(s > 0) > 0.9


# ---------------------------------------------------------------------------
# No per-example weight gradient is formed.

@pytest.mark.parametrize("fn", [
    fnn.diag_ggn, fnn.grad_gram,
    functools.partial(fnn.ggn_trace, per_example=True)],
                         ids=["diag_ggn", "grad_gram", "ggn_trace_per_example"])
def test_no_per_example_weight_gradient_is_formed(fn):
  """Every array of the jaxpr, sub-jaxprs included: none ends in a
  layer's (n_in, n_out) behind a batch (or column) axis."""
  model = fnn.MLP((5, 7, 3), activation="relu")
  params, x, y = problem(model, b=6)
  blocks = {(5, 7), (7, 3)}
  bad = lambda shapes: [s for s in shapes if len(s) >= 3
                        and tuple(s[-2:]) in blocks]
  shapes = all_shapes(jax.make_jaxpr(fn, static_argnums=0)(
      model, params, x, y).jaxpr)
  assert not bad(shapes), bad(shapes)
  # ... whereas per_example_grads does form them (the check can fail).
  pe = all_shapes(jax.make_jaxpr(fnn.per_example_grads, static_argnums=0)(
      model, params, x, y).jaxpr)
  assert (6, 5, 7) in bad(pe)


# ---------------------------------------------------------------------------
# Bad input: ValueError with the reason, before anything is traced.

def _bad_input_cases():
  kw = dict(key=jax.random.key(0))
  return [
      (lambda m, p, x, y: fnn.diag_ggn(m, p, x, y, mc_samples=3),
       "mc_samples=3 draws labels from the model and needs a key"),
      (lambda m, p, x, y: fnn.diag_ggn(m, p, x, y, mc_samples=-1, **kw),
       "mc_samples must be an int >= 0, got -1"),
      (lambda m, p, x, y: fnn.diag_ggn(m, p, x, y, mc_samples=True, **kw),
       "mc_samples must be an int >= 0, got True"),
      (lambda m, p, x, y: fnn.diag_ggn(m, p, x, y, mc_samples=2.0, **kw),
       "mc_samples must be an int >= 0, got 2.0"),
      (lambda m, p, x, y: fnn.grad_gram(m, p, x, y, x2=x),
       "grad_gram takes x2 and y2 together"),
      (lambda m, p, x, y: fnn.grad_gram(m, p, x, y, y2=y),
       "grad_gram takes x2 and y2 together"),
      (lambda m, p, x, y: fnn.grad_gram(m, p, x, y, x[:, :4], y),
       "x has 4 features, model expects n_in=5"),
      (lambda m, p, x, y: fnn.ggn_trace(m, p, x, y, per_example="yes"),
       "per_example must be True or False, got 'yes'"),
      (lambda m, p, x, y: fnn.kfac_factors(m, p, x, y, kind="fisher"),
       r"kind must be one of \('empirical', 'mc', 'exact'\), got 'fisher'"),
      (lambda m, p, x, y: fnn.kfac_factors(m, p, x, y, kind="mc"),
       "kind='mc' draws one label per example from the model and needs a "
       "key"),
  ]


def test_bad_input_raises_value_error():
  model = fnn.MLP((5, 7, 3), activation="tanh")
  params, x, y = problem(model, b=3)
  for fn, message in _bad_input_cases():
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(functools.partial(fn, model), params, x, y)
  # NumPy integers are ints (as for the layers' sizes).
  out = jax.eval_shape(lambda p, x, y, k: fnn.diag_ggn(
      model, p, x, y, mc_samples=np.int64(2), key=k), params, x, y,
                       jax.random.key(0))
  assert jax.tree.structure(out) == jax.tree.structure(params)

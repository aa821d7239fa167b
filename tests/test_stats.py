"""Gradient statistics, KFAC factors and DP-SGD against their definitions."""
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import _random
from helpers import problem, reference_per_example
from test_gradients import _all_shapes

HERE = os.path.dirname(os.path.abspath(__file__))

RTOL, ATOL = 1e-10, 1e-13  # float64; see test_gradients.py

MODELS = [
    fnn.MLP((5, 7, 3), activation="tanh"),
    fnn.MLP((5, 7, 3, 9, 3), activation="relu", output="sigmoid",
            loss="binary_cross_entropy"),
    fnn.MLP((5, 4), output="identity", loss="squared_error"),
    fnn.MLP((5, 7, 9, 3), activation=("gelu", "elu"), output="tanh",
            loss="half_squared_error"),
]
IDS = ["tanh-softmax", "relu-sigmoid-d4", "linear", "gelu-elu-tanh"]


# Compiled once per model: eager dispatch of these small graphs costs more.
_stats = jax.jit(fnn.grad_stats, static_argnums=0)
_dp = jax.jit(fnn.dp_grad, static_argnums=0,
              static_argnames=("clip", "noise", "denominator"))
_ref = jax.jit(reference_per_example, static_argnums=0)
_kfac = jax.jit(fnn.kfac_factors, static_argnums=0)
_jax_grad = jax.jit(lambda m, p, x, y: jax.grad(m.mean_loss)(p, x, y),
                    static_argnums=0)
_mean_loss = jax.jit(lambda m, p, x, y: m.mean_loss(p, x, y),
                     static_argnums=0)


def _flat_np(tree):
  """[B, P] in NumPy: each example's gradient as one vector."""
  leaves = jax.tree.leaves(tree)
  return np.concatenate([l.reshape(l.shape[0], -1) for l in leaves], axis=1)


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_grad_stats_match_vmap_grad(model):
  params, x, y = problem(model, batch=9)
  s = _stats(model, params, x, y)
  # The definitions, in NumPy float64 from the materialized vmap(jax.grad)
  # gradients (jnp op by op would compile each small op: seconds a model).
  g = jax.tree.map(np.asarray, _ref(model, params, x, y))  # leaves [B, ...]
  b = x.shape[0]
  mean = jax.tree.map(lambda l: l.mean(0), g)
  second = jax.tree.map(lambda l: (l**2).mean(0), g)
  chex.assert_trees_all_close(s.mean, mean, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(s.mean, _jax_grad(model, params, x, y),
                              rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(s.second_moment, second, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(
      s.variance, jax.tree.map(lambda l: l.var(0), g), rtol=1e-8,
      atol=ATOL)  # var = E[g^2] - E[g]^2 cancels: ~1e-8 relative at worst
  flat = _flat_np(g)  # (B, P)
  np.testing.assert_allclose(s.norms, np.linalg.norm(flat, axis=1),
                             rtol=RTOL)
  layer = np.stack([np.linalg.norm(_flat_np((lay,)), axis=1) for lay in g],
                   axis=1)
  np.testing.assert_allclose(s.layer_norms, layer, rtol=RTOL, atol=ATOL)
  # McCandlish's estimators from the definitions: the sample covariance's
  # trace and the unbiased |G|^2.
  cov = np.cov(flat, rowvar=False)  # unbiased, (P, P)
  g_bar = flat.mean(0)
  np.testing.assert_allclose(s.trace_sigma, np.trace(cov), rtol=1e-9)
  np.testing.assert_allclose(s.grad_sq_norm, g_bar @ g_bar - np.trace(cov) / b,
                             rtol=1e-9)
  np.testing.assert_allclose(s.noise_scale, s.trace_sigma / s.grad_sq_norm,
                             rtol=1e-12)
  np.testing.assert_allclose(s.loss, _mean_loss(model, params, x, y),
                             rtol=RTOL)


def test_grad_stats_needs_two_examples():
  model = MODELS[0]
  params, x, y = problem(model, batch=1)
  with pytest.raises(ValueError, match="at least 2 examples, got 1"):
    fnn.grad_stats(model, params, x, y)


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_kfac_factors_match_definitions(model):
  params, x, y = problem(model, batch=9)
  got = _kfac(model, params, x, y)
  # a_prev per layer from a plain batched forward (NumPy float64, with each
  # activation's own function); delta = dL/db per example.
  a, a_prevs = np.asarray(x), []
  for layer, act in zip(params, model.activations):
    a_prevs.append(a)
    a = np.asarray(act.fn(a @ np.asarray(layer.w) + np.asarray(layer.b)))
  g = jax.tree.map(np.asarray, _ref(model, params, x, y))
  for f, a_prev, layer in zip(got, a_prevs, g):
    np.testing.assert_allclose(f.a_cov, a_prev.T @ a_prev / 9, rtol=RTOL,
                               atol=ATOL)
    np.testing.assert_allclose(f.delta_cov, layer.b.T @ layer.b / 9,
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(f.a_mean, a_prev.mean(0), rtol=RTOL)
    # kron(a_cov, delta_cov) is exact for one example: the w block of g g^T.
  one = _kfac(model, params, x[:1], y[:1])
  gw = g[0].w[0].reshape(-1)  # (n_in * n_out,), row-major: a (x) delta
  np.testing.assert_allclose(np.kron(one[0].a_cov, one[0].delta_cov),
                             np.outer(gw, gw), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", MODELS[:2], ids=IDS[:2])
def test_dp_grad_clips_like_materialized_gradients(model):
  params, x, y = problem(model, batch=12)
  # The reference in NumPy float64 from materialized per-example gradients.
  g = jax.tree.map(np.asarray, _ref(model, params, x, y))
  norms = np.linalg.norm(_flat_np(g), axis=1)
  clip = float(np.median(norms))  # about half the examples are clipped
  out = _dp(model, params, x, y, clip=clip, noise=0.0,
            key=jax.random.key(0))
  scale = np.minimum(1.0, clip / norms)
  clipped = jax.tree.map(lambda l: l * scale.reshape((-1,) + (1,) *
                                                     (l.ndim - 1)), g)
  # Clipping bounds every per-example norm by C ...
  assert np.all(np.linalg.norm(_flat_np(clipped), axis=1)
                <= clip * (1 + 1e-12))
  # ... and dp_grad's (noise-free) result is their mean.
  chex.assert_trees_all_close(out.grads, jax.tree.map(
      lambda l: l.mean(0), clipped), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(out.norms, norms, rtol=RTOL)
  assert float(out.clipped) == pytest.approx(float(np.mean(norms > clip)))
  # Example weights: a zero-weight row contributes nothing.
  w = jnp.ones(12).at[3].set(0.0)
  part = _dp(model, params, x, y, clip=clip, noise=0.0,
             key=jax.random.key(0), weights=w, denominator=11)
  keep = np.arange(12) != 3
  chex.assert_trees_all_close(part.grads, jax.tree.map(
      lambda l: l[keep].mean(0), clipped), rtol=RTOL, atol=ATOL)
  # A clip above every norm gives the plain mean gradient.
  big = _dp(model, params, x, y, clip=1e6, noise=0.0,
            key=jax.random.key(0))
  chex.assert_trees_all_close(big.grads, _jax_grad(model, params, x, y),
                              rtol=RTOL, atol=ATOL)


def test_dp_noise_has_the_stated_standard_deviation():
  model = fnn.MLP((30, 40, 10), activation="tanh")  # 1,650 coordinates
  params, x, y = problem(model, batch=8)
  clip, sigma, b = 0.5, 1.3, 8
  args = dict(clip=clip, key=jax.random.key(42))
  noisy = _dp(model, params, x, y, noise=sigma, **args)
  clean = _dp(model, params, x, y, noise=0.0, **args)
  z = np.concatenate([np.ravel(a - c) for a, c in zip(
      jax.tree.leaves(noisy.grads), jax.tree.leaves(clean.grads))]) * b
  # z ~ N(0, (sigma C)^2) per coordinate. With n = 1,650 draws the sample
  # std has relative standard error 1/sqrt(2n) = 1.7%: 7% is ~4 sigma; the
  # mean's standard error is sigma C / sqrt(n) = 0.016: 0.07 is ~4 sigma.
  assert z.size == 1650
  assert abs(np.std(z) / (sigma * clip) - 1) < 0.07
  assert abs(np.mean(z)) < 0.07
  with pytest.raises(ValueError, match="clip must be > 0"):
    fnn.dp_grad(model, params, x, y, clip=0.0, noise=1.0, key=args["key"])


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_dp_epsilon_matches_dp_accounting(accountant):
  from dp_accounting import dp_event
  from dp_accounting.pld import pld_privacy_accountant
  from dp_accounting.rdp import rdp_privacy_accountant
  q, sigma, steps, delta = 100 / 4000, 1.1, 8000, 1e-5
  acc = (rdp_privacy_accountant.RdpAccountant() if accountant == "rdp"
         else pld_privacy_accountant.PLDAccountant())
  acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(
      sigma)), steps)
  want = acc.get_epsilon(delta)
  got = fnn.dp_epsilon(noise=sigma, sample_rate=q, steps=steps, delta=delta,
                       accountant=accountant)
  assert got == pytest.approx(want, rel=1e-12) and 0.1 < got < 20
  # More noise, less epsilon; more steps, more epsilon.
  assert fnn.dp_epsilon(noise=2 * sigma, sample_rate=q, steps=steps,
                        delta=delta, accountant=accountant) < got
  with pytest.raises(ValueError, match="sample rate must be in"):
    fnn.dp_epsilon(noise=1.0, sample_rate=0.0, steps=1, delta=1e-5)


@pytest.mark.parametrize("name", ["grad_stats", "kfac_factors", "dp_grad"])
def test_no_per_example_weight_gradient_is_formed(name):
  model = fnn.MLP((5, 7, 3), activation="relu")
  params, x, y = problem(model)
  fn = getattr(fnn, name)
  if name == "dp_grad":
    fn = lambda m, p, xx, yy: fnn.dp_grad(m, p, xx, yy, clip=1.0, noise=1.0,
                                          key=jax.random.key(0))
  shapes = _all_shapes(jax.make_jaxpr(fn, static_argnums=0)(
      model, params, x, y).jaxpr)
  assert (6, 5, 7) not in shapes and (6, 7, 3) not in shapes
  assert all(len(s) <= 2 for s in shapes), [s for s in shapes if len(s) > 2]


_normal_jit = jax.jit(_random.normal, static_argnums=1)


@pytest.mark.parametrize("n", [1, 2, 7, 1001, 40_000])
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey],
                         ids=["typed", "raw"])
def test_fast_normal_equals_jax_random_normal(n, make_key):
  # DP-SGD's noise comes from fnn._random.normal: the same numbers as
  # jax.random.normal, bit for bit, eager and under jit.
  for seed in (0, 1, 12345):
    key = make_key(seed)
    want = np.asarray(jax.random.normal(key, (n,), jnp.float32))
    assert _random._fast_normal_applies(key, n, jnp.float32)
    np.testing.assert_array_equal(np.asarray(_random.normal(key, n)), want)
    np.testing.assert_array_equal(np.asarray(_normal_jit(key, n)), want)


@pytest.mark.parametrize("key, dtype", [
    (jax.random.key(3, impl="rbg"), jnp.float32),
    (jax.random.key(3), jnp.float64),
    (jax.random.key(3), jnp.bfloat16)], ids=["rbg", "float64", "bfloat16"])
def test_fast_normal_falls_back_to_jax(key, dtype):
  assert not _random._fast_normal_applies(key, 100, dtype)
  np.testing.assert_array_equal(
      np.asarray(_random.normal(key, 100, dtype), np.float64),
      np.asarray(jax.random.normal(key, (100,), dtype), np.float64))


@pytest.mark.parametrize("key", [jax.random.key(5), jax.random.key(5, impl="rbg")],
                         ids=["threefry", "rbg"])
def test_normal_parts_are_one_draw_split(key, request):
  default = os.environ.get("FNN_TEST_DEFAULT_XLA_FLAGS")
  if default is not None:  # two programs agree bit for bit under XLA's
    # default options (tests/conftest.py): check there, in a subprocess
    impl = "rbg" if "rbg" in request.node.name else "threefry2x32"
    code = (f"import sys; sys.path.insert(0, {HERE!r}); "
            f"import jax; from test_stats import _parts_check; "
            f"_parts_check(jax.random.key(5, impl={impl!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=dict(os.environ, XLA_FLAGS=default),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return
  _parts_check(key)


def _parts_check(key):
  sizes = [3, 1, 400, 7, 1]
  whole = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))
  got = jax.jit(lambda k: _random.normal_parts(k, sizes))(key)
  np.testing.assert_array_equal(np.concatenate([np.asarray(g) for g in got]),
                                whole)

"""Finite gradients give finite norms, statistics and DP-SGD sums (float32).

The case: one example's input is ``-2e19`` per feature, so ``|x|^2 = 1.2e39``
overflows float32 (max ``3.4e38``), while every entry of its gradient
``outer(x, delta)`` is finite. With ReLU its hidden units are dead
(``delta^1 = 0``): the old ``|delta|^2 (|x|^2 + 1)`` was ``0 * inf = NaN``.
With leaky ReLU ``delta^1`` is small and the old norm was ``inf`` where the
true norm is ``1e18``.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import stats
from helpers import reference_per_example

ACTS = ["relu", "leaky_relu"]
# float32 norms from the factors: a handful of roundings (max-abs scaling,
# sqrt, hypot, the product) of ~6e-8 each against NumPy float64 of the same
# float32 gradients: 1e-5 is ~100x that, far below the NaN/inf it replaces.
RTOL32 = 1e-5
HUGE = 2e19  # HUGE**2 = 4e38 > float32 max

_stats = jax.jit(fnn.grad_stats, static_argnums=0)
_norms = jax.jit(fnn.per_example_grad_norms, static_argnums=0)
_dp = jax.jit(fnn.dp_grad, static_argnums=0,
              static_argnames=("clip", "noise", "denominator"))
_dp_ref = jax.jit(stats.dp_grad_autodiff, static_argnums=0,
                  static_argnames=("clip", "noise", "denominator"))
_ref = jax.jit(reference_per_example, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _old_norms(model, params, x, y):
  """The old squared norms: ``sum_l |delta|^2 (|a_prev|^2 + 1)``."""
  _, fs = stats.factors(model, params, x, y)
  return sum(jnp.sum(f.delta**2, -1) * (jnp.sum(f.a_prev**2, -1) + 1)
             for f in fs)


def _overflow_case(act):
  """float32 ``(model, params, x, y)``; example 1 is ``x = -2e19 (1, 1, 1)``.

  ``w^1 >= 0`` and ``b^1 = 0``, so that example's ``z^1`` is negative in
  every unit (``-6e19 w``): ReLU gives ``delta^1 = 0``, leaky ReLU
  ``delta^1 = 0.01 dL/da``.
  """
  model = fnn.MLP((3, 4, 2), activation=act)
  p = model.init(jax.random.key(0), jnp.float32)
  params = (fnn.Dense(jnp.abs(p[0].w), jnp.zeros(4, jnp.float32)), p[1])
  x = jax.random.normal(jax.random.key(1), (4, 3), jnp.float32)
  x = x.at[1].set(-HUGE)
  return model, params, x, jnp.array([0, 1, 1, 0])


def _materialized(model, params, x, y):
  """Per-example gradients (float32, all finite) and their norms (float64)."""
  g = _ref(model, params, x, y)
  chex.assert_tree_all_finite(g)
  b = x.shape[0]
  flat = lambda tree: np.concatenate(
      [np.asarray(l, np.float64).reshape(b, -1) for l in jax.tree.leaves(tree)],
      axis=1)
  layer = np.stack([np.linalg.norm(flat((lay,)), axis=1) for lay in g], 1)
  return g, np.linalg.norm(flat(g), axis=1), layer


@pytest.mark.parametrize("act", ACTS)
def test_old_formula_was_not_finite(act):
  # The case these tests are about: |delta|^2 (|a_prev|^2 + 1) overflows.
  model, params, x, y = _overflow_case(act)
  old = _old_norms(model, params, x, y)
  assert not np.isfinite(old[1]) and np.all(np.isfinite(np.delete(old, 1)))


@pytest.mark.parametrize("act", ACTS)
def test_per_example_grad_norms_finite_where_gradients_are(act):
  model, params, x, y = _overflow_case(act)
  _, norms, _ = _materialized(model, params, x, y)
  got = _norms(model, params, x, y)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, norms, rtol=RTOL32)
  if act == "leaky_relu":
    assert 1e17 < got[1] < 1e19  # |delta^1| |x|, not inf


@pytest.mark.parametrize("act", ACTS)
def test_grad_stats_finite_where_gradients_are(act):
  model, params, x, y = _overflow_case(act)
  g, norms, layer = _materialized(model, params, x, y)
  s = _stats(model, params, x, y)
  chex.assert_tree_all_finite(s)
  np.testing.assert_allclose(s.norms, norms, rtol=RTOL32)
  np.testing.assert_allclose(s.layer_norms, layer, rtol=RTOL32)
  # The second moment scales before squaring: no inf * 0 where delta^1 = 0.
  g64 = jax.tree.map(lambda l: np.asarray(l, np.float64), g)
  chex.assert_trees_all_close(
      jax.tree.map(lambda l: np.asarray(l, np.float64), s.second_moment),
      jax.tree.map(lambda l: (l**2).mean(0), g64), rtol=RTOL32, atol=0)


def _with_nan_example(act):
  """The overflow case plus a fifth example whose gradient is NaN."""
  model, params, x, y = _overflow_case(act)
  x = jnp.concatenate([x, jnp.array([[jnp.nan, 0.0, 1.0]], jnp.float32)])
  return model, params, x, jnp.concatenate([y, jnp.array([1])])


# The autodiff reference's handling of the same batch is also checked against
# the hand code (nonfinite, clipped, grads) by the test after this one; its
# own variants (four more dp_grad compiles, ~4 s each) run with -m slow.
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fn", [
    _dp, pytest.param(_dp_ref, marks=pytest.mark.slow)],
                         ids=["hand", "autodiff"])
def test_dp_grad_drops_and_counts_nonfinite_examples(act, fn):
  model, params, x, y = _with_nan_example(act)
  g, norms, _ = _materialized(model, params, x[:4], y[:4])
  clip = 1.0  # clips examples 1 (norm 1e18 with leaky ReLU) and 2 (1.3)
  kw = dict(clip=clip, noise=0.0, key=jax.random.key(0), denominator=4)
  out = fn(model, params, x, y, **kw)
  assert not np.isfinite(out.norms[4])
  chex.assert_tree_all_finite(out.grads)
  assert float(out.nonfinite) == 1.0
  # The result is DP-SGD on the four good examples: their clipped mean, in
  # NumPy float64 from the materialized float32 gradients ...
  scale = np.minimum(1.0, clip / norms)
  want = jax.tree.map(lambda l: np.tensordot(
      scale, np.asarray(l, np.float64), axes=1) / 4, g)
  chex.assert_trees_all_close(
      jax.tree.map(lambda l: np.asarray(l, np.float64), out.grads), want,
      rtol=RTOL32, atol=1e-7)  # atol: float32 rounding of O(0.1) entries
  # ... and what dp_grad gives without the bad example, to rounding.
  good = fn(model, params, x[:4], y[:4], **kw)
  chex.assert_trees_all_close(out.grads, good.grads, rtol=1e-6, atol=1e-8)
  assert float(good.nonfinite) == 0.0
  assert float(out.clipped) == pytest.approx(np.sum(norms > clip) / 5)
  # A weight-0 row is not counted (padding of a Poisson batch), and its NaN
  # loss does not reach the mean loss.
  w = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0], jnp.float32)
  padded = fn(model, params, x, y, weights=w, **kw)
  assert float(padded.nonfinite) == 0.0 and np.isfinite(padded.loss)
  chex.assert_trees_all_close(padded.grads, out.grads, rtol=0, atol=0)
  # With noise the sum stays finite too: the test below (noise 0.5, the same
  # batch, both implementations; one compile each instead of one more here).


def test_dp_grad_hand_and_autodiff_agree_on_the_overflow_case():
  model, params, x, y = _with_nan_example("leaky_relu")
  kw = dict(clip=1.0, noise=0.5, key=jax.random.key(3))
  hand, auto = _dp(model, params, x, y, **kw), _dp_ref(model, params, x, y, **kw)
  chex.assert_tree_all_finite((hand.grads, auto.grads))  # noise, a NaN example
  chex.assert_trees_all_close(hand.grads, auto.grads, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(hand.norms[:4], auto.norms[:4], rtol=RTOL32)
  assert (hand.nonfinite, hand.clipped) == (auto.nonfinite, auto.clipped)


def test_dpgrad_keeps_its_first_fields():
  assert fnn.DPGrad._fields == ("grads", "loss", "norms", "clipped",
                                "nonfinite")


# 64 equal examples in float32: the covariance is 0 and E[g^2] - E[g]^2
# cancels to rounding noise; with this model it is negative in 105 of 195
# entries (and the unclamped trace is -2.9e-6) on the CPU.
IDENTICAL = fnn.MLP((8, 16, 3), activation="tanh")


def _identical(model, b=64):
  params = model.init(jax.random.key(0), jnp.float32)
  x = jnp.tile(jax.random.normal(jax.random.key(1), (1, model.sizes[0]),
                                 jnp.float32), (b, 1))
  return params, x, jnp.ones(b, jnp.int32)


def test_grad_stats_variance_never_negative_for_identical_examples():
  params, x, y = _identical(IDENTICAL)
  s = _stats(IDENTICAL, params, x, y)
  # The case: without the clamps these are negative.
  raw = jax.tree.map(lambda s2, m: s2 - m * m, s.second_moment, s.mean)
  assert any(np.any(np.asarray(l) < 0) for l in jax.tree.leaves(raw)), (
      "no cancellation to test on this backend")
  # The unclamped trace, mean |g_i|^2 - |mean g|^2, is rounding noise of
  # either sign (negative with the newest JAX on the CPU, positive with JAX
  # 0.9.1): the clamps below must hold whichever it is.
  for v in jax.tree.leaves(s.variance):
    assert np.all(np.asarray(v) >= 0)
  assert float(s.trace_sigma) >= 0 and float(s.noise_scale) >= 0
  # grad_sq_norm is |g|^2 here (unbiased, not clamped); the true trace is 0,
  # float32 leaves rounding: 1e-5 |g|^2 is ~100 ulps of |g|^2.
  g_sq = float(s.norms[0]) ** 2
  np.testing.assert_allclose(s.grad_sq_norm, g_sq, rtol=1e-5)
  assert float(s.trace_sigma) <= 1e-5 * g_sq
  assert float(s.noise_scale) <= 1e-5


def test_batch_noise_stats_never_negative_for_identical_examples():
  params, x, y = _identical(IDENTICAL)
  got = jax.jit(stats.batch_noise_stats, static_argnums=0)(
      IDENTICAL, params, jnp.stack([x, x]), jnp.stack([y, y]))
  assert float(got["trace_sigma"]) >= 0 and float(got["noise_scale"]) >= 0
  assert np.all(np.asarray(got["variance_per_layer"]) >= 0)
  assert float(got["noise_scale"]) <= 1e-5  # see the test above

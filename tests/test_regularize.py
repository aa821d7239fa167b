"""L2 weight decay and dropout: hand-derived gradients against jax.grad."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from helpers import HIDDEN, problem

RTOL, ATOL = 1e-10, 1e-12  # float64; see test_gradients.py


def test_l2_grad_matches_jax_grad_and_skips_biases():
  model = fnn.MLP((5, 7, 3), activation="tanh")
  params, x, y = problem(model)
  lam = 0.3
  ref = jax.grad(lambda p: model.mean_loss(p, x, y) + fnn.l2_penalty(p, lam))(
      params)
  got = jax.tree.map(jnp.add, fnn.grad(model, params, x, y),
                     fnn.l2_grad(params, lam))
  chex.assert_trees_all_close(got, ref, rtol=RTOL, atol=ATOL)
  assert all(not np.any(layer.b) for layer in fnn.l2_grad(params, lam))


@pytest.mark.parametrize("act", HIDDEN)
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_dropout_grad_matches_jax_grad(act, depth):
  sizes = (5, 7, 3, 9, 3)[:depth] + (3,)
  model = fnn.MLP(sizes, activation=act)
  params, x, y = problem(model, seed=depth)
  masks = fnn.dropout_masks(model, jax.random.key(7), 6, 0.4, jnp.float64)
  assert masks is not None and len(masks) == depth - 1
  ref_value, ref = jax.value_and_grad(model.mean_loss)(params, x, y, masks)
  value, got = fnn.value_and_grad(model, params, x, y, masks=masks)
  chex.assert_trees_all_close((value, got), (ref_value, ref), rtol=RTOL,
                              atol=ATOL)
  # The mask matters: without it the gradient differs.
  plain = fnn.grad(model, params, x, y)
  assert not np.allclose(plain[0].w, got[0].w)


def test_dropout_masks_statistics_and_errors():
  model = fnn.MLP((5, 400, 300, 3))
  masks = fnn.dropout_masks(model, jax.random.key(0), 50, 0.25)
  keep = np.concatenate([np.asarray(m).ravel() for m in masks])
  assert set(np.unique(keep)) == {0.0, np.float32(1 / 0.75)}
  # 35,000 Bernoulli(0.75) draws: std of the mean 0.0023, so 0.01 is ~4 sigma.
  assert abs(np.mean(keep > 0) - 0.75) < 0.01
  assert fnn.dropout_masks(model, jax.random.key(0), 50, 0.0) is None
  assert fnn.dropout_masks(fnn.MLP((5, 3)), jax.random.key(0), 50, 0.5) is None
  with pytest.raises(ValueError, match=r"in \[0, 1\), got 1.0"):
    fnn.dropout_masks(model, jax.random.key(0), 50, 1.0)
  params, x, y = problem(model)
  with pytest.raises(ValueError, match=r"masks\[0\] must have shape \(6, 400\)"):
    fnn.grad(model, params, x, y, masks=masks)


def test_unrolled_threefry_is_bit_identical_to_jax():
  from fnn import _random
  import jax.extend.random as jrandom
  for seed in range(3):
    kk, kc = jax.random.split(jax.random.key(seed))
    key_words = jax.random.bits(kk, (2,), jnp.uint32)
    counters = jax.random.bits(kc, (2, 257), jnp.uint32)  # odd length
    ref = jrandom.threefry_2x32(key_words, counters.reshape(-1))
    got = jnp.concatenate(_random.threefry2x32(key_words, *counters))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_uniform16_draws_are_uniform_and_key_dependent():
  from fnn import _random
  n = 64_001  # not a multiple of 4: the tail of the last block is cut
  u = np.asarray(_random.uniform16(jax.random.key(3), n))
  assert u.shape == (n,) and u.min() >= 0 and u.max() < 2**16
  # Each of the four 16-bit lanes of a block, and their union, is uniform:
  # 16 equal bins, chi-square with 15 dof; 50 is beyond its 0.9999 quantile.
  lanes = u[:64_000].reshape(-1, 4)
  for lane in (*lanes.T, u):
    counts = np.bincount(lane >> 12, minlength=16)
    expected = len(lane) / 16
    assert np.sum((counts - expected) ** 2 / expected) < 50
  other = np.asarray(_random.uniform16(jax.random.key(4), n))
  assert np.mean(u == other) < 1e-3  # independent streams: ~1.5e-5 expected
  # A prefix does not depend on the length (padded batches keep their masks).
  np.testing.assert_array_equal(
      np.asarray(_random.uniform16(jax.random.key(3), 1001)), u[:1001])


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.9])
def test_dropout_keep_rate(rate):
  model = fnn.MLP((3, 500, 300, 2))
  masks = fnn.dropout_masks(model, jax.random.key(11), 200, rate)
  kept = np.concatenate([np.asarray(m).ravel() > 0 for m in masks])
  # 160,000 draws: std of the mean <= 0.00125; 0.006 is ~5 sigma.
  assert abs(kept.mean() - (1 - rate)) < 0.006
  # Layers use disjoint parts of the stream: not the same pattern.
  assert not np.array_equal(np.asarray(masks[0])[:, :300],
                            np.asarray(masks[1]))


def _nearest(value, dtype):
  """The ``dtype`` number nearest ``value`` in [1, 16), by enumeration."""
  lo, hi = {jnp.bfloat16: (0x3F80, 0x4180), jnp.float16: (0x3C00, 0x4C00)}[
      dtype]
  grid = np.arange(lo, hi, dtype=np.uint16).view(dtype)
  return grid[np.argmin(np.abs(grid.astype(np.float64) - value))]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16],
                         ids=["bfloat16", "float16"])
@pytest.mark.parametrize("rate", [0.1, 0.15, 0.3, 0.7])
def test_low_precision_dropout_scale_is_rounded_once(dtype, rate):
  # rate 0.15 in bfloat16: dividing in bfloat16 rounds 1 - rate first and
  # gave 1.171875; the nearest bfloat16 to 1 / 0.85 is 1.1796875.
  model = fnn.MLP((3, 40, 30, 2))
  key = jax.random.key(5)
  low = fnn.dropout_masks(model, key, 8, rate, dtype)
  wide = fnn.dropout_masks(model, key, 8, rate, jnp.float32)
  for m, w in zip(low, wide):
    assert m.dtype == dtype
    np.testing.assert_array_equal(np.asarray(m), np.asarray(w.astype(dtype)))
    values = set(np.unique(np.asarray(m, np.float64)).tolist())
    assert values == {0.0, float(_nearest(1 / (1 - rate), dtype))}
  # float32 masks are what they were: float32(1) / float32(1 - rate).
  assert set(np.unique(np.asarray(wide[0])).tolist()) == {
      0.0, float(np.float32(1) / np.float32(1 - rate))}

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

"""Each loss's hand-derived derivative against central finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import activations, losses

LOSSES = list(fnn.LOSSES.values())
H = 1e-6  # central step in float64: truncation O(h^2) ~ 1e-12, rounding
# O(eps/h) ~ 1e-10 on O(1) losses, so agreement to 1e-7 relative is tight.


def _central_diff(f, a):
  a = np.asarray(a, np.float64)
  out = np.zeros_like(a)
  for idx in np.ndindex(a.shape):
    up, down = a.copy(), a.copy()
    up[idx] += H
    down[idx] -= H
    out[idx] = (float(f(up)) - float(f(down))) / (2 * H)
  return out


def _point(loss, key):
  ka, ky = jax.random.split(key)
  a = jax.random.uniform(ka, (5,), jnp.float64, 0.05, 0.95)  # inside (0, 1)
  if loss.name == "categorical_cross_entropy":
    a = a / jnp.sum(a)
    y = jax.nn.one_hot(2, 5, dtype=jnp.float64)
  elif loss.targets == "probability":
    y = jax.random.uniform(ky, (5,), jnp.float64)
  else:
    y = jax.random.normal(ky, (5,), jnp.float64)
  return a, y


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grad_matches_central_differences(loss, seed):
  a, y = _point(loss, jax.random.key(seed))
  numeric = _central_diff(lambda v: loss.fn(jnp.asarray(v), y), a)
  np.testing.assert_allclose(loss.grad(a, y), numeric, rtol=1e-7, atol=1e-8)


CANONICAL = [l for l in LOSSES if l.canonical is not None]


@pytest.mark.parametrize("loss", CANONICAL, ids=lambda l: l.name)
def test_fused_delta_is_the_chain_rule(loss):
  """Seed 000's simplification: dL/da * da/dz collapses to a - y."""
  act = fnn.ACTIVATIONS[loss.canonical]
  z = jax.random.normal(jax.random.key(4), (5,), jnp.float64) * 2
  a, y = act.fn(z), _point(loss, jax.random.key(5))[1]
  chained = act.backward(z, a, loss.grad(a, y))
  np.testing.assert_allclose(loss.delta_z(z, a, y), chained, rtol=1e-12,
                             atol=1e-14)
  np.testing.assert_allclose(loss.fn_z(z, y), loss.fn(a, y), rtol=1e-12)
  numeric = _central_diff(lambda v: loss.fn_z(jnp.asarray(v), y), z)
  np.testing.assert_allclose(loss.delta_z(z, a, y), numeric, rtol=1e-7,
                             atol=1e-8)


def test_from_logits_is_finite_where_the_plain_form_is_not():
  z = jnp.array([-1e4, 0.0, 1e4], jnp.float32)
  y = jnp.array([1.0, 0.0, 0.0], jnp.float32)
  bce = losses.binary_cross_entropy_from_logits(z, y)
  assert np.isfinite(bce) and abs(float(bce) - (2e4 + np.log(2))) < 1e-2  # float32 ulp at 2e4 is 2e-3
  assert not np.isfinite(losses.binary_cross_entropy(activations.sigmoid(z), y))
  cce = losses.categorical_cross_entropy_from_logits(z, y)
  assert np.isfinite(cce) and abs(float(cce) - 2e4) < 1


def test_valid_pairs():
  pairs = fnn.valid_pairs()
  assert ("sigmoid", "binary_cross_entropy") in pairs
  assert ("softmax", "categorical_cross_entropy") in pairs
  assert ("identity", "binary_cross_entropy") not in pairs
  assert ("softmax", "squared_error") in pairs
  assert {l for _, l in pairs} == set(fnn.LOSSES)

"""Each activation's hand-derived derivative against jax's autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import activations

ELEMENTWISE = [a for a in fnn.ACTIVATIONS.values() if a.grad is not None]
# A grid through the kinks (0) and the saturated tails of every activation.
Z = jnp.concatenate([jnp.linspace(-12.0, 12.0, 241, dtype=jnp.float64),
                     jnp.array([-1e-9, 0.0, 1e-9, -40.0, 40.0])])


@pytest.mark.parametrize("act", ELEMENTWISE, ids=lambda a: a.name)
def test_grad_matches_vmap_jax_grad(act):
  a = act.fn(Z)
  want = jax.vmap(jax.grad(act.fn))(Z)
  # float64: the two sides are closed forms of the same derivative; they
  # differ by a few ulps of O(1) values.
  np.testing.assert_allclose(act.grad(Z, a), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", ELEMENTWISE, ids=lambda a: a.name)
def test_backward_is_vjp(act):
  z = jax.random.normal(jax.random.key(0), (7,), jnp.float64) * 3
  g = jax.random.normal(jax.random.key(1), (7,), jnp.float64)
  _, vjp = jax.vjp(act.fn, z)
  np.testing.assert_allclose(act.backward(z, act.fn(z), g), vjp(g)[0],
                             rtol=1e-12, atol=1e-14)


def test_softmax_vjp_matches_jax_vjp():
  z = jax.random.normal(jax.random.key(2), (4, 6), jnp.float64) * 5
  g = jax.random.normal(jax.random.key(3), (4, 6), jnp.float64)
  _, vjp = jax.vjp(activations.softmax, z)
  got = activations.SOFTMAX.backward(z, activations.softmax(z), g)
  np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-12, atol=1e-14)


def test_gelu_is_the_exact_erf_form():
  np.testing.assert_allclose(activations.gelu(Z),
                             jax.nn.gelu(Z, approximate=False), rtol=1e-13,
                             atol=1e-15)
  np.testing.assert_allclose(activations.gelu_tanh(Z),
                             jax.nn.gelu(Z, approximate=True), rtol=1e-13,
                             atol=1e-15)


@pytest.mark.parametrize("name,ref", [
    ("sigmoid", jax.nn.sigmoid), ("relu", jax.nn.relu),
    ("leaky_relu", jax.nn.leaky_relu), ("elu", jax.nn.elu),
    ("softplus", jax.nn.softplus), ("silu", jax.nn.silu), ("tanh", jnp.tanh)])
def test_forward_matches_jax_nn(name, ref):
  np.testing.assert_allclose(fnn.ACTIVATIONS[name].fn(Z), ref(Z), rtol=1e-13,
                             atol=1e-15)


def test_registry_lists_hidden_and_output():
  assert set(activations.HIDDEN_ACTIVATIONS) >= {
      "identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus",
      "gelu", "silu"}
  assert "softmax" not in activations.HIDDEN_ACTIVATIONS
  assert "softmax" in activations.OUTPUT_ACTIVATIONS
  assert fnn.ACTIVATIONS["relu"].kinks == (0.0,)


def test_elu_grad_has_no_cancellation_in_float32():
  # elu'(z) = exp(z) for z <= 0. The old a + 1 = expm1(z) + 1 is 0 in float32
  # from z = -18 on (expm1 rounds to -1) while exp(z) is representable.
  z = jnp.array([-1.0, -17.0, -20.0, -40.0, -80.0], jnp.float32)
  assert float(jnp.expm1(jnp.float32(-20.0)) + 1) == 0.0  # the old formula
  want = np.exp(np.asarray(z, np.float64))
  got = activations.elu_grad(z, activations.elu(z))
  assert got.dtype == jnp.float32 and np.all(np.asarray(got) > 0)
  # One float32 exp: within a few ulps (6e-8 each), so 1e-6.
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # jax.grad of fnn's elu uses the same derivative (a custom JVP), so the
  # autodiff reference does not cancel either.
  auto = jax.vmap(jax.grad(activations.elu))(z)
  assert float(auto[2]) > 0
  np.testing.assert_allclose(auto, want, rtol=1e-6)


def test_elu_grad_matches_autodiff_of_jax_nn_elu():
  # An independent reference: fnn's elu has a custom JVP built from elu_grad,
  # so test_grad_matches_vmap_jax_grad compares elu_grad with itself. In
  # float64 over Z (down to -40, where both sides are ~4e-18) the closed
  # forms agree to rounding.
  want = jax.vmap(jax.grad(jax.nn.elu))(Z)
  np.testing.assert_allclose(activations.elu_grad(Z, activations.elu(Z)),
                             want, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(jax.grad(jax.grad(activations.elu))(-1.5),
                             np.exp(-1.5), rtol=1e-12)  # differentiable JVP

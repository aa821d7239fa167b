"""fnn's hand-derived gradients against jax.grad, over the whole registry."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from helpers import (HIDDEN, PAIRS, one_example_loss, problem,
                     reference_per_example, sizes_for, tree_norms)

# float64 tolerances. Both sides compute the same sums in a different order
# (vmap + one matmul vs batched reverse mode), so they differ by a few ulps
# times the depth and width (< 100 terms here): ~1e-14 relative. 1e-10 leaves
# four orders of margin yet catches any real error (a wrong derivative is off
# by O(1)). atol covers entries that cancel to ~0, where relative error is
# meaningless; gradients here are O(1e-3..1).
RTOL, ATOL = 1e-10, 1e-12


def _id(case):
  depth, act, out, loss = case
  return f"d{depth}-{act}-{out}-{loss}"


CASES = [(1, "-", out, loss) for out, loss in PAIRS] + [
    (depth, act, out, loss)
    for depth in (2, 3, 4) for act in HIDDEN for out, loss in PAIRS]
# The default run: every pair at depth 1; at depth 2 a third of the
# (activation, pair) products, chosen so that every activation meets at least
# three pairs and every pair at least three activations; at depths 3 and 4
# every activation and every pair at least once (pair i with activation
# i mod len(HIDDEN)): the hidden-to-hidden recursion that depth adds goes
# through the activation only, the output delta through the pair only. The
# other products (~0.25 s each, op by op) run with `pytest -m slow`.
DEFAULT = CASES[:len(PAIRS)] + [
    (2, act, out, loss) for a, act in enumerate(HIDDEN)
    for p, (out, loss) in enumerate(PAIRS) if (a + p) % 3 == 0] + [
    (depth, HIDDEN[i % len(HIDDEN)], out, loss)
    for depth in (3, 4) for i, (out, loss) in enumerate(PAIRS)]
CASES = [pytest.param(c, id=_id(c)) if c in DEFAULT
         else pytest.param(c, id=_id(c), marks=pytest.mark.slow)
         for c in CASES]


@pytest.mark.parametrize("case", CASES)
def test_matches_jax_grad(case):
  depth, act, out, loss = case
  model = fnn.MLP(sizes_for(depth), activation="tanh" if act == "-" else act,
                  output=out, loss=loss)
  params, x, y = problem(model, seed=depth)
  ref_loss, ref = jax.value_and_grad(model.mean_loss)(params, x, y)
  value, grads = fnn.value_and_grad(model, params, x, y)
  chex.assert_trees_all_close(grads, ref, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(value, ref_loss, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(fnn.grad(model, params, x, y), ref,
                              rtol=RTOL, atol=ATOL)

  per_example = fnn.per_example_grads(model, params, x, y)
  ref_pe = reference_per_example(model, params, x, y)
  chex.assert_trees_all_close(per_example, ref_pe, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(fnn.per_example_grad_norms(model, params, x, y),
                             tree_norms(ref_pe), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("out,loss", PAIRS, ids=[f"{o}-{l}" for o, l in PAIRS])
def test_backprop_is_one_example_grad(out, loss):
  model = fnn.MLP((5, 7, 3), activation="silu", output=out, loss=loss)
  params, x, y = problem(model, batch=1)
  got = fnn.backprop(model, params, x[0], y[0])
  want = jax.grad(one_example_loss(model))(params, x[0], y[0])
  chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_equal_shapes(got, params)


def test_per_example_losses_match_reference():
  model = fnn.MLP((5, 7, 3), activation="elu")
  params, x, y = problem(model)
  want = jax.vmap(one_example_loss(model), in_axes=(None, 0, 0))(params, x, y)
  np.testing.assert_allclose(fnn.per_example_losses(model, params, x, y), want,
                             rtol=RTOL)


def test_probability_rows_and_unnormalized_targets():
  """Soft targets, and rows not summing to 1, still match jax.grad exactly."""
  model = fnn.MLP((5, 7, 4), activation="tanh")
  params, x, _ = problem(model)
  y = jax.random.uniform(jax.random.key(9), (6, 4), jnp.float64)  # rows != 1
  chex.assert_trees_all_close(fnn.grad(model, params, x, y),
                              jax.grad(model.mean_loss)(params, x, y),
                              rtol=RTOL, atol=ATOL)
  labels = jnp.array([0, 3, 1, 2, 2, 0])
  chex.assert_trees_all_close(
      fnn.grad(model, params, x, labels),
      fnn.grad(model, params, x, jax.nn.one_hot(labels, 4, dtype=x.dtype)),
      rtol=0, atol=0)


def test_per_layer_activations():
  model = fnn.MLP((5, 7, 3, 9, 3), activation=("relu", "sigmoid", "gelu"),
                  output="identity", loss="half_squared_error")
  params, x, y = problem(model, scheme="he")
  chex.assert_trees_all_close(fnn.grad(model, params, x, y),
                              jax.grad(model.mean_loss)(params, x, y),
                              rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scheme", sorted(fnn.INIT_SCHEMES))
def test_schemes_and_single_output(scheme):
  """n_out = 1 with targets of shape [batch] (seed 000's logistic unit)."""
  model = fnn.MLP((5, 7, 1), activation="relu", output="sigmoid",
                  loss="binary_cross_entropy")
  params, x, _ = problem(model, scheme=scheme)
  y = jnp.array([0, 1, 1, 0, 1, 0])
  chex.assert_trees_all_close(fnn.grad(model, params, x, y),
                              jax.grad(model.mean_loss)(params, x, y),
                              rtol=RTOL, atol=ATOL)


FNS = {
    "grad": fnn.grad,
    "value_and_grad": fnn.value_and_grad,
    "per_example_grads": fnn.per_example_grads,
    "per_example_grad_norms": fnn.per_example_grad_norms,
    "per_example_losses": fnn.per_example_losses,
}


@pytest.mark.parametrize("name", sorted(FNS))
def test_jit_eager_agree_and_deterministic(name):
  fn = FNS[name]
  model = fnn.MLP((5, 7, 3, 3), activation="leaky_relu")
  params, x, y = problem(model)
  x_before, params_before = np.array(x), jax.tree.map(np.array, params)
  eager = fn(model, params, x, y)
  jitted = jax.jit(fn, static_argnums=0)
  first, second = jitted(model, params, x, y), jitted(model, params, x, y)
  chex.assert_trees_all_equal(first, second)  # bitwise deterministic
  chex.assert_trees_all_close(eager, first, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_equal(fn(model, params, x, y), eager)
  np.testing.assert_array_equal(x, x_before)  # inputs are not modified
  chex.assert_trees_all_equal(params, params_before)


def test_model_is_a_static_jit_argument():
  """Equal models hash equal, so jit reuses one compilation."""
  a = fnn.MLP((5, 7, 3), activation="tanh")
  b = fnn.MLP([5, 7, 3], activation=["tanh"])
  assert a == b and hash(a) == hash(b)
  assert a != fnn.MLP((5, 7, 3), activation="relu")
  traces = []

  def grad(model, params, x, y):
    traces.append(model)  # runs once per trace, not per call
    return fnn.grad(model, params, x, y)

  jitted = jax.jit(grad, static_argnums=0)
  params, x, y = problem(a)
  jitted(a, params, x, y)
  jitted(b, params, x, y)
  assert traces == [a]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("out,loss", [("sigmoid", "binary_cross_entropy"),
                                      ("softmax", "categorical_cross_entropy")])
def test_stable_for_huge_logits(dtype, out, loss):
  """Loss and gradient stay finite for |z| up to 1e4 (log-sigmoid/softmax)."""
  model = fnn.MLP((2, 3), output=out, loss=loss)
  w = jnp.array([[1e4, -1e4, 0.5], [-1e4, 1e4, 0.0]], dtype)
  params = (fnn.Dense(w, jnp.zeros(3, dtype)),)
  x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype)  # z in {0, ±1e4}
  y = (jnp.array([1, 0, 2]) if out == "softmax"
       else jnp.array([[0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype))
  value, grads = fnn.value_and_grad(model, params, x, y)
  chex.assert_tree_all_finite((value, grads))
  # The wrong class at z = 1e4 costs ~1e4 and saturates the gradient (a - y).
  assert 1e3 < float(value) < 1e5
  ref_value, ref = jax.value_and_grad(model.mean_loss)(params, x, y)
  # float32: the loss is ~1e4 and is summed in a different order, so allow
  # a few float32 ulps (eps 1.2e-7) of it; gradients are O(1) entries a - y.
  tol = 1e-5 if dtype == jnp.float32 else 1e-12
  chex.assert_trees_all_close((value, grads), (ref_value, ref), rtol=tol,
                              atol=tol)


def _all_shapes(jaxpr):
  """Every intermediate shape in a (closed) jaxpr, sub-jaxprs included."""
  shapes = []
  for eqn in jaxpr.eqns:
    shapes += [tuple(v.aval.shape) for v in eqn.outvars]
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None:
        shapes += _all_shapes(getattr(inner, "jaxpr", inner))
  return shapes


@pytest.mark.parametrize("fn", [fnn.grad, fnn.value_and_grad,
                                fnn.per_example_grad_norms],
                         ids=["grad", "value_and_grad", "norms"])
def test_no_per_example_weight_gradient_is_formed(fn):
  """The mean and the norms come from the factors, never [B, n_in, n_out]."""
  model = fnn.MLP((5, 7, 3), activation="relu")
  params, x, y = problem(model)
  shapes = _all_shapes(
      jax.make_jaxpr(fn, static_argnums=0)(model, params, x, y).jaxpr)
  assert (6, 7, 3) not in shapes and (6, 5, 7) not in shapes
  assert all(len(s) <= 2 for s in shapes), [s for s in shapes if len(s) > 2]
  # ... whereas per_example_grads does form them (the check can fail).
  pe = _all_shapes(jax.make_jaxpr(fnn.per_example_grads, static_argnums=0)(
      model, params, x, y).jaxpr)
  assert (6, 5, 7) in pe

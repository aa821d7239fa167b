"""MLP construction, init schemes, apply, and every documented bad input."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from helpers import problem


def test_init_shapes_dtypes_and_keys():
  model = fnn.MLP((5, 7, 3, 2), activation="tanh")
  for dtype in (jnp.float32, jnp.float64):
    params = model.init(jax.random.key(0), dtype)
    assert isinstance(params, tuple) and len(params) == 3
    assert all(isinstance(layer, fnn.Dense) for layer in params)
    chex.assert_shape([l.w for l in params], [(5, 7), (7, 3), (3, 2)])
    chex.assert_shape([l.b for l in params], [(7,), (3,), (2,)])
    chex.assert_type(jax.tree.leaves(params), dtype)
  a = model.init(jax.random.key(1))
  chex.assert_trees_all_equal(a, model.init(jax.random.key(1)))
  assert not np.allclose(a[0].w, model.init(jax.random.key(2))[0].w)


@pytest.mark.parametrize("scheme,w_std,b_std", [
    ("normal", lambda n_in, n_out: 1.0, 1.0),
    ("nielsen", lambda n_in, n_out: n_in ** -0.5, 1.0),
    ("he", lambda n_in, n_out: (2 / n_in) ** 0.5, 0.0),
    ("lecun", lambda n_in, n_out: n_in ** -0.5, 0.0),
    ("glorot", lambda n_in, n_out: (2 / (n_in + n_out)) ** 0.5, 0.0),
])
def test_init_scheme_statistics(scheme, w_std, b_std):
  n_in, n_out = 400, 300
  (layer,) = fnn.MLP((n_in, n_out), output="identity",
                     loss="half_squared_error").init(
                         jax.random.key(3), jnp.float64, scheme=scheme)
  # 120,000 weights: the sample std is within ~0.5% of the true std (its
  # relative standard error is 1/sqrt(2 N) = 0.2%); 300 biases: ~4%, so 15%.
  np.testing.assert_allclose(np.std(layer.w), w_std(n_in, n_out), rtol=0.01)
  assert abs(float(np.mean(layer.w))) < 0.01 * max(w_std(n_in, n_out), 1e-9) * 5
  if b_std:
    np.testing.assert_allclose(np.std(layer.b), b_std, rtol=0.15)
  else:
    assert not np.any(layer.b)
  if scheme == "glorot":
    assert np.max(np.abs(layer.w)) <= (6 / (n_in + n_out)) ** 0.5


def test_apply_shapes_and_outputs():
  model = fnn.MLP((5, 7, 4), activation="relu")
  params, x, _ = problem(model)
  out = model.apply(params, x)
  chex.assert_shape(out, (6, 4))
  np.testing.assert_allclose(jnp.sum(out, axis=1), 1.0, rtol=1e-12)
  # The one-example forward keeps the same activations.
  from fnn.backward import forward
  np.testing.assert_allclose(forward(model, params, x[2])[-1].a, out[2],
                             rtol=1e-12)


def test_repr_and_fields():
  model = fnn.MLP((5, 7, 3, 2), activation=("relu", "gelu"), output="sigmoid",
                  loss="binary_cross_entropy")
  assert repr(model) == ("MLP(sizes=(5, 7, 3, 2), activation=('relu', 'gelu'), "
                         "output='sigmoid', loss='binary_cross_entropy')")
  assert model.num_layers == 3 and model.fused
  assert not fnn.MLP((5, 2), output="sigmoid", loss="squared_error").fused
  assert fnn.MLP((5, 2)).activation == ()  # no hidden layer


# Every bad input the API rejects, with the words the message must contain.
BAD_MODELS = [
    (dict(sizes=(5,)), ValueError, r"at least \(n_in, n_out\)"),
    (dict(sizes=(5, 0, 3)), ValueError, r"at least 1, got \(5, 0, 3\)"),
    (dict(sizes=(5, -2)), ValueError, r"at least 1"),
    (dict(sizes=(5, 2.5)), TypeError, r"ints, got 2.5"),
    (dict(sizes=(5, True)), TypeError, r"ints, got True"),
    (dict(sizes="5,3"), TypeError, r"sequence of ints"),
    (dict(sizes=(5, 3, 2), activation="relux"), ValueError,
     r"unknown hidden activation 'relux'; choose from \[.*'relu'"),
    (dict(sizes=(5, 3, 2), activation="softmax"), ValueError,
     r"only valid as the output"),
    (dict(sizes=(5, 3, 2), activation=("relu", "tanh")), ValueError,
     r"2 entries but sizes \(5, 3, 2\) has 1 hidden"),
    (dict(sizes=(5, 3), output="sofmax"), ValueError,
     r"unknown output activation 'sofmax'.*'softmax'"),
    (dict(sizes=(5, 3), loss="mse"), ValueError,
     r"unknown loss 'mse'; choose from \['binary_cross_entropy'"),
    (dict(sizes=(5, 3), loss=3), TypeError, r"loss must be a name"),
    (dict(sizes=(5, 3), output="identity", loss="binary_cross_entropy"),
     ValueError, r"needs output sigmoid, got output 'identity'; valid .*pairs"),
    (dict(sizes=(5, 3), output="sigmoid", loss="categorical_cross_entropy"),
     ValueError, r"needs output softmax, got output 'sigmoid'"),
    (dict(sizes=(5, 1), output="softmax"), ValueError, r"n_out >= 2"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_MODELS,
                         ids=[m for _, _, m in BAD_MODELS])
def test_bad_model_raises(kwargs, error, match):
  with pytest.raises(error, match=match):
    fnn.MLP(**kwargs)


def test_bad_init_raises():
  model = fnn.MLP((5, 3))
  with pytest.raises(ValueError, match=r"unknown init scheme 'xavier'"):
    model.init(jax.random.key(0), scheme="xavier")
  with pytest.raises(TypeError, match=r"floating dtype, got int32"):
    model.init(jax.random.key(0), dtype=jnp.int32)


CCE = fnn.MLP((5, 7, 3), activation="tanh")
BCE = fnn.MLP((5, 3), output="sigmoid", loss="binary_cross_entropy")
SE = fnn.MLP((5, 3), output="identity", loss="squared_error")
X = np.ones((4, 5))


def _bad_inputs():
  return [
      (CCE, np.ones((4, 6)), np.zeros(4, int),
       r"x has 6 features, model expects n_in=5"),
      (CCE, np.ones(5), np.zeros(4, int), r"\[batch, n_in\].*got shape \(5,\)"),
      (CCE, X, np.zeros((4, 2)),
       r"y must have shape \(4, 3\) or integer class labels \(4,\).*got "
       r"shape \(4, 2\)"),
      (CCE, X, np.array([0, 1, 3, 2]), r"class label 3 is outside \[0, 3\)"),
      (CCE, X, np.array([0, -1, 2, 2]), r"class label -1 is outside"),
      (CCE, X, np.zeros(4), r"must be integer, got dtype float64"),
      (CCE, X, np.zeros(3, int), r"batch size 4 but y has shape \(3,\)"),
      (BCE, X, np.full((4, 3), 1.5), r"targets in \[0, 1\], got 1.5"),
      (BCE, X, np.full((4, 3), -0.5), r"targets in \[0, 1\], got -0.5"),
      (SE, X, np.zeros((4, 3, 1)), r"y must have shape \(4, 3\)"),
      (CCE, X, "abc", r"y must be numeric"),
  ]


FNS = [fnn.grad, fnn.value_and_grad, fnn.per_example_grads,
       fnn.per_example_grad_norms, fnn.per_example_losses,
       lambda m, p, x, y: m.mean_loss(p, x, y)]


@pytest.mark.parametrize("fn", FNS, ids=["grad", "value_and_grad",
                                         "per_example_grads", "norms",
                                         "losses", "mean_loss"])
@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_batch_raises(fn, case):
  model, x, y, match = _bad_inputs()[case]
  params = model.init(jax.random.key(0))
  error = TypeError if "numeric" in match else ValueError
  with pytest.raises(error, match=match):
    fn(model, params, x, y)


def test_bad_inputs_raise_under_jit_too():
  """Shapes are static: jit still rejects a wrong feature count."""
  params = CCE.init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"x has 6 features"):
    jax.jit(fnn.grad, static_argnums=0)(CCE, params, np.ones((4, 6)),
                                        np.zeros(4, int))


def test_one_example_inputs_checked():
  params = CCE.init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"\[n_in\] \(one example\)"):
    fnn.backprop(CCE, params, X, np.zeros(4, int))
  with pytest.raises(ValueError, match=r"class label 7 is outside"):
    fnn.backprop(CCE, params, X[0], 7)
  with pytest.raises(ValueError, match=r"x has 4 features"):
    fnn.input_grad(CCE, params, np.ones(4), 1)


def test_params_that_do_not_fit_raise():
  params = CCE.init(jax.random.key(0))
  other = fnn.MLP((5, 8, 3)).init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"params\[0\] has w \(5, 8\).*expect w "
                     r"\(5, 7\)"):
    fnn.grad(CCE, other, X, np.zeros(4, int))
  with pytest.raises(ValueError, match=r"params has 1 layers, model .* has 2"):
    fnn.grad(CCE, params[:1], X, np.zeros(4, int))
  with pytest.raises(TypeError, match=r"tuple of fnn.Dense"):
    fnn.grad(CCE, {"w": 1}, X, np.zeros(4, int))

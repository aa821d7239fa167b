"""fnn.Sequential: construction errors naming the layer index and shapes,
params and x validation naming the leaf, the frozen hashable API (init,
apply, mean_loss), fnn.arch's models and spec errors, dropout masks, and
kfac_factors; NumPy references come from layer_helpers."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import stats
from layer_helpers import (assert_close, conv_np, layer_norm_np, problem,
                           run_jit, zeros_params)

L = fnn.layers


# ---------------------------------------------------------------------------
# 1. Bad construction and bad input.

@pytest.mark.parametrize("make,error,match", [
    (lambda: fnn.Sequential((5, 3), [L.Dense(2)]), ValueError,
     r"layers\[0\] Dense\(2\) cannot take input shape \(5, 3\).*Flatten"),
    (lambda: fnn.Sequential((6,), [L.Conv1d(2, 3), L.Dense(2)]), ValueError,
     r"layers\[1\] Dense\(2\) cannot take input shape \(4, 2\)"),
    (lambda: fnn.Sequential((6,), [L.Dense(4), L.Residual(L.Dense(3)),
                                   L.Dense(2)]), ValueError,
     r"layers\[1\] Residual.*\(4,\).*maps \(4,\) to \(3,\)"),
    (lambda: fnn.Sequential((4,), [L.Conv1d(2, 7, padding=1), L.Flatten(),
                                   L.Dense(2)]), ValueError,
     r"layers\[0\] Conv1d.*\(4,\).*kernel_size 7 is larger than the padded "
     r"length 6"),
    (lambda: L.Conv1d(2, 3, stride=0), ValueError, r"stride.*0"),
    (lambda: L.Conv1d(2, 3, padding=-1), ValueError, r"padding.*-1"),
    (lambda: L.Conv1d(2, 0), ValueError, r"kernel_size.*0"),
    (lambda: fnn.Sequential((4,), [L.Dense(3), L.Activation("relu")]),
     ValueError, r"last layer must be fnn.layers.Dense"),
    (lambda: fnn.Sequential((4,), []), ValueError, r"last layer"),
    (lambda: fnn.Sequential((4,), [L.Dense(3), "relu", L.Dense(2)]),
     TypeError, r"layers\[1\] must be an fnn.layers layer"),
    (lambda: fnn.Sequential((4,), [L.Dense(3), fnn.Dense(1, 2), L.Dense(2)]),
     TypeError, r"layers\[1\]"),
    (lambda: L.Residual(L.Dense(3), "relu"), TypeError, r"block\[1\]"),
    (lambda: L.Residual(), ValueError, r"at least one layer"),
    (lambda: L.Activation("nope"), ValueError,
     r"unknown hidden activation 'nope'"),
    (lambda: L.Activation("softmax"), ValueError, r"softmax"),
    (lambda: L.Dense(3, init="nope"), ValueError, r"unknown init scheme"),
    (lambda: L.LayerNorm(eps=0.0), ValueError, r"eps"),
    (lambda: fnn.Sequential((4, 1), [L.LayerNorm(), L.Flatten(),
                                     L.Dense(2)]), ValueError,
     r"layers\[0\] LayerNorm.*\(4, 1\).*at least 2 features"),
    (lambda: fnn.Sequential((4, 2, 2), [L.Conv1d(2, 2), L.Flatten(),
                                        L.Dense(2)]), ValueError,
     r"layers\[0\] Conv1d.*\(4, 2, 2\)"),
    (lambda: fnn.Sequential((0,), [L.Dense(2)]), ValueError, r"in_shape"),
    (lambda: fnn.Sequential((4,), [L.Dense(1)]), ValueError, r"softmax"),
], ids=["dense_after_2d", "dense_after_conv", "residual_mismatch",
        "kernel_too_large", "stride_0", "padding_negative", "kernel_0",
        "last_not_dense", "no_layers", "string_layer", "params_as_layer",
        "residual_non_layer", "residual_empty", "unknown_activation",
        "softmax_hidden", "unknown_init", "eps_0", "layernorm_1_feature",
        "conv_3d_input", "in_shape_0", "softmax_one_output"])
def test_bad_construction_raises(make, error, match):
  with pytest.raises(error, match=match):
    make()


def _small_seq():
  return fnn.Sequential((6,), [
      L.Conv1d(2, 3), L.Activation("relu"),
      L.Residual(L.LayerNorm(), L.Activation("tanh")), L.Flatten(),
      L.Dense(3)])


@pytest.mark.parametrize("edit,error,match", [
    (lambda p: p[:-1], TypeError, r"params must be a tuple of 5 entries"),
    (lambda p: (L.ConvParams(p[0].w[:2], p[0].b),) + p[1:], ValueError,
     r"params\[0\]\.w has shape \(2, 1, 2\), the model expects \(3, 1, 2\)"),
    (lambda p: (fnn.Dense(*p[0]),) + p[1:], TypeError,
     r"params\[0\] must be fnn ConvParams"),
    (lambda p: p[:1] + (p[0],) + p[2:], TypeError, r"params\[1\] must be \(\)"),
    (lambda p: p[:2] + (p[2][0],) + p[3:], TypeError,
     r"params\[2\] must be a tuple of 2 entries"),
    (lambda p: p[:2] + ((L.LayerNormParams(p[2][0].scale[:1],
                                           p[2][0].shift), ()),) + p[3:],
     ValueError, r"params\[2\]\[0\]\.scale has shape \(1,\)"),
    (lambda p: p[:4] + (fnn.Dense(p[4].w.T, p[4].b),), ValueError,
     r"params\[4\]\.w has shape \(3, 8\), the model expects \(8, 3\)"),
], ids=["too_few", "conv_w_shape", "wrong_kind", "activation_not_empty",
        "residual_not_tuple", "layernorm_scale_shape", "dense_transposed"])
def test_bad_params_name_the_leaf(edit, error, match):
  model = _small_seq()
  params = zeros_params(model)
  x = jnp.zeros((2, 6))
  y = jnp.array([0, 1])
  with pytest.raises(error, match=match):
    fnn.grad(model, edit(params), x, y)


@pytest.mark.parametrize("fn,x,match", [
    (fnn.grad, np.zeros((2, 6, 1)), r"in_shape=\(6,\).*\(2, 6, 1\)"),
    (fnn.grad, np.zeros((2, 5)), r"in_shape=\(6,\).*\(2, 5\)"),
    (fnn.grad, np.zeros(6), r"in_shape=\(6,\).*\(6,\)"),
    (fnn.backprop, np.zeros((1, 6)), r"one example.*\(1, 6\)"),
    (fnn.input_grad, np.zeros(5), r"one example.*\(5,\)"),
], ids=["grad_extra_axis", "grad_wrong_length", "grad_no_batch",
        "backprop_batched", "input_grad_wrong_length"])
def test_bad_x_raises(fn, x, match):
  model = _small_seq()
  params = zeros_params(model)
  y = np.zeros(x.shape[0] if x.ndim > 1 else 1, int) if fn is fnn.grad else (
      np.array(0))
  with pytest.raises(ValueError, match=match):
    fn(model, params, x, y)


# ---------------------------------------------------------------------------
# 2. The Sequential API (and fnn.arch).

def _api_seq(n_out=3):
  return fnn.Sequential((7, 2), [
      L.Conv1d(3, 3, stride=2, padding=1), L.Activation("relu"),
      L.Residual(L.LayerNorm(), L.Conv1d(3, 3, padding=1),
                 L.Activation("tanh")),
      L.Flatten(), L.Dense(n_out)])


def test_sequential_frozen_hashable_static():
  a, b = _api_seq(), _api_seq()
  assert a is not b and a == b and hash(a) == hash(b)
  assert _api_seq(4) != a and hash(_api_seq(4)) != hash(a)
  assert fnn.Sequential((7, 2), a.layers, loss="squared_error") != a
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.layers = ()
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.layers[0].stride = 2
  assert {a: 1}[b] == 1
  f = jax.jit(lambda model, p: jax.tree.map(jnp.sum, p), static_argnums=0)
  params = zeros_params(a)
  f(a, params)
  f(b, params)  # equal model: the same compiled program
  assert f._cache_size() == 1
  f(_api_seq(4), zeros_params(_api_seq(4)))
  assert f._cache_size() == 2


def test_numpy_integers_are_accepted_as_python_ints():
  """Sizes read from arrays or configs (np.int64) are ints: the layers
  store Python ints, equal (and hash equal) to the same layer from ints."""
  conv = L.Conv1d(np.int64(3), np.int32(2), stride=np.int64(2),
                  padding=np.int64(1))
  assert conv == L.Conv1d(3, 2, stride=2, padding=1)
  assert hash(conv) == hash(L.Conv1d(3, 2, stride=2, padding=1))
  assert all(type(v) is int for v in (conv.out_channels, conv.kernel_size,
                                      conv.stride, conv.padding))
  assert L.Dense(np.int64(4)) == L.Dense(4)
  assert L.LayerNorm(np.float32(0.5)).eps == 0.5
  for bad in (True, 2.0, np.bool_(True)):
    with pytest.raises(ValueError, match="positive int"):
      L.Dense(bad)


def test_sequential_init_structure():
  model = _api_seq()
  # (7, 2) -> conv (4, 3) -> relu -> residual [LN (4, 3), conv (4, 3),
  # tanh] -> flatten 12 -> Dense 3
  assert model.shapes == ((7, 2), (4, 3), (4, 3), (4, 3), (12,), (3,))
  # One compile of each init, not one per random op.
  init = lambda key, dtype: run_jit(lambda k: model.init(k, dtype), key)
  params = init(jax.random.key(0), jnp.float32)
  assert isinstance(params, tuple) and len(params) == 5
  conv, act, res, flat, dense = params
  assert isinstance(conv, L.ConvParams)
  assert conv.w.shape == (3, 2, 3) and conv.b.shape == (3,)
  assert act == () and flat == ()
  assert type(res) is tuple and len(res) == 3 and res[2] == ()
  ln, inner = res[0], res[1]
  assert isinstance(ln, L.LayerNormParams)
  np.testing.assert_array_equal(ln.scale, np.ones(3))
  np.testing.assert_array_equal(ln.shift, np.zeros(3))
  assert isinstance(inner, L.ConvParams) and inner.w.shape == (3, 3, 3)
  assert isinstance(dense, fnn.Dense) and dense.w.shape == (12, 3)
  assert {v.dtype for v in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  p64 = jax.eval_shape(model.init, jax.random.key(0))
  assert {v.dtype for v in jax.tree.leaves(p64)} == {jnp.dtype("float32")}
  p64 = init(jax.random.key(0), jnp.float64)
  assert {v.dtype for v in jax.tree.leaves(p64)} == {jnp.dtype("float64")}
  assert model.parameter_count() == sum(
      v.size for v in jax.tree.leaves(params)) == (
          3 * 2 * 3 + 3) + (3 + 3) + (3 * 3 * 3 + 3) + (12 * 3 + 3)
  # Different keys draw different weights; layer keys differ from each other.
  other = init(jax.random.key(1), jnp.float32)
  assert not np.allclose(conv.w, other[0].w)


def test_sequential_init_the_same_at_top_level_and_inside_jit_or_vmap():
  # At top level the draws compile with fnn._compile.ONCE_OPTIONS on the
  # CPU; inside the caller's jit or vmap with the caller's options. The
  # integer hashing is the same; the scaling may round differently where
  # one compiler fuses a product into an FMA: 2 ulps of float32 (2.4e-7).
  model = _api_seq()
  key = jax.random.key(3)
  top = model.init(key)
  chex.assert_trees_all_close(jax.jit(model.init)(key), top, rtol=2.4e-7,
                              atol=0)
  many = jax.vmap(model.init)(jax.random.split(key, 2))
  chex.assert_trees_all_close(
      jax.tree.map(lambda v: v[1], many),
      model.init(jax.random.split(key, 2)[1]), rtol=2.4e-7, atol=0)


def test_init_states_split_is_jax_random_split_bit_for_bit():
  from fnn import train
  for key in (jax.random.key(7), jax.random.PRNGKey(7)):
    got, want = train._split(key), jax.random.split(key)
    np.testing.assert_array_equal(jax.random.key_data(got),
                                  jax.random.key_data(want))


def test_sequential_apply_and_mean_loss_against_numpy():
  model = _api_seq()
  params, x, y = problem(model, b=3)
  conv, _, (ln, inner, _), _, dense = jax.tree.map(np.asarray, params)
  x = np.asarray(x)
  logits = []
  for xi in x:
    h = np.maximum(conv_np(xi, conv.w, conv.b, 2, 1), 0)  # (4, 3)
    h = h + np.tanh(conv_np(layer_norm_np(h, ln.scale, ln.shift, 1e-5),
                             inner.w, inner.b, 1, 1))
    logits.append(h.reshape(-1) @ dense.w + dense.b)
  logits = np.array(logits)
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  applied, loss = run_jit(lambda p, x, y: (model.apply(p, x),
                                           model.mean_loss(p, x, y)),
                          params, jnp.asarray(x), y)
  np.testing.assert_allclose(applied, prob, rtol=1e-12)
  want = -np.mean(np.log(prob[np.arange(3), np.asarray(y)]))
  np.testing.assert_allclose(loss, want, rtol=1e-12)


def test_arch_cnn_shapes_and_parameter_count():
  model = fnn.arch.build("cnn", 40, 10)
  assert isinstance(model, fnn.Sequential)
  # MNIST-1D's ConvBase: 40 -> 19x25 -> 10x25 -> 5x25 -> 125 -> 10.
  assert [s for s in model.shapes if len(s) == 2] == [
      (19, 25), (19, 25), (10, 25), (10, 25), (5, 25), (5, 25)]
  assert model.shapes[-2:] == ((125,), (10,))
  want = (5 * 1 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (125 * 10 + 10)
  assert model.parameter_count() == want
  params = jax.eval_shape(model.init, jax.random.key(0))
  assert sum(v.size for v in jax.tree.leaves(params)) == want
  res = fnn.arch.build("resmlp", 40, 10)
  assert res.parameter_count() == (40 * 100 + 100) + (100 * 100 + 100) + (
      100 * 10 + 10)
  spec = fnn.arch.build("conv1d:25:5:2:1,relu,flatten,dense:10", 40, 10)
  assert spec.shapes == ((40,), (19, 25), (19, 25), (475,), (10,))


@pytest.mark.parametrize("spec,match", [
    ("conv2d:3:3", "conv2d"), ("relu,foo", "foo"), ("dense", "dense"),
    ("conv1d:a:3", "conv1d:a:3"), ("res(dense:4", r"\("),
    ("conv1d:3:3:0", "conv1d:3:3:0"),
], ids=["unknown_layer", "unknown_token", "dense_no_size", "non_integer",
        "unbalanced", "stride_0"])
def test_parse_layers_errors_name_the_token(spec, match):
  with pytest.raises(ValueError, match=match):
    fnn.arch.parse_layers(spec)


# ---------------------------------------------------------------------------
# 3. Dropout with a Sequential.

def test_dropout_masks_and_grad_with_masks():
  model = fnn.Sequential((9,), [
      L.Conv1d(3, 3, stride=2, padding=1), L.Activation("relu"),
      L.Flatten(), L.Dense(6), L.Activation("tanh"),
      L.Residual(L.Dense(6), L.Activation("relu")),  # no mask inside
      L.Dense(3)])
  b, rate = 6, 0.5
  params, x, y = problem(model, b=b)

  def compute(key, params, x, y):
    masks = fnn.dropout_masks(model, key, b, rate, jnp.float64)
    return (masks, fnn.grad(model, params, x, y, masks=masks),
            jax.grad(lambda p: model.mean_loss(p, x, y, masks))(params),
            jax.grad(model.mean_loss)(params, x, y))

  masks, got, want, unmasked = run_jit(compute, jax.random.key(1), params, x,
                                       y)
  assert model.mask_slots == (1, 4)
  assert [m.shape for m in masks] == [(b, 5, 3), (b, 6)]
  for m in masks:
    assert set(np.unique(np.asarray(m))) <= {0.0, 1 / (1 - rate)}
    assert 0 < np.mean(np.asarray(m) == 0) < 1
  assert_close(got, want)
  # The masks matter (the comparison could fail).
  assert not np.allclose(want[0].w, unmasked[0].w)


# ---------------------------------------------------------------------------
# 4. kfac_factors on a Sequential.

def test_kfac_factors_sequential():
  conv = L.Conv1d(3, 3, stride=2, padding=1)
  model = fnn.Sequential((9, 2), [
      conv, L.LayerNorm(), L.Activation("tanh"), L.Flatten(), L.Dense(4)])
  params, x, y = problem(model, b=6)
  b = x.shape[0]

  # Direct: the conv's deltas by jax.grad of the loss of the layers after
  # it (batched apply); the dense layer's input by apply.
  def rest(z, yi):
    h = z[None]
    for layer, p in zip(model.layers[1:], params[1:]):
      h = layer.apply(p, h)
    return -jax.nn.log_softmax(h[0])[yi]

  def compute(params, x, y):
    z1 = conv.apply(params[0], x)
    a = z1
    for layer, p in zip(model.layers[1:4], params[1:4]):
      a = layer.apply(p, a)
    return (stats.kfac_factors(model, params, x, y),
            jax.vmap(jax.grad(rest))(z1, y), a)

  got, delta1, a = jax.tree.map(np.asarray, run_jit(compute, params, x, y))
  assert len(got) == 3 and got[1] is None  # conv, LayerNorm, dense
  assert all(isinstance(g, fnn.KFACFactors) for g in (got[0], got[2]))
  # The conv by the KFC expansion: positions as extra samples, the patches
  # gathered by loops (x_pad[2t + j, i], flattened as (j, i)).
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (0, 0)))
  patches = np.array([[[xp[n, 2 * t + j, i] for j in range(3) for i in
                        range(2)] for t in range(5)] for n in range(b)])
  want_conv = fnn.KFACFactors(
      np.einsum("btp,btq->pq", patches, patches) / b,
      np.einsum("bto,btp->op", delta1, delta1) / b,
      patches.sum(1).mean(0))
  assert_close(got[0], want_conv)
  # The dense layer: its delta is softmax(z) - onehot(y) (fused
  # cross-entropy, each example's own loss).
  z = a @ np.asarray(params[4].w) + np.asarray(params[4].b)
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  delta = prob - np.eye(4)[np.asarray(y)]
  want_dense = fnn.KFACFactors(a.T @ a / b, delta.T @ delta / b, a.mean(0))
  assert_close(got[2], want_dense)

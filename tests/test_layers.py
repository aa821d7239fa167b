"""The layer axis: every layer type's hand backward against jax.grad (float64),
the layers' semantics against hand-computed numbers (and PyTorch when it is
installed), the Conv kind's two norm forms, finiteness in float32, the jaxpr
check, construction errors, and kfac / dropout on a Sequential.

Speed: each model of the float64 check is compiled ONCE (one jitted function
returns every hand quantity and its reference); the tests read its results.
"""
import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import stats
from fnn.layers import kinds

L = fnn.layers

# float64 hand vs autodiff: both sum the same terms in different orders, so
# they differ by rounding, ~1e-15 relative; LayerNorm over 2-3 features is
# the least well conditioned (1/sqrt(var) of a few numbers) and measured
# ~2e-12. 1e-10 leaves ~50x margin and still catches any wrong term (an
# error of one term is O(1) relative).
RTOL = 1e-10


def assert_close(got, want, rtol=RTOL):
  """Same tree structure, shapes and dtypes; per leaf
  ``max |got - want| <= rtol * max |want|``."""
  assert jax.tree.structure(got) == jax.tree.structure(want), (
      jax.tree.structure(got), jax.tree.structure(want))
  for path, g, w in zip(
      [p for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]],
      jax.tree.leaves(got), jax.tree.leaves(want)):
    g, w = np.asarray(g), np.asarray(w)
    where = jax.tree_util.keystr(path)
    assert g.shape == w.shape, (where, g.shape, w.shape)
    assert g.dtype == w.dtype, (where, g.dtype, w.dtype)
    err = np.max(np.abs(g - w), initial=0.0)
    scale = np.max(np.abs(w), initial=0.0)
    assert np.isfinite(err) and err <= rtol * scale, (where, err, scale)


# XLA:CPU compiles these test programs ~4x faster without its fusion
# emitters and LLVM optimizations (measured on this 2-core machine: the
# "every_layer" program 31 s -> 8 s). Options change how fast the code is
# generated, not the arithmetic being compared, and both sides of every
# comparison are compiled alike; fnn's functions under default compilation
# are exercised by test_gradients, test_stats and the training tests.
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False,
                "xla_backend_optimization_level": 0}


def run_jit(fn, *args):
  """``jax.jit(fn)(*args)``, compiled with :data:`FAST_COMPILE` where this
  XLA has those options."""
  lowered = jax.jit(fn).lower(*args)
  try:
    compiled = lowered.compile(FAST_COMPILE)
  except jax.errors.JaxRuntimeError:  # an XLA without these options
    compiled = lowered.compile()
  return compiled(*args)


# ---------------------------------------------------------------------------
# 1. float64: random stacks mixing every layer type, against jax.grad.

# Two models cover every layer type and every Conv1d case; each comes with a
# dp_grad clip that falls between its per-example norms (a test checks that
# some examples are clipped and some are not).
MODELS = {
    # A plain [L] input (one channel), stride 2 padding 2; stride 3
    # padding 0 over 3 channels; LayerNorm on [L, C]; a kernel equal to the
    # padded length (4 = 2 + 2 x 1: one output position) over 4 channels;
    # Flatten then Dense; a Residual around LayerNorm + Dense + activation;
    # the fused softmax / cross-entropy.
    "every_layer": (lambda: fnn.Sequential((11,), [
        L.Conv1d(3, 4, stride=2, padding=2), L.Activation("relu"),
        L.Conv1d(4, 2, stride=3, padding=0), L.LayerNorm(eps=1e-3),
        L.Conv1d(3, 4, stride=1, padding=1), L.Activation("elu"),
        L.Flatten(), L.Dense(6), L.Activation("tanh"),
        L.Residual(L.LayerNorm(), L.Dense(6), L.Activation("gelu")),
        L.Dense(4)]), 4.0),
    # An [L, C] input with 2 channels; a Residual around a conv (stride 1,
    # padding 1) on [L, C]; a non-fused output and loss.
    "conv_channels_nonfused": (lambda: fnn.Sequential((6, 2), [
        L.Conv1d(3, 3, stride=2, padding=1), L.Activation("silu"),
        L.Residual(L.Conv1d(3, 3, stride=1, padding=1),
                   L.Activation("tanh")),
        L.Flatten(), L.Dense(2)], output="sigmoid", loss="squared_error"),
                               1.0),
}
BATCH = 5


def _problem(model, seed=0, b=BATCH):
  """float64 ``(params, x, y)`` drawn with NumPy (no per-op compiles).

  Every leaf is random, biases and LayerNorm's scale and shift included, so
  a dropped bias term or a swapped scale/shift cannot pass.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.float64),
                          jax.random.key(0))
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) / math.sqrt(
          s.shape[0] if len(s.shape) == 1 else math.prod(s.shape[:-1]))
                            + (0.5 if len(s.shape) == 1 else 0.0)), shapes)
  x = jnp.asarray(rng.normal(size=(b,) + model.in_shape))
  if model.loss.name == "categorical_cross_entropy":
    y = jnp.asarray(rng.integers(0, model.n_out, b))
  else:
    y = jnp.asarray(rng.uniform(size=(b, model.n_out)))
  return params, x, y


def _zeros_params(model, dtype=jnp.float64):
  """Params of the right structure without running any random op."""
  shapes = jax.eval_shape(lambda k: model.init(k, dtype), jax.random.key(0))
  return jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), shapes)


def _one_loss(model):
  return lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])


def _flat_norms(tree, b):
  return jnp.sqrt(sum(jnp.sum(v.reshape(b, -1) ** 2, 1)
                      for v in jax.tree.leaves(tree)))


@functools.cache
def _results(name):
  """Every hand quantity and its reference for one model, one compile."""
  make, clip = MODELS[name]
  model = make()
  params, x, y = _problem(model)
  b = x.shape[0]
  kw = dict(clip=clip, noise=0.0, key=jax.random.key(3))

  def compute(params, x, y):
    one = _one_loss(model)
    per = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
    mean = jax.grad(model.mean_loss)(params, x, y)
    s = fnn.grad_stats(model, params, x, y)
    norms = _flat_norms(per, b)
    layer_norms = jnp.stack(
        [_flat_norms(f, b) for _, _, _, f in fnn.gradients.kind_leaves(
            model, per)], -1)
    second = jax.tree.map(lambda v: jnp.mean(v**2, 0), per)
    c = jnp.minimum(1.0, clip / norms)
    dp = fnn.dp_grad(model, params, x, y, **kw)
    loss, _ = fnn.value_and_grad(model, params, x, y)
    return dict(
        grad=(fnn.grad(model, params, x, y), mean),
        value_and_grad_loss=(loss, model.mean_loss(params, x, y)),
        per_example_grads=(fnn.per_example_grads(model, params, x, y), per),
        per_example_grad_norms=(fnn.per_example_grad_norms(model, params, x, y),
                                norms),
        per_example_losses=(fnn.per_example_losses(model, params, x, y),
                            jax.vmap(one, in_axes=(None, 0, 0))(params, x, y)),
        stats_loss=(s.loss, model.mean_loss(params, x, y)),
        stats_mean=(s.mean, mean),
        stats_second_moment=(s.second_moment, second),
        stats_variance=(s.variance, jax.tree.map(
            lambda s2, m: jnp.maximum(s2 - m * m, 0), second, mean)),
        stats_norms=(s.norms, norms),
        stats_layer_norms=(s.layer_norms, layer_norms),
        stats_trace_sigma=(s.trace_sigma, jnp.sum(jnp.stack([
            jnp.sum(v) for v in jax.tree.leaves(jax.tree.map(
                lambda v: jnp.var(v, 0, ddof=1), per))]))),
        dp_grads=(dp.grads, jax.tree.map(
            lambda v: jnp.tensordot(c, v, axes=1) / b, per)),
        dp_vs_autodiff=(dp.grads,
                        stats.dp_grad_autodiff(model, params, x, y, **kw).grads),
        dp_norms=(dp.norms, norms),
        dp_clipped=(dp.clipped, jnp.mean((norms > clip).astype(norms.dtype))),
        backprop=(fnn.backprop(model, params, x[0], y[0]),
                  jax.grad(one)(params, x[0], y[0])),
        input_grad=(fnn.input_grad(model, params, x[1], y[1]),
                    jax.grad(one, argnums=1)(params, x[1], y[1])),
    )

  out = run_jit(compute, params, x, y)
  return model, params, x, y, clip, jax.tree.map(np.asarray, out)


QUANTITIES = ["grad", "value_and_grad_loss", "per_example_grads",
              "per_example_grad_norms", "per_example_losses", "stats_loss",
              "stats_mean", "stats_second_moment", "stats_variance",
              "stats_norms", "stats_layer_norms", "stats_trace_sigma",
              "dp_grads", "dp_vs_autodiff", "dp_norms", "dp_clipped",
              "backprop", "input_grad"]


@pytest.mark.parametrize("quantity", QUANTITIES)
@pytest.mark.parametrize("name", list(MODELS))
def test_hand_equals_autodiff(name, quantity):
  got, want = _results(name)[-1][quantity]
  assert_close(got, want)


@pytest.mark.parametrize("name", list(MODELS))
def test_models_exercise_what_they_claim(name):
  """The clip falls between the norms (both branches of dp_grad run), the
  gradients are not trivially zero, and the conv layers cover both norm
  forms across the models (checked in test_conv_norm_forms_both_covered)."""
  _, _, _, _, clip, out = _results(name)
  norms = out["per_example_grad_norms"][1]
  assert norms.min() < clip < norms.max(), (norms, clip)
  for leaf in jax.tree.leaves(out["grad"][1]):
    assert np.max(np.abs(leaf)) > 1e-3


def _conv_forms(model):
  """``(uses_gram, T, k c_in, c_out)`` of every Conv1d of ``model``."""
  out = []

  def walk(layers, shapes):
    for layer, s_in, s_out in zip(layers, shapes, shapes[1:]):
      if isinstance(layer, L.Conv1d):
        c_in = s_in[1] if len(s_in) == 2 else 1
        t, p, c = s_out[0], layer.kernel_size * c_in, layer.out_channels
        out.append(kinds.Conv.uses_gram(t, p, c))
      elif isinstance(layer, L.Residual):
        walk(layer.layers, L.chain_shapes(layer.layers, s_in))

  walk(model.layers, model.shapes)
  return out


def test_conv_norm_forms_both_covered():
  forms = [f for name in MODELS for f in _conv_forms(MODELS[name][0]())]
  assert True in forms and False in forms, forms


@pytest.mark.parametrize("name", list(MODELS))
def test_factors_structure(name):
  """fnn.factors: losses [B]; per layer the kind's factors with a leading B
  axis, () for parameterless layers, tuples for Residual."""
  model, params, x, y, _, _ = _results(name)
  losses, fs = jax.eval_shape(
      functools.partial(fnn.factors, model), params, x, y)
  b = x.shape[0]
  assert losses.shape == (b,)
  assert isinstance(fs, tuple) and len(fs) == len(model.layers)

  def check(layers, shapes, fs):
    for layer, s_in, s_out, f in zip(layers, shapes, shapes[1:], fs):
      if isinstance(layer, L.Dense):
        assert isinstance(f, kinds.Factors)
        assert f.a_prev.shape == (b,) + s_in and f.delta.shape == (b,) + s_out
      elif isinstance(layer, L.Conv1d):
        c_in = s_in[1] if len(s_in) == 2 else 1
        assert isinstance(f, kinds.ConvFactors)
        assert f.patches.shape == (b, s_out[0], layer.kernel_size * c_in)
        assert f.delta.shape == (b,) + s_out
      elif isinstance(layer, L.LayerNorm):
        assert isinstance(f, kinds.ScaleShiftFactors)
        assert f.xhat.shape == f.g.shape == (b,) + s_in
      elif isinstance(layer, L.Residual):
        assert type(f) is tuple and len(f) == len(layer.layers)
        check(layer.layers, L.chain_shapes(layer.layers, s_in), f)
      else:
        assert f == (), (layer, f)

  check(model.layers, model.shapes, fs)


# ---------------------------------------------------------------------------
# 2. Semantics: Conv1d, Flatten, LayerNorm against numbers from the
# definitions (and PyTorch where it is installed).

def _layer_outputs(layer, params, x, g):
  """``apply`` on the batch; per example ``forward``, ``backward`` and the
  kind's per-example gradient; and ``apply``'s own vjp (one compile)."""
  def compute(params, x, g):
    def one(xi, gi):
      z, cache = layer.forward(params, xi)
      g_in, f = layer.backward(params, cache, gi)
      return z, g_in, f
    z, g_in, f = jax.vmap(one)(x, g)
    _, vjp = jax.vjp(layer.apply, params, x)
    return layer.apply(params, x), z, g_in, layer.kind.per_example(f), vjp(g)
  return run_jit(compute, params, jnp.asarray(x), jnp.asarray(g))


def test_conv1d_hand_computed_example():
  """Length 5, kernel 3, stride 2, padding 1, 1 -> 2 channels, by hand.

  x_pad = [0, 1, 2, 3, 4, 5, 0]; T = (5 + 2 - 3) // 2 + 1 = 3 patches:
  [0, 1, 2], [2, 3, 4], [4, 5, 0].
  """
  layer = L.Conv1d(2, 3, stride=2, padding=1)
  assert layer.out_shape((5,)) == (3, 2)
  w = np.zeros((3, 1, 2))
  w[:, 0, 0] = [1.0, 0.0, -1.0]
  w[:, 0, 1] = [0.5, 2.0, 1.0]
  params = L.ConvParams(jnp.asarray(w), jnp.array([0.1, -0.2]))
  x = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
  want = np.array([
      [1 * 0 + 0 * 1 + -1 * 2 + 0.1, 0.5 * 0 + 2 * 1 + 1 * 2 - 0.2],
      [1 * 2 + 0 * 3 + -1 * 4 + 0.1, 0.5 * 2 + 2 * 3 + 1 * 4 - 0.2],
      [1 * 4 + 0 * 5 + -1 * 0 + 0.1, 0.5 * 4 + 2 * 5 + 1 * 0 - 0.2]])
  # The backward of sum(z * g): dL/dw[j, 0, o] = sum_t x_pad[2t + j] g[t, o]
  # and dL/dx[i] = sum over (t, j) with 2t + j = i + 1 of w[j, 0, :] . g[t].
  g = np.array([[1.0, 2.0], [-1.0, 0.5], [3.0, -2.0]])
  want_dw = np.array([
      [0 * 1 + 2 * -1 + 4 * 3, 0 * 2 + 2 * 0.5 + 4 * -2],
      [1 * 1 + 3 * -1 + 5 * 3, 1 * 2 + 3 * 0.5 + 5 * -2],
      [2 * 1 + 4 * -1 + 0 * 3, 2 * 2 + 4 * 0.5 + 0 * -2]])[:, None, :]
  want_db = np.array([1 - 1 + 3, 2 + 0.5 - 2])
  want_dx = np.array([
      0 * 1 + 2 * 2,                                # x[0]: (t0, j1)
      (-1 * 1 + 1 * 2) + (1 * -1 + 0.5 * 0.5),      # (t0, j2), (t1, j0)
      0 * -1 + 2 * 0.5,                             # (t1, j1)
      (-1 * -1 + 1 * 0.5) + (1 * 3 + 0.5 * -2),     # (t1, j2), (t2, j0)
      0 * 3 + 2 * -2])                              # (t2, j1)
  applied, z, g_in, (dw, db), (dp, dx) = _layer_outputs(
      layer, params, x[None], jnp.asarray(g)[None])
  tol = dict(rtol=1e-14, atol=1e-14)
  np.testing.assert_allclose(z[0], want, **tol)  # one-example forward
  np.testing.assert_allclose(applied[0], want, **tol)  # batched apply
  np.testing.assert_allclose(g_in[0], want_dx, **tol)  # hand backward
  np.testing.assert_allclose(dw[0], want_dw, **tol)
  np.testing.assert_allclose(db[0], want_db, **tol)
  # apply's own gradient (what jax.grad differentiates) agrees.
  np.testing.assert_allclose(dp.w, want_dw, **tol)
  np.testing.assert_allclose(dp.b, want_db, **tol)
  np.testing.assert_allclose(dx[0], want_dx, **tol)


def _conv_np(x, w, b, stride, padding):
  """The definition, by loops: ``z[t, o] = b[o] + sum_{j, i}
  x_pad[t s + j, i] w[j, i, o]``; ``x: [L, c_in]``."""
  k, c_in, c_out = w.shape
  xp = np.pad(x, ((padding, padding), (0, 0)))
  t_out = (xp.shape[0] - k) // stride + 1
  z = np.zeros((t_out, c_out))
  for t in range(t_out):
    for o in range(c_out):
      z[t, o] = b[o] + sum(xp[t * stride + j, i] * w[j, i, o]
                           for j in range(k) for i in range(c_in))
  return z


def _conv_grads_np(x, w, g, stride, padding):
  """The gradients of ``sum(z * g)`` by loops: ``(dx, dw, db)``."""
  k, c_in, c_out = w.shape
  xp = np.pad(x, ((padding, padding), (0, 0)))
  dxp, dw = np.zeros_like(xp), np.zeros_like(w)
  for t in range(g.shape[0]):
    for j in range(k):
      for i in range(c_in):
        for o in range(c_out):
          dxp[t * stride + j, i] += w[j, i, o] * g[t, o]
          dw[j, i, o] += xp[t * stride + j, i] * g[t, o]
  return dxp[padding:padding + x.shape[0]], dw, g.sum(0)


# (length, in_channels or None for a plain [L] input, out, kernel, stride,
# padding): a tail the stride skips (x[5] unseen), kernel = padded length,
# stride 3 over channels.
CONV_CASES = [(6, None, 2, 3, 2, 0), (4, 3, 2, 6, 1, 1), (7, 2, 3, 2, 3, 2)]
CONV_IDS = ["plain_skipped_tail", "kernel_is_padded_length", "stride3_pad2"]


def _conv_case(case, seed=0):
  length, c_in, c_out, k, s, p = case
  layer = L.Conv1d(c_out, k, stride=s, padding=p)
  shape = (length,) if c_in is None else (length, c_in)
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(k, c_in or 1, c_out))
  b = rng.normal(size=c_out)
  x = rng.normal(size=(2,) + shape)
  g = rng.normal(size=(2,) + layer.out_shape(shape))
  return layer, L.ConvParams(jnp.asarray(w), jnp.asarray(b)), x, g


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv1d_against_loops(case):
  layer, params, x, g = _conv_case(case)
  applied, z, g_in, (dw, db), (dp, dx) = _layer_outputs(layer, params, x, g)
  w, b = np.asarray(params.w), np.asarray(params.b)
  s, p = layer.stride, layer.padding
  for n in range(x.shape[0]):
    x2 = x[n].reshape(x.shape[1], -1)
    want = _conv_np(x2, w, b, s, p)
    np.testing.assert_allclose(z[n], want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(applied[n], want, rtol=1e-13, atol=1e-13)
    want_dx, want_dw, want_db = _conv_grads_np(x2, w, g[n], s, p)
    want_dx = want_dx.reshape(x[n].shape)
    np.testing.assert_allclose(g_in[n], want_dx, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dw[n], want_dw, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db[n], want_db, rtol=1e-13, atol=1e-13)
  np.testing.assert_allclose(dx, g_in, rtol=1e-13, atol=1e-13)
  np.testing.assert_allclose(dp.w, dw.sum(0), rtol=1e-13, atol=1e-13)
  if case[0] == 6 and case[4] == 2:  # x[5] is in no patch: no gradient
    assert np.all(np.asarray(g_in)[:, 5] == 0)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv1d_against_torch(case):
  torch = pytest.importorskip("torch")
  layer, params, x, g = _conv_case(case, seed=1)
  applied, z, g_in, (dw, db), _ = _layer_outputs(layer, params, x, g)
  x3 = x.reshape(x.shape[0], x.shape[1], -1)  # (B, L, c_in)
  conv = torch.nn.Conv1d(params.w.shape[1], layer.out_channels,
                         layer.kernel_size, stride=layer.stride,
                         padding=layer.padding, dtype=torch.float64)
  with torch.no_grad():  # fnn's w[k, i, o] is torch's weight[o, i, k]
    conv.weight.copy_(torch.from_numpy(np.array(params.w).transpose(2, 1, 0)))
    conv.bias.copy_(torch.from_numpy(np.array(params.b)))
  xt = torch.from_numpy(x3.transpose(0, 2, 1).copy()).requires_grad_(True)
  out = conv(xt)  # (B, c_out, T)
  want = out.detach().numpy().transpose(0, 2, 1)
  np.testing.assert_allclose(applied, want, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(z, want, rtol=1e-12, atol=1e-13)
  out.backward(torch.from_numpy(g.transpose(0, 2, 1).copy()))
  np.testing.assert_allclose(
      g_in, xt.grad.numpy().transpose(0, 2, 1).reshape(x.shape), rtol=1e-12,
      atol=1e-13)
  np.testing.assert_allclose(dw.sum(0),
                             conv.weight.grad.numpy().transpose(2, 1, 0),
                             rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(db.sum(0), conv.bias.grad.numpy(), rtol=1e-12,
                             atol=1e-13)


def test_flatten_is_row_major():
  layer = L.Flatten()
  x = jnp.array([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])  # x[t, c] = 10t + c
  assert layer.out_shape((3, 2)) == (6,)
  y, cache = layer.forward((), x)
  np.testing.assert_array_equal(y, [0, 1, 10, 11, 20, 21])  # t * 2 + c
  np.testing.assert_array_equal(layer.apply((), jnp.stack([x, -x]))[1],
                                [0, -1, -10, -11, -20, -21])
  g_in, f = layer.backward((), cache, jnp.arange(6.0))
  np.testing.assert_array_equal(g_in, [[0, 1], [2, 3], [4, 5]])
  assert f == ()


def _layer_norm_np(x, scale, shift, eps):
  """The definition with the biased variance (divide by n)."""
  n = x.shape[-1]
  mu = x.sum(-1, keepdims=True) / n
  var = ((x - mu) ** 2).sum(-1, keepdims=True) / n
  return (x - mu) / np.sqrt(var + eps) * scale + shift


@pytest.mark.parametrize("shape", [(4,), (3, 5)], ids=["n", "L_C"])
def test_layer_norm_against_formula(shape):
  # A large eps and n = 4 or 5 features: the unbiased variance (n - 1) or
  # eps left out would be off by far more than the tolerance.
  layer = L.LayerNorm(eps=0.5)
  rng = np.random.default_rng(0)
  n = shape[-1]
  params = L.LayerNormParams(jnp.asarray(rng.normal(size=n)),
                             jnp.asarray(rng.normal(size=n)))
  x = rng.normal(size=(2,) + shape) * 3 + 1
  g = rng.normal(size=(2,) + shape)
  applied, y, g_in, (dscale, dshift), (dp, dx) = _layer_outputs(
      layer, params, x, g)
  want = _layer_norm_np(x, np.asarray(params.scale), np.asarray(params.shift),
                        0.5)
  np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
  np.testing.assert_allclose(applied, want, rtol=1e-13, atol=1e-13)
  # Hand backward against apply's vjp (jnp.var, written independently).
  np.testing.assert_allclose(g_in, dx, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(dscale.sum(0), dp.scale, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(dshift.sum(0), dp.shift, rtol=1e-12, atol=1e-13)
  torch = pytest.importorskip("torch")
  want_t = torch.nn.functional.layer_norm(
      torch.from_numpy(x), (n,), torch.from_numpy(np.array(params.scale)),
      torch.from_numpy(np.array(params.shift)), eps=0.5)
  np.testing.assert_allclose(y, want_t.numpy(), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------
# 3. The Conv kind's norm: the Gram and the materialized forms.

def _shapes_in(fn, *args):
  return _all_shapes(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("t,p,c_out,gram", [
    (2, 6, 4, True),    # T^2 = 4 < 24
    (5, 2, 3, False),   # 25 >= 6
    (6, 4, 9, False),   # the boundary T^2 = k c_in c_out: materialized
], ids=["gram", "materialized", "boundary"])
def test_conv_kind_norm_forms(t, p, c_out, gram):
  assert kinds.Conv.uses_gram(t, p, c_out) is gram
  k = 1 if p % 2 else 2  # p = k * c_in
  kind = L.Conv1d(c_out, k).kind
  rng = np.random.default_rng(0)
  b = 4
  f = kinds.ConvFactors(jnp.asarray(rng.normal(size=(b, t, p))),
                        jnp.asarray(rng.normal(size=(b, t, c_out))))
  norms, g = run_jit(lambda f: (kind.norms(f), kind.per_example(f)), f)
  want = np.sqrt(sum(np.sum(np.asarray(v).reshape(b, -1) ** 2, 1)
                     for v in jax.tree.leaves(g)))
  np.testing.assert_allclose(norms, want, rtol=1e-13)
  # The form used: the Gram form forms [B, T, T], never [B, k c_in, c_out].
  shapes = _shapes_in(kind.norms, f)
  assert ((b, p, c_out) in shapes) is not gram, shapes
  assert ((b, t, t) in shapes) is gram, shapes


# float32 overflow: |x|^2 of an input of -2e19 per entry exceeds float32's
# max (3.4e38) while the per-example gradient itself is finite.
HUGE = 2e19
# float32 against NumPy float64 of the same float32 gradients: a handful of
# roundings of ~6e-8 each; 1e-5 is ~100x that, far from the inf/NaN it
# guards against (as in test_numerics).
RTOL32 = 1e-5


def _finite_case(kind, act):
  """float32 ``(model, params, x, y)`` whose per-example gradients are
  finite but whose unscaled norm formula overflows.

  ``conv_*``: example 1 is ``-2e19`` everywhere and the conv weights are
  >= 0 with zero bias, so its pre-activations are all about ``-6e19``; its
  patches' inner products ``p_t . p_t'`` (the Gram form) overflow: with
  ReLU ``delta = 0`` (``inf * 0``, NaN), with leaky ReLU ``inf``. With the
  identity its gradient entries are ~1e19 (finite, their squares are not).
  ``layernorm``: the Dense after the LayerNorm has weights ~5e18, so
  ``dL/dy`` of the LayerNorm, hence its scale and shift gradients, are
  ~1e19 (finite; the sum of their squares is not).
  """
  rng = np.random.default_rng(0)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  y = jnp.array([0, 1, 1, 0])
  if kind == "layernorm":
    model = fnn.Sequential((3, 2), [L.LayerNorm(), L.Flatten(), L.Dense(2)])
    params = (L.LayerNormParams(f32([1.0, -0.5]), f32([0.2, 0.1])), (),
              fnn.Dense(f32(rng.choice([-HUGE, HUGE], (6, 2)) / 4),
                        f32([0.0, 0.0])))
    return model, params, f32(rng.normal(size=(4, 3, 2))), y
  conv = (L.Conv1d(2, 3, stride=3) if kind == "conv_gram"
          else L.Conv1d(2, 2, stride=1))
  model = fnn.Sequential((6,), [conv, L.Activation(act), L.Flatten(),
                                L.Dense(2)])
  k, n = conv.kernel_size, model.shapes[3][0]
  params = (L.ConvParams(f32(np.abs(rng.normal(size=(k, 1, 2))) / k),
                         f32([0.0, 0.0])), (), (),
            fnn.Dense(f32(rng.normal(size=(n, 2)) / n), f32([0.1, -0.1])))
  x = f32(rng.normal(size=(4, 6))).at[1].set(-HUGE)
  return model, params, x, y


def _unscaled_norms(model, fs):
  """Each parameter layer's norm by its kind's formula WITHOUT scaling
  (float32): what the kinds' scaling guards against."""
  out = []
  for _, layer, kind, f in fnn.gradients.kind_leaves(model, fs):
    if isinstance(f, kinds.ConvFactors) and kinds.Conv.uses_gram(
        f.patches.shape[1], f.patches.shape[2], f.delta.shape[2]):
      sq = jnp.sum(jnp.einsum("btp,bsp->bts", f.patches, f.patches)
                   * jnp.einsum("bto,bso->bts", f.delta, f.delta), (1, 2))
      sq = sq + jnp.sum(jnp.sum(f.delta, 1) ** 2, -1)
    else:
      sq = sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, 1)
               for v in jax.tree.leaves(kind.per_example(f)))
    out.append(jnp.sqrt(sq))
  return jnp.stack(out, -1)


FINITE_CASES = [("conv_gram", "relu"), ("conv_gram", "leaky_relu"),
                ("conv_materialized", "identity"), ("layernorm", None)]
F32_MAX = float(jnp.finfo(jnp.float32).max)


@pytest.mark.parametrize("kind,act", FINITE_CASES,
                         ids=["conv_gram_relu", "conv_gram_leaky",
                              "conv_materialized_identity", "layernorm"])
def test_finite_gradients_give_finite_norms_float32(kind, act):
  model, params, x, y = _finite_case(kind, act)
  assert _conv_forms(model) == {"conv_gram": [True],
                                "conv_materialized": [False],
                                "layernorm": []}[kind]
  clip = 1.0

  def compute(params, x, y):
    # Example 1's label is the class the network ranks lower: its output
    # delta is about +-1, not the 0 of a saturated, correct softmax.
    y = y.at[1].set(jnp.argmin(model.apply(params, x[1:2])[0]))
    per = jax.vmap(jax.grad(_one_loss(model)), in_axes=(None, 0, 0))(
        params, x, y)
    return (per, fnn.per_example_grad_norms(model, params, x, y),
            fnn.grad_stats(model, params, x, y),
            fnn.dp_grad(model, params, x, y, clip=clip, noise=0.0,
                        key=jax.random.key(0)),
            _unscaled_norms(model, fnn.factors(model, params, x, y)[1]))

  per, norms, s, dp, unscaled = run_jit(compute, params, x, y)
  chex.assert_tree_all_finite(per)
  # The case is real: the unscaled formula is not finite for some example.
  assert not np.all(np.isfinite(unscaled))
  b = x.shape[0]
  per64 = jax.tree.map(lambda v: np.asarray(v, np.float64), per)
  rows = lambda tree: np.concatenate(
      [v.reshape(b, -1) for v in jax.tree.leaves(tree)], 1)
  want = np.linalg.norm(rows(per64), axis=1)
  layer = np.stack([np.linalg.norm(rows(f), axis=1) for _, _, _, f in
                    fnn.gradients.kind_leaves(model, per64)], 1)
  assert norms.dtype == jnp.float32
  np.testing.assert_allclose(norms, want, rtol=RTOL32)
  np.testing.assert_allclose(s.norms, want, rtol=RTOL32)
  np.testing.assert_allclose(s.layer_norms, layer, rtol=RTOL32)
  # Finite wherever the true value is representable in float32: the mean
  # and the second moment per coordinate; the squared norms (trace_sigma,
  # grad_sq_norm) only where |g_i|^2 itself is.
  chex.assert_tree_all_finite(s.mean)
  second = jax.tree.map(lambda v: (v**2).mean(0), per64)
  for got, ref in zip(jax.tree.leaves(s.second_moment),
                      jax.tree.leaves(second)):
    ok = ref < F32_MAX
    np.testing.assert_allclose(np.asarray(got, np.float64)[ok], ref[ok],
                               rtol=RTOL32)
  if np.max(want) ** 2 < F32_MAX:
    chex.assert_tree_all_finite(s)
  chex.assert_tree_all_finite(dp.grads)
  assert float(dp.nonfinite) == 0.0
  c = np.minimum(1.0, clip / np.maximum(want, 1e-30))  # a 0 norm: c = 1
  chex.assert_trees_all_close(
      jax.tree.map(lambda v: np.asarray(v, np.float64), dp.grads),
      jax.tree.map(lambda v: np.tensordot(c, v, axes=1) / b, per64),
      rtol=RTOL32, atol=1e-7)  # atol: float32 rounding of O(0.1) entries


# ---------------------------------------------------------------------------
# 4. The jaxpr check: no per-example weight gradient is formed.

def _all_shapes(jaxpr):
  """Every intermediate shape in a (closed) jaxpr, sub-jaxprs included
  (as in test_gradients)."""
  shapes = []
  for eqn in jaxpr.eqns:
    shapes += [tuple(v.aval.shape) for v in eqn.outvars]
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None:
        shapes += _all_shapes(getattr(inner, "jaxpr", inner))
  return shapes


def _gram_cnn():
  # (8,) -> (4, 6) -> (2, 5) -> 10 -> 3; both convs take the Gram form:
  # 4^2 < 3 * 1 * 6 and 2^2 < 3 * 6 * 5.
  return fnn.Sequential((8,), [
      L.Conv1d(6, 3, stride=2, padding=1), L.Activation("relu"),
      L.Conv1d(5, 3, stride=2, padding=1), L.Activation("relu"),
      L.Flatten(), L.Dense(3)])


def _dense_seq():
  return fnn.Sequential((12,), [
      L.Dense(8), L.Activation("tanh"),
      L.Residual(L.LayerNorm(), L.Dense(8), L.Activation("relu")),
      L.Dense(3)])


JAXPR_B = 7
# Per model: the per-example weight gradients [B, k c_in, c_out] (and their
# [B, k, c_in, c_out] form) or [B, n_in, n_out].
PER_EXAMPLE_W = {
    "gram_cnn": (_gram_cnn, [(JAXPR_B, 3, 6), (JAXPR_B, 3, 1, 6),
                             (JAXPR_B, 18, 5), (JAXPR_B, 3, 6, 5),
                             (JAXPR_B, 10, 3)]),
    "dense_sequential": (_dense_seq, [(JAXPR_B, 12, 8), (JAXPR_B, 8, 8),
                                      (JAXPR_B, 8, 3)]),
}


def _jaxpr_shapes(fn, model):
  params, x, y = _problem(model, b=JAXPR_B)
  return _all_shapes(jax.make_jaxpr(fn)(params, x, y).jaxpr)


@pytest.mark.parametrize("fn", ["grad", "per_example_grad_norms", "dp_grad"])
@pytest.mark.parametrize("name", list(PER_EXAMPLE_W))
def test_no_per_example_weight_gradient_is_formed(name, fn):
  make, forbidden = PER_EXAMPLE_W[name]
  model = make()
  if name == "gram_cnn":
    assert _conv_forms(model) == [True, True]
  call = {
      "grad": lambda p, x, y: fnn.grad(model, p, x, y),
      "per_example_grad_norms":
          lambda p, x, y: fnn.per_example_grad_norms(model, p, x, y),
      "dp_grad": lambda p, x, y: fnn.dp_grad(
          model, p, x, y, clip=1.0, noise=1.0, key=jax.random.key(0)).grads,
  }[fn]
  shapes = _jaxpr_shapes(call, model)
  assert not set(forbidden) & set(shapes), set(forbidden) & set(shapes)


@pytest.mark.parametrize("name", list(PER_EXAMPLE_W))
def test_per_example_grads_does_form_them(name):
  """The check above can fail: per_example_grads forms these arrays."""
  make, forbidden = PER_EXAMPLE_W[name]
  model = make()
  shapes = set(_jaxpr_shapes(
      lambda p, x, y: fnn.per_example_grads(model, p, x, y), model))
  want = {(JAXPR_B, 3, 1, 6), (JAXPR_B, 3, 6, 5), (JAXPR_B, 10, 3)} if (
      name == "gram_cnn") else set(forbidden)
  assert want <= shapes, want - shapes


# ---------------------------------------------------------------------------
# 5. Bad construction and bad input.

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
  params = _zeros_params(model)
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
  params = _zeros_params(model)
  y = np.zeros(x.shape[0] if x.ndim > 1 else 1, int) if fn is fnn.grad else (
      np.array(0))
  with pytest.raises(ValueError, match=match):
    fn(model, params, x, y)


# ---------------------------------------------------------------------------
# 6. The Sequential API.

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
  params = _zeros_params(a)
  f(a, params)
  f(b, params)  # equal model: the same compiled program
  assert f._cache_size() == 1
  f(_api_seq(4), _zeros_params(_api_seq(4)))
  assert f._cache_size() == 2


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


def test_sequential_apply_and_mean_loss_against_numpy():
  model = _api_seq()
  params, x, y = _problem(model, b=3)
  conv, _, (ln, inner, _), _, dense = jax.tree.map(np.asarray, params)
  x = np.asarray(x)
  logits = []
  for xi in x:
    h = np.maximum(_conv_np(xi, conv.w, conv.b, 2, 1), 0)  # (4, 3)
    h = h + np.tanh(_conv_np(_layer_norm_np(h, ln.scale, ln.shift, 1e-5),
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
# 7. Dropout with a Sequential.

def test_dropout_masks_and_grad_with_masks():
  model = fnn.Sequential((9,), [
      L.Conv1d(3, 3, stride=2, padding=1), L.Activation("relu"),
      L.Flatten(), L.Dense(6), L.Activation("tanh"),
      L.Residual(L.Dense(6), L.Activation("relu")),  # no mask inside
      L.Dense(3)])
  b, rate = 6, 0.5
  params, x, y = _problem(model, b=b)

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
# 8. kfac_factors on a Sequential.

def test_kfac_factors_sequential():
  conv = L.Conv1d(3, 3, stride=2, padding=1)
  model = fnn.Sequential((9, 2), [
      conv, L.LayerNorm(), L.Activation("tanh"), L.Flatten(), L.Dense(4)])
  params, x, y = _problem(model, b=6)
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

"""The layer axis: every layer type's hand backward against jax.grad in
float64 (random stacks mixing every layer type), the layers' semantics
against hand-computed numbers, loops from the definitions and PyTorch (when
installed), the Conv kind's two norm forms, finite norms in float32, and the
jaxpr check that no per-example weight gradient is formed.

Speed: each float64 model is compiled ONCE (one jitted function returns
every hand quantity and its reference, and one test per model reads them,
so pytest-xdist never compiles a model twice), test programs are compiled
with ``layer_helpers.FAST_COMPILE``, and data are drawn with NumPy (an eager
JAX op is a compile of its own).
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import stats
from fnn.layers import kinds
from layer_helpers import (all_shapes, assert_close, conv_forms, conv_np,
                           layer_norm_np, one_loss, problem, run_jit)

L = fnn.layers


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


def _flat_norms(tree, b):
  return jnp.sqrt(sum(jnp.sum(v.reshape(b, -1) ** 2, 1)
                      for v in jax.tree.leaves(tree)))


@functools.cache
def _results(name):
  """Every hand quantity and its reference for one model, one compile."""
  make, clip = MODELS[name]
  model = make()
  params, x, y = problem(model)
  b = x.shape[0]
  kw = dict(clip=clip, noise=0.0, key=jax.random.key(3))

  def compute(params, x, y):
    one = one_loss(model)
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
        dp_vs_autodiff=(
            dp.grads, stats.dp_grad_autodiff(model, params, x, y, **kw).grads),
        dp_norms=(dp.norms, norms),
        dp_clipped=(dp.clipped, jnp.mean((norms > clip).astype(norms.dtype))),
        backprop=(fnn.backprop(model, params, x[0], y[0]),
                  jax.grad(one)(params, x[0], y[0])),
        input_grad=(fnn.input_grad(model, params, x[1], y[1]),
                    jax.grad(one, argnums=1)(params, x[1], y[1])),
    )

  out = run_jit(compute, params, x, y)
  return model, params, x, y, clip, jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("name", list(MODELS))
def test_hand_equals_autodiff(name):
  """Every quantity of every model equals its reference (all are checked;
  the failure lists every quantity that differs)."""
  _, _, _, _, clip, out = _results(name)
  failed = []
  for quantity, (got, want) in out.items():
    try:
      assert_close(got, want)
    except AssertionError as e:
      failed.append(f"{quantity}: {e}")
  assert not failed, "\n".join(failed)
  # The model exercises what it claims: the clip falls between the norms
  # (both branches of dp_grad's clipping run) and no gradient leaf is
  # trivially zero.
  norms = out["per_example_grad_norms"][1]
  assert norms.min() < clip < norms.max(), (norms, clip)
  for leaf in jax.tree.leaves(out["grad"][1]):
    assert np.max(np.abs(leaf)) > 1e-3


def test_conv_norm_forms_both_covered():
  forms = [f for name in MODELS for f in conv_forms(MODELS[name][0]())]
  assert True in forms and False in forms, forms


@pytest.mark.parametrize("name", list(MODELS))
def test_factors_structure(name):
  """fnn.factors: losses [B]; per layer the kind's factors with a leading B
  axis, () for parameterless layers, tuples for Residual."""
  model = MODELS[name][0]()
  params, x, y = problem(model)
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
    want = conv_np(x2, w, b, s, p)
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
  want = layer_norm_np(x, np.asarray(params.scale), np.asarray(params.shift),
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
  return all_shapes(jax.make_jaxpr(fn)(*args).jaxpr)


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
  assert conv_forms(model) == {"conv_gram": [True],
                                "conv_materialized": [False],
                                "layernorm": []}[kind]
  clip = 1.0

  def compute(params, x, y):
    # Example 1's label is the class the network ranks lower: its output
    # delta is about +-1, not the 0 of a saturated, correct softmax.
    y = y.at[1].set(jnp.argmin(model.apply(params, x[1:2])[0]))
    per = jax.vmap(jax.grad(one_loss(model)), in_axes=(None, 0, 0))(
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
  params, x, y = problem(model, b=JAXPR_B)
  return all_shapes(jax.make_jaxpr(fn)(params, x, y).jaxpr)


@pytest.mark.parametrize("fn", ["grad", "per_example_grad_norms", "dp_grad"])
@pytest.mark.parametrize("name", list(PER_EXAMPLE_W))
def test_no_per_example_weight_gradient_is_formed(name, fn):
  make, forbidden = PER_EXAMPLE_W[name]
  model = make()
  if name == "gram_cnn":
    assert conv_forms(model) == [True, True]
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



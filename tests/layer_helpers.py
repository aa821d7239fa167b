"""Helpers shared by the layer-axis tests (test_layers, test_sequential):
a max-relative tree comparison, fast-compiled jit, NumPy-drawn problems and
NumPy references written from the layers' definitions."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn.layers import Conv1d, Residual, chain_shapes, kinds
from test_gradients import _all_shapes as all_shapes  # noqa: F401 (re-export)

# float64 hand vs autodiff: both sum the same terms in different orders, so
# they differ by rounding: at most 1.5e-15 relative here (measured), ~2e-12
# for a LayerNorm over 2 features (1/sqrt(var) of two numbers is badly
# conditioned). 1e-10 leaves wide margin for other seeds and still catches
# any wrong term (a wrong term is O(1e-2) relative or more).
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
  except RuntimeError:  # an XLA without these options (JaxRuntimeError)
    compiled = lowered.compile()
  return compiled(*args)


BATCH = 5


def problem(model, seed=0, b=BATCH):
  """float64 ``(params, x, y)`` drawn with NumPy (no per-op compiles).

  Every leaf is random: weights ``N(0, 1/fan_in)``, vectors (biases,
  LayerNorm's scale and shift) ``0.5 + N(0, 1/n)``, so a dropped bias term
  or a swapped scale/shift cannot pass.
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


def zeros_params(model, dtype=jnp.float64):
  """Params of the right structure without running any random op."""
  shapes = jax.eval_shape(lambda k: model.init(k, dtype), jax.random.key(0))
  return jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), shapes)


def one_loss(model):
  return lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])


def conv_forms(model):
  """:meth:`kinds.Conv.uses_gram` of every Conv1d of ``model`` (residual
  blocks included), in order."""
  out = []

  def walk(layers, shapes):
    for layer, s_in, s_out in zip(layers, shapes, shapes[1:]):
      if isinstance(layer, Conv1d):
        c_in = s_in[1] if len(s_in) == 2 else 1
        t, p, c = s_out[0], layer.kernel_size * c_in, layer.out_channels
        out.append(kinds.Conv.uses_gram(t, p, c))
      elif isinstance(layer, Residual):
        walk(layer.layers, chain_shapes(layer.layers, s_in))

  walk(model.layers, model.shapes)
  return out


def conv_np(x, w, b, stride, padding):
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


def layer_norm_np(x, scale, shift, eps):
  """The definition with the biased variance (divide by n)."""
  n = x.shape[-1]
  mu = x.sum(-1, keepdims=True) / n
  var = ((x - mu) ** 2).sum(-1, keepdims=True) / n
  return (x - mu) / np.sqrt(var + eps) * scale + shift

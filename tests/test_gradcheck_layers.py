"""fnn.check_grads on any network: every layer type, and layers users write.

The nets are tiny (at most 139 parameters, batch 5-8) so that each check
compiles and runs in seconds; the MLP checks are in test_gradcheck.py.
"""
import dataclasses
import json
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import gradcheck
from fnn import layers as L
from fnn.layers import kinds


def _problem(model, seed=0, batch=5, dtype=jnp.float64):
  """Generic params N(0, 0.5^2), inputs N(0, 1) and labels, from NumPy: no
  compiles of JAX's random functions, one per shape (seconds of CPU)."""
  rng = np.random.default_rng(seed)
  draw = lambda shape, s=1.0: jnp.asarray(s * rng.normal(size=shape), dtype)
  shapes = jax.eval_shape(lambda k: model.init(k, dtype), jax.random.key(0))
  params = jax.tree.map(lambda v: draw(v.shape, 0.5), shapes)
  x = draw((batch,) + model.in_shape)
  return params, x, jnp.asarray(rng.integers(0, model.n_out, batch))


# --------------------------------------------------------------------------
# A user's Dense variant on an existing factor kind (kinds.Outer).


@dataclasses.dataclass(frozen=True)
class GainDense(L.Layer):
  r"""``z = gain (a_prev @ w) + b``, written outside fnn.

  Backward for one example, ``delta = dL/dz``::

    dL/dw = gain outer(a_prev, delta) = outer(gain a_prev, delta)
    dL/db = delta,   dL/da_prev = gain delta @ w.T

  so the factors are ``kinds.Factors(gain a_prev, delta)`` (kind Outer).
  ``forget_gain`` is the deliberate bug: ``dL/dw`` without its ``gain``.
  """
  n_out: int
  gain: float = 2.0
  forget_gain: bool = False

  kind = kinds.Outer(fnn.Dense)  # a class attribute, not a field

  def out_shape(self, in_shape):
    return (self.n_out,)

  def param_shapes(self, in_shape):
    return fnn.Dense((in_shape[0], self.n_out), (self.n_out,))

  def init(self, key, in_shape, dtype):
    w = jax.random.normal(key, (in_shape[0], self.n_out), dtype)
    return fnn.Dense(w / math.sqrt(in_shape[0]), jnp.zeros((self.n_out,), dtype))

  def forward(self, params, x):
    return self.gain * (x @ params.w) + params.b, x

  def backward(self, params, cache, g):
    a = cache if self.forget_gain else self.gain * cache
    return self.gain * (g @ params.w.T), kinds.Factors(a, g)

  def apply(self, params, x):
    return self.gain * (x @ params.w) + params.b[None, :]


# --------------------------------------------------------------------------
# A user's layer with a factor kind of its own.


class ScaleParams(NamedTuple):
  s: jax.Array  # [n]


class ScaleFactors(NamedTuple):
  x: jax.Array  # the layer's input, [..., n]
  g: jax.Array  # dL/dy, [..., n]


class Elementwise:
  r"""The smallest kind a check needs: ``total`` and ``per_example`` (no
  ``dot``, no ``astype``: check_grads falls back on ``per_example``)."""

  def per_example(self, f):
    axes = tuple(range(1, f.g.ndim - 1))  # positions between B and n
    return ScaleParams(jnp.sum(f.x * f.g, axis=axes))

  def total(self, f):
    return ScaleParams(jnp.sum(self.per_example(f).s, axis=0))


def _lead(s, ndim):
  return s.reshape((1,) * (ndim - 1) + s.shape)


@dataclasses.dataclass(frozen=True)
class Scale(L.Layer):
  r"""``y = x * s`` over the last axis: ``dL/dx = g * s``,
  ``dL/ds = sum_positions x * g`` (factors ``(x, g)``). ``use_output`` is
  the deliberate bug: the factors hold ``y`` where ``x`` belongs."""
  use_output: bool = False

  kind = Elementwise()

  def param_shapes(self, in_shape):
    return ScaleParams((in_shape[-1],))

  def init(self, key, in_shape, dtype):
    return ScaleParams(jax.random.uniform(key, (in_shape[-1],), dtype, 0.5,
                                          1.5))

  def forward(self, params, x):
    return x * _lead(params.s, x.ndim), x

  def backward(self, params, cache, g):
    s = _lead(params.s, g.ndim)
    return g * s, ScaleFactors(cache * s if self.use_output else cache, g)

  def apply(self, params, x):
    return x * _lead(params.s, x.ndim)


def _net():
  """Every layer type: fnn's Conv1d, Flatten, LayerNorm, Residual (with a
  sigmoid inside), Dense and ReLU (kinks), and the two user layers above.
  Scale sees ``[length, channels]``."""
  return fnn.Sequential((6,), [
      L.Conv1d(2, 3), Scale(), L.Flatten(), GainDense(6),
      L.Activation("relu"),
      L.Residual(L.LayerNorm(), L.Dense(6), L.Activation("sigmoid")),
      L.Dense(3)])


_ROWS = [(0, "w", "Conv1d"), (0, "b", "Conv1d"), (1, "s", "Scale"),
         (3, "w", "GainDense"), (3, "b", "GainDense"),
         ("5.0", "scale", "LayerNorm"), ("5.0", "shift", "LayerNorm"),
         ("5.1", "w", "Dense"), ("5.1", "b", "Dense"), (6, "w", "Dense"),
         (6, "b", "Dense")]


def _small():
  """Conv1d, the user's Scale on ``[length, channels]``, a Residual block
  with LayerNorm and a sigmoid, Dense: one of each factor kind."""
  return fnn.Sequential((6,), [
      L.Conv1d(2, 3), Scale(), L.Flatten(),
      L.Residual(L.LayerNorm(), L.Dense(8), L.Activation("sigmoid")),
      L.Dense(3)])


def test_every_layer_type_passes_in_float64():
  """Full mode materializes the per-example gradients of every kind (the
  user's Elementwise included)."""
  params, x, y = _problem(_net())
  report = fnn.check_grads(_net(), params, x, y, mode="full")
  assert report.passed and report.status in ("pass", "kink"), report.table()
  assert [(r.layer, r.leaf, r.layer_type) for r in report.rows] == _ROWS
  for r in report.rows:
    assert r.autodiff.scaled < 1e-12 and r.per_example.scaled < 1e-10
  d = json.loads(json.dumps(report.to_dict()))
  assert d["model"]["layers"][5].startswith("Residual(LayerNorm")
  assert d["rows"][5]["layer"] == "5.0" and d["rows"][5]["layer_type"] == (
      "LayerNorm")
  assert "layer 5.0 scale (LayerNorm)" in report.table()


def test_every_kind_passes_in_directional_mode():
  """Each example's directional derivative: Outer, Conv and ScaleShift by
  their ``dot``, the user's Elementwise (which has none) by its
  ``per_example`` contracted with the direction."""
  params, x, y = _problem(_small())
  report = fnn.check_grads(_small(), params, x, y, mode="directional")
  assert report.passed and report.status == "pass", report.table()
  assert [r.name for r in report.rows] == [
      "layer 0 w (Conv1d)", "layer 0 b (Conv1d)", "layer 1 s (Scale)",
      "layer 3.0 scale (LayerNorm)", "layer 3.0 shift (LayerNorm)",
      "layer 3.1 w (Dense)", "layer 3.1 b (Dense)", "layer 4 w (Dense)",
      "layer 4 b (Dense)"]
  for r in report.rows:
    assert r.autodiff.scaled < 1e-12 and r.per_example.scaled < 1e-10


def test_wrong_user_backwards_fail_naming_their_rows():
  """Scale's factors hold y = x s where x belongs, GainDense's dL/dw forgets
  its gain: exactly those two rows FAIL; every other row (per example too)
  passes. (The correct layers pass in the test above.)"""
  model = fnn.Sequential((6,), [
      Scale(use_output=True), GainDense(4, forget_gain=True),
      L.Activation("tanh"), L.Dense(3)])
  params, x, y = _problem(model)
  report = fnn.check_grads(model, params, x, y)
  assert not report.passed
  assert [r.status for r in report.rows] == [
      "FAIL", "FAIL", "pass", "pass", "pass"], report.table()
  assert [r.name for r in report.rows][:2] == [
      "layer 0 s (Scale)", "layer 1 w (GainDense)"]
  assert report.failures()[1].startswith("layer 1 w (GainDense) (6, 4): FAIL")
  gain = report.rows[1]
  assert gain.autodiff.scaled > 0.3 and gain.per_example.scaled > 0.3


def _saturated():
  """float32 params of :func:`_small` whose sigmoid inside the Residual
  block rounds to exactly 1 (sigma' = 0 against ~1e-8 in float64) for some
  examples: unit 0 of the block's Dense gets ``z = 17 + 8 (a @ w)``."""
  params, x, y = _problem(_small(), batch=8, dtype=jnp.float32)
  ln, (w, b), act = params[3]
  params = params[:3] + ((ln, fnn.Dense(w.at[:, 0].multiply(8),
                                        b.at[0].set(17)), act),) + params[4:]
  return params, x, y


def test_saturated_examples_inside_a_residual_block_are_flagged():
  """The walk reaches into the Residual block: the examples whose sigmoid
  saturated in float32 are flagged (and a check leaves them out)."""
  params, x, _ = _saturated()
  zs = gradcheck._activation_inputs(_small(), params, x)
  assert [a.name for a, _ in zs] == ["sigmoid", "softmax"]
  saturated = np.asarray(jnp.any(jax.nn.sigmoid(zs[0][1]) == 1, axis=-1))
  assert 0 < saturated.sum() < 8
  flags = np.asarray(gradcheck._unreliable_jit(_small(), params, x))
  assert (flags >= saturated).all() and flags.sum() < 8


@pytest.mark.slow  # 12 CPU s, mostly compiling a float32 check
def test_float32_check_of_correct_layers_does_not_fail():
  """In float32 a correct net (a user layer included) is never FAIL: it is
  judged against float32's own jax.grad, its formula re-run in float64, and
  the saturated examples are left out."""
  params, x, y = _saturated()
  flags = np.asarray(gradcheck._unreliable_jit(_small(), params, x))
  report = fnn.check_grads(_small(), params, x, y)
  assert report.dtype == "float32" and report.passed, report.table()
  assert report.left_out == flags.sum() > 0
  assert all(r.formula.ok for r in report.rows)


def test_a_layer_with_params_but_no_kind_is_refused():
  @dataclasses.dataclass(frozen=True)
  class NoKind(Scale):
    kind = None

  model = fnn.Sequential((4,), [NoKind(), L.Dense(2)])
  params = (ScaleParams(jnp.ones(4)), fnn.Dense(jnp.ones((4, 2)), jnp.zeros(2)))
  with pytest.raises(ValueError, match="needs a `kind`"):
    fnn.check_grads(model, params, jnp.ones((3, 4)), jnp.array([0, 1, 0]))

"""fnn.hvp, fnn.ggn_vp and fnn.hessian_eigs against autodiff (float64).

``fnn.hvp`` (Pearlmutter's R through the hand-derived layers) against
``jax.jvp(jax.grad(model.mean_loss))``; ``fnn.ggn_vp`` against
``J^T H J v`` built by autodiff on the batched reference ``model._logits``
with the split the docs state (fused pairs at the logits, others at the
output activation); ``fnn.hessian_eigs`` against ``eigvalsh`` of the
brute-force matrices. Every MLP case covers one (output, loss) pair, a depth
of 1-3 dense layers, hidden activations cycled so that each built-in one
appears, and a batch of 1 or 5; the Sequential stacks are test_layers'
(Conv1d with stride/padding variety, LayerNorm, Residual, Flatten).

Speed: one jitted program per case returns the products and both
references (``layer_helpers.run_jit``: fast XLA:CPU options).
"""
import dataclasses
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fnn
from fnn import losses as loss_lib
from fnn.curvature_vp import check_layer_rops
from helpers import HIDDEN, PAIRS, problem, sizes_for
from layer_helpers import assert_close, run_jit
from layer_helpers import problem as seq_problem
from test_layers import MODELS as SEQ_MODELS

# Built-in names only: another test module may have registered an activation
# or a loss (without grad2) before this one is collected.
_BUILTIN_PAIRS = [(o, l) for o, l in PAIRS if l in loss_lib._BUILTIN
                  and o in fnn.activations._BUILTIN]


def _mlp_cases():
  """One case per (output, loss) pair: depth 1-3 dense layers, batch 1 or 5
  (both with every depth), hidden activations cycled over every built-in."""
  hidden = itertools.cycle(HIDDEN)
  cases = []
  for i, (out, loss) in enumerate(_BUILTIN_PAIRS):
    depth, batch = 1 + i % 3, (1, 5)[i % 2]
    acts = tuple(next(hidden) for _ in range(depth - 1))
    cases.append((out, loss, depth, batch, acts))
  return cases


MLP_CASES = _mlp_cases()


def test_cases_cover_every_hidden_activation():
  used = {a for *_, acts in MLP_CASES for a in acts}
  assert used == set(HIDDEN), set(HIDDEN) - used


def _full_targets(model, y):
  """Class labels as one-hot rows; targets as they are."""
  if jnp.issubdtype(y.dtype, jnp.integer):
    return jax.nn.one_hot(y, model.n_out, dtype=jnp.float64)
  return y


def hvp_reference(model, params, x, y, v):
  return jax.jvp(lambda p: jax.grad(model.mean_loss)(p, x, y), (params,),
                 (v,))[1]


def ggn_reference(model, params, x, y, v):
  """``(1/B) sum_b J_b^T H_b J_b v`` by autodiff: ``f = z`` for fused pairs
  (``H`` of ``loss.fn_z``), else ``f = output(z)`` (``H`` of ``loss.fn``)."""
  y = _full_targets(model, y)

  def split(p, xb):
    z = model._logits(p, xb[None])[0]
    return z if model.fused else model.output.fn(z)

  def loss_of_f(f, yb):
    return model.loss.fn_z(f, yb) if model.fused else model.loss.fn(f, yb)

  def one(xb, yb):
    f, jv = jax.jvp(lambda p: split(p, xb), (params,), (v,))
    u = jax.jvp(lambda f: jax.grad(loss_of_f)(f, yb), (f,), (jv,))[1]  # H Jv
    return jax.vjp(lambda p: split(p, xb), params)[1](u)[0]

  return jax.tree.map(lambda t: jnp.mean(t, 0), jax.vmap(one)(x, y))


def _tangent(params, seed=7):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)


def _compare(model, params, x, y):
  v = _tangent(params)

  def compute(params, x, y, v):
    return dict(
        hvp=(fnn.hvp(model, params, x, y, v),
             hvp_reference(model, params, x, y, v)),
        ggn_vp=(fnn.ggn_vp(model, params, x, y, v),
                ggn_reference(model, params, x, y, v)))

  out = run_jit(compute, params, x, y, v)
  for quantity, (got, want) in out.items():
    assert_close(got, want), quantity
  return out


@pytest.mark.parametrize(
    "out,loss,depth,batch,acts", MLP_CASES,
    ids=[f"{o}-{l}-d{d}-b{b}" for o, l, d, b, _ in MLP_CASES])
def test_mlp_products_equal_autodiff(out, loss, depth, batch, acts):
  model = fnn.MLP(sizes_for(depth), activation=acts, output=out, loss=loss)
  params, x, y = problem(model, batch=batch)
  _compare(model, params, x, y)


@pytest.mark.parametrize("name", list(SEQ_MODELS))
def test_sequential_products_equal_autodiff(name):
  model = SEQ_MODELS[name][0]()
  params, x, y = seq_problem(model, b=3)
  out = _compare(model, params, x, y)
  for leaf in jax.tree.leaves(out["hvp"][1]):  # no trivially-zero leaf
    assert np.max(np.abs(leaf)) > 1e-6


def test_no_jit():
  """An eager call equals the reference (a one-layer model: few op
  compiles; the jitted cases above cover every path)."""
  model = fnn.MLP((3, 2), output="sigmoid", loss="squared_error")
  params, x, y = problem(model, batch=3)
  v = _tangent(params)
  want = run_jit(functools.partial(hvp_reference, model), params, x, y, v)
  assert_close(fnn.hvp(model, params, x, y, v), want)


# ---------------------------------------------------------------------------
# User-registered activations and losses.

def _tanh_act(name, grad2):
  return fnn.register_activation(
      name, jnp.tanh, lambda z, a: 1 - a * a, grad2=grad2, replace=True)


def test_user_activation_grad2_is_used():
  """A correct grad2 agrees with autodiff; a deliberately wrong one (the
  sign flipped) makes fnn.hvp disagree, and only fnn.hvp (the GGN needs no
  sigma'')."""
  good = _tanh_act("hvp_test_tanh", lambda z, a: -2 * a * (1 - a * a))
  bad = _tanh_act("hvp_test_bad_tanh", lambda z, a: 2 * a * (1 - a * a))
  for act, ok in ((good, True), (bad, False)):
    model = fnn.MLP((4, 5, 3), activation=act, output="identity",
                    loss="squared_error")
    params, x, y = problem(model, batch=5)
    v = _tangent(params)
    got, want, ggn, ggn_want = run_jit(
        lambda p, x, y, v: (fnn.hvp(model, p, x, y, v),
                            hvp_reference(model, p, x, y, v),
                            fnn.ggn_vp(model, p, x, y, v),
                            ggn_reference(model, p, x, y, v)),
        params, x, y, v)
    assert_close(ggn, ggn_want)
    err = max(float(np.max(np.abs(g - w)) / np.max(np.abs(w)))
              for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert (err < 1e-10) if ok else (err > 1e-3), (act.name, err)


def test_activation_without_grad2_names_it():
  act = fnn.register_activation("hvp_test_no_grad2", jnp.tanh,
                                lambda z, a: 1 - a * a, replace=True)
  model = fnn.MLP((3, 4, 2), activation=act, output="identity",
                  loss="squared_error")
  params, x, y = problem(model, batch=2)
  v = _tangent(params)
  with pytest.raises(ValueError, match="'hvp_test_no_grad2'.*grad2"):
    jax.eval_shape(functools.partial(fnn.hvp, model), params, x, y, v)
  out = fnn.Activation("hvp_test_no_grad2_out", jnp.tanh,
                       lambda z, a: 1 - a * a)
  model = fnn.MLP((3, 2), output=out, loss="squared_error")
  params, x, y = problem(model, batch=2)
  with pytest.raises(ValueError, match="'hvp_test_no_grad2_out'.*grad2"):
    jax.eval_shape(functools.partial(fnn.hvp, model), params, x, y,
                   _tangent(params))


def test_register_activation_grad2_checks():
  with pytest.raises(TypeError, match="grad2"):
    fnn.register_activation("hvp_test_g2", jnp.tanh, lambda z, a: 1 - a * a,
                            grad2=3, replace=True)
  with pytest.raises(ValueError, match="grad2 of activation"):
    fnn.register_activation("hvp_test_g2", jnp.tanh, lambda z, a: 1 - a * a,
                            grad2=lambda z, a: z[0], replace=True)
  with pytest.raises(ValueError, match="needs grad"):
    fnn.register_activation("hvp_test_g2", jax.nn.softmax, hidden=False,
                            vjp=lambda z, a, g: g, grad2=lambda z, a: z,
                            replace=True)


def test_builtin_grad2_equal_autodiff():
  """Every built-in elementwise grad2 against autodiff of its grad."""
  z = np.linspace(-4.0, 4.0, 41) + 0.013  # no point at the kink 0
  acts = [fnn.ACTIVATIONS[name] for name in HIDDEN]
  got, want = run_jit(lambda z: (
      [a.grad2(z, a.fn(z)) for a in acts],
      [jax.vmap(jax.grad(jax.grad(a.fn)))(z) for a in acts]), z)
  for act, g, w in zip(acts, got, want):
    # float64: both sum a few O(1) terms in different orders
    np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14, err_msg=act.name)


def test_user_losses_use_their_own_grad():
  """A registered loss (no closed-form Hessian): the R of its hand-derived
  grad (non-fused) or delta_z (a fused pair)."""
  log_cosh = fnn.register_loss(
      "hvp_test_log_cosh", lambda a, y: jnp.sum(jnp.log(jnp.cosh(a - y)), -1),
      lambda a, y: jnp.tanh(a - y), replace=True)
  half = fnn.register_loss(
      "hvp_test_half_se", loss_lib.half_squared_error,
      loss_lib.half_squared_error_grad, canonical="identity",
      fn_z=loss_lib.half_squared_error,
      delta_z=loss_lib.identity_half_squared_error_delta, replace=True)
  for output, loss in (("tanh", log_cosh), ("identity", half)):
    model = fnn.MLP((3, 4, 2), activation="softplus", output=output,
                    loss=loss)
    assert model.fused == (loss is half)
    params, x, y = problem(model, batch=3)
    _compare(model, params, x, y)


# ---------------------------------------------------------------------------
# Input checks.

def test_bad_tangent():
  model = fnn.MLP((3, 4, 2), activation="tanh")
  params, x, y = problem(model, batch=2)
  v = _tangent(params)
  bad_shape = (v[0]._replace(w=jnp.zeros((3, 5))), v[1])
  for fn in (fnn.hvp, fnn.ggn_vp):
    with pytest.raises(ValueError, match=r"v\[0\]\.w has shape \(3, 5\).*"
                                         r"\(3, 4\)"):
      fn(model, params, x, y, bad_shape)
    with pytest.raises(ValueError, match="params' structure"):
      fn(model, params, x, y, v[:1])
    with pytest.raises(ValueError, match="params' structure"):
      fn(model, params, x, y, list(v))
    with pytest.raises(ValueError, match="features"):
      fn(model, params, x[:, :2], y, v)


# ---------------------------------------------------------------------------
# hessian_eigs.

def test_hessian_eigs_equal_eigvalsh():
  """Under jit (one program): k = 3 with the default iters (= P here: exact)
  of the Hessian and of the GGN, and k = 1 of the Hessian with fewer steps,
  against eigvalsh of the brute-force matrices."""
  model = fnn.MLP((2, 3, 3), activation="tanh", output="softmax",
                  loss="categorical_cross_entropy")
  params, x, y = problem(model, batch=3)
  flat, unravel = ravel_pytree(params)
  n = flat.size

  def compute(params, x, y, key):
    h = jax.hessian(lambda f: model.mean_loss(unravel(f), x, y))(flat)
    g = jax.vmap(lambda e: ravel_pytree(ggn_reference(
        model, params, x, y, unravel(e)))[0])(jnp.eye(n)).T
    eigs = [fnn.hessian_eigs(model, params, x, y, 3, ggn=ggn, key=key)
            for ggn in (False, True)]
    fewer = fnn.hessian_eigs(model, params, x, y, key=key, iters=n - 4)
    return (h, g), eigs, fewer

  mats, eigs, fewer = run_jit(compute, params, x, y, jax.random.key(0))
  for mat, top3 in zip(mats, eigs):
    want = np.linalg.eigvalsh(np.asarray(mat))[::-1]
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(top3, want[:3], atol=1e-10 * scale)
  # n - 4 steps: the top Ritz value has converged (measured: ~1e-13)
  want = np.linalg.eigvalsh(np.asarray(mats[0]))[::-1]
  np.testing.assert_allclose(fewer, want[:1], atol=1e-8 * np.max(np.abs(want)))
  h, g = (np.linalg.eigvalsh(np.asarray(m)) for m in mats)
  assert g.min() > -1e-12 * g.max()  # the GGN is PSD
  assert h.min() < -1e-6 * h.max()  # the Hessian is not, here


def test_hessian_eigs_errors():
  model = fnn.MLP((2, 2), output="identity", loss="half_squared_error")
  params, x, y = problem(model, batch=2)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="key"):
    fnn.hessian_eigs(model, params, x, y)
  with pytest.raises(ValueError, match=r"k must be an int in \[1, 6\]"):
    fnn.hessian_eigs(model, params, x, y, 7, key=key)
  with pytest.raises(ValueError, match="k must be"):
    fnn.hessian_eigs(model, params, x, y, 0, key=key)
  with pytest.raises(ValueError, match="iters"):
    fnn.hessian_eigs(model, params, x, y, 2, key=key, iters=1)
  with pytest.raises(ValueError, match="iters"):
    fnn.hessian_eigs(model, params, x, y, 2, key=key, iters=7)


# ---------------------------------------------------------------------------
# check_layer_rops: each layer's R-operators against autodiff of its own code.

def _failing(rows):
  return [(r.path, r.layer, r.what) for r in rows if not r.ok]


def test_layer_rops_pass_for_every_builtin_layer():
  """One stack of every built-in layer type (Conv1d with stride and
  padding on [L, C], LayerNorm, every built-in hidden activation, Flatten,
  a Residual, Dense) over two examples (vmapped), the non-fused softmax /
  squared error output: every row passes, and the rows are the layers,
  nested ones by their dotted path."""
  L = fnn.layers
  model = fnn.Sequential((5, 2), [
      L.Conv1d(3, 3, stride=2, padding=1), L.LayerNorm()]
      + [L.Activation(a) for a in HIDDEN]
      + [L.Flatten(), L.Residual(L.Dense(9), L.Activation("tanh")),
         L.Dense(3)], output="softmax", loss="squared_error")
  params, x, y = seq_problem(model, b=2)
  rows = check_layer_rops(model, params, x, y, key=jax.random.key(0),
                          examples=2)
  assert not _failing(rows), [str(r) for r in rows if not r.ok]
  want = []
  for i, layer in enumerate(model.layers):
    want += [(str(i), repr(layer), "jvp"), (str(i), repr(layer),
                                            "backward_jvp")]
    for j, sub in enumerate(layer.sublayers()):
      want += [(f"{i}.{j}", repr(sub), "jvp"), (f"{i}.{j}", repr(sub),
                                                "backward_jvp")]
  name = "softmax + squared_error"
  want += [("output", name, "hessian"), ("output", name, "backward_jvp")]
  assert [(r.path, r.layer, r.what) for r in rows] == want
  assert ("13.1", "Activation('tanh')", "jvp") in want  # nested


@pytest.mark.parametrize("out,loss", [("identity", "half_squared_error"),
                                      ("tanh", "half_squared_error")])
def test_layer_rops_output_level(out, loss):
  """A fused pair and an elementwise non-fused output (softmax / squared
  error above; sigmoid / binary and softmax / categorical cross-entropy
  below): one "hessian" row, and "backward_jvp" (R{delta_L}) non-fused."""
  model = fnn.MLP((3, 2), output=out, loss=loss)
  params, x, y = problem(model, batch=1)
  rows = check_layer_rops(model, params, x, y, key=jax.random.key(1))
  assert all(r.ok for r in rows), [str(r) for r in rows]
  want = ["hessian"] + ([] if model.fused else ["backward_jvp"])
  assert [(r.layer, r.what) for r in rows if r.path == "output"] == [
      (f"{out} + {loss}", w) for w in want]


def test_layer_rops_name_a_wrong_grad2():
  """A registered activation whose grad2 has the wrong sign: exactly its
  backward_jvp row fails (its jvp needs only sigma')."""
  act = fnn.register_activation(
      "rop_test_bad_tanh", jnp.tanh, lambda z, a: 1 - a * a,
      grad2=lambda z, a: 2 * a * (1 - a * a), replace=True)
  L = fnn.layers
  model = fnn.Sequential((3,), [L.Dense(4), L.Activation(act), L.Dense(4),
                                L.Activation("tanh"), L.Dense(2)],
                         output="sigmoid", loss="binary_cross_entropy")
  params, x, y = seq_problem(model, b=1)
  rows = check_layer_rops(model, params, x, y, key=jax.random.key(0))
  assert _failing(rows) == [
      ("1", "Activation('rop_test_bad_tanh')", "backward_jvp")]
  bad = next(r for r in rows if not r.ok)
  assert bad.rel_err > 1e-3 and "FAIL" in str(bad), str(bad)


class _ScaleParams(NamedTuple):
  s: jax.Array


@dataclasses.dataclass(frozen=True)
class _Scale(fnn.layers.Layer):
  """A user layer ``y = x * s`` (``s: [n]``), no factor kind needed here."""

  def param_shapes(self, in_shape):
    return _ScaleParams((in_shape[-1],))

  def init(self, key, in_shape, dtype):
    return _ScaleParams(jnp.ones((in_shape[-1],), dtype))

  def forward(self, params, x):
    return x * params.s, x

  def backward(self, params, cache, g):
    return g * params.s, (cache, g)

  def apply(self, params, x):
    return x * params.s[None, :]

  def jvp(self, params, cache, v, r_x):
    return r_x * params.s + cache * v.s, r_x

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    return r_g * params.s + g * v.s, (r_cache, r_g)


class _WrongScale(_Scale):
  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    return r_g * params.s, (r_cache, r_g)  # the bug: no g * v_s


class _NoRopScale(_Scale):
  jvp = backward_jvp = fnn.layers.Layer.jvp  # the base's: not derived


def test_layer_rops_name_a_wrong_custom_layer():
  """User layers: a right one passes; a wrong backward_jvp inside a
  Residual fails its own row and its container's; one without jvp fails
  both rows with the NotImplementedError in the note."""
  L = fnn.layers
  model = fnn.Sequential((3,), [
      L.Dense(4), _Scale(), L.Residual(L.Dense(4), _WrongScale()),
      _NoRopScale(), L.Dense(2)])  # softmax / categorical cross-entropy
  params, x, y = seq_problem(model, b=1)
  rows = check_layer_rops(model, params, x, y, key=jax.random.key(0))
  assert _failing(rows) == [
      ("2", "Residual(Dense(4), _WrongScale())", "backward_jvp"),
      ("2.1", "_WrongScale()", "backward_jvp"),
      ("3", "_NoRopScale()", "jvp"), ("3", "_NoRopScale()", "backward_jvp")]
  assert all("NotImplementedError" in r.note for r in rows if r.path == "3")
  assert all(r.ok for r in rows if r.layer == "_Scale()")


def test_layer_rops_errors():
  model = fnn.MLP((2, 2), output="identity", loss="half_squared_error")
  params, x, y = problem(model, batch=2)
  check = check_layer_rops
  with pytest.raises(ValueError, match="key"):
    check(model, params, x, y, key=None)
  for n in (0, 3, 1.0):
    with pytest.raises(ValueError, match=r"examples must be an int in \[1, 2"):
      check(model, params, x, y, key=jax.random.key(0), examples=n)
  with pytest.raises(ValueError, match="rtol"):
    check(model, params, x, y, key=jax.random.key(0), rtol=-1.0)
  with pytest.raises(ValueError, match="features"):
    check(model, params, x[:, :1], y, key=jax.random.key(0))

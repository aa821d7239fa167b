"""fnn.check_quantities and ``fnn gradcheck --quantities``, and the scaling
conventions of docs/curvature.md reproduced with fnn's own functions.

Speed: the harness compiles one program per network (~10 s on 2 cores). The
function test and the CLI's default configuration are the same network, key
and data, so the second run is a hit in the suite's persistent compilation
cache; the wrong-derivative network runs once (the CLI's JSON carries every
row). The sweep (``--all``) and a Sequential stack run with ``-m slow``.
"""
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fnn
from fnn import activations, cli, quantities, sweep
from helpers import cli_error
from layer_helpers import assert_close, run_jit, zeros_params

L = fnn.layers
GOOD = fnn.MLP((4, 5, 3), activation="tanh")  # the CLI's default network
LAYERS = ("0 Dense(5)", "2 Dense(3)")
PER_LAYER = ("diag_ggn", "diag_ggn (mc)", "gram (kind)", "per-example norm",
             "second moment", "variance", "kfac delta_cov (empirical)",
             "kfac delta_cov (exact)", "kfac delta_cov (mc)", "kfac a_cov",
             "kfac a_mean", "ggn_vp", "hvp", "dp_grad (noise 0)")
WHOLE = ("ggn_trace", "ggn_trace per example", "grad_gram",
         "per-example norm", "trace_sigma", "grad_sq_norm", "noise_scale",
         "hessian_eigs", "hessian_eigs (ggn)")


def _run(argv, capsys):
  try:
    code = cli.main(["gradcheck", "--quantities", *argv])
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_harness_passes_on_a_good_net():
  key = jax.random.key(0)
  params, x, y = sweep.problem(GOOD, key, 6)  # as fnn gradcheck draws them
  rows = fnn.check_quantities(GOOD, params, x, y, key=key)
  assert all(isinstance(r, quantities.Row) for r in rows)
  assert not quantities.failures(rows), quantities.format(rows)
  where = {(r.quantity, r.layer) for r in rows}
  missing = [(q, l) for q in PER_LAYER for l in LAYERS if (q, l) not in where]
  missing += [q for q in WHOLE if (q, quantities.ALL) not in where]
  assert not missing, missing
  # Every exact row is within float64's rounding of the reference.
  exact = [r for r in rows if r.tol == quantities.RTOL]
  assert exact and max(r.rel_err for r in exact) < 1e-13
  text = quantities.format(rows)
  assert text.splitlines()[-1] == f"{len(rows)} rows: all ok"
  assert "z-test" in text and "clipped" in text


def test_cli_good_net_exits_0(capsys):
  code, out, _ = _run([], capsys)
  assert code == 0, out
  assert out.splitlines()[0].startswith("MLP(sizes=(4, 5, 3)")
  assert out.rstrip().endswith("rows: all ok") and "FAIL" not in out


BAD_MODULE = """\
import jax.numpy as jnp
import fnn
# tanh with a wrong derivative: 1 - a instead of 1 - a**2
fnn.register_activation("qt_bad_tanh", jnp.tanh, lambda z, a: 1 - a)
"""


def test_wrong_derivative_fails_naming_the_layer(tmp_path, capsys,
                                                 monkeypatch):
  (tmp_path / "qt_bad.py").write_text(BAD_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))

  def run(*argv):
    try:
      return _run(["--import", "qt_bad", "--activation", "qt_bad_tanh",
                   *argv], capsys)
    finally:  # registered by the import: removed for the next run
      activations.ACTIVATIONS.pop("qt_bad_tanh", None)
      sys.modules.pop("qt_bad", None)

  (code, out, err), (code_t, text, err_t) = run("--format", "json"), run()
  assert code == code_t == 1, (err, err_t)
  d = json.loads(out)
  assert d["configurations"] == 1 and d["failed"] == 1
  ok = {(r["quantity"], r["layer"]): r["ok"] for r in d["results"][0]["rows"]}
  # The wrong sigma' sits between the two dense layers: every first-order
  # quantity of the layer below it is wrong, of the output layer right.
  for q in ("diag_ggn", "second moment", "gram (kind)",
            "kfac delta_cov (exact)", "kfac delta_cov (empirical)"):
    assert not ok[(q, "0 Dense(5)")] and ok[(q, "2 Dense(3)")], q
  assert ok[("kfac a_cov", "0 Dense(5)")]  # the forward is right
  notes = {r["quantity"]: r["note"] for r in d["results"][0]["rows"]}
  assert "grad2" in notes["hvp"] and notes["hvp"].startswith("skipped")
  assert "FAIL diag_ggn at layer 0 Dense(5): rel err" in text
  assert "FAIL diag_ggn at layer 2 Dense(3)" not in text


def test_wrong_second_derivative_fails_hvp_and_names_the_activation():
  # tanh with the right sigma' but a sign-flipped sigma'': every first-order
  # row stays right; fnn.hvp and the Activation's R of its backward fail.
  act = fnn.register_activation(
      "qt_bad_grad2", jnp.tanh, lambda z, a: 1 - a * a,
      grad2=lambda z, a: 2 * a * (1 - a * a))
  try:
    model = fnn.MLP((3, 4, 3), activation=act.name)
    params = model.init(jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    rows = fnn.check_quantities(model, params, x, jnp.array([0, 1, 2, 1, 0]))
  finally:
    activations.ACTIVATIONS.pop("qt_bad_grad2", None)
  bad = {(r.quantity, r.layer) for r in rows if not r.ok}
  assert ("R-op backward_jvp", "1 Activation('qt_bad_grad2')") in bad, bad
  assert any(q == "hvp" for q, _ in bad), bad
  assert not {q for q, _ in bad} & {"diag_ggn", "ggn_vp", "second moment"}


@pytest.mark.parametrize("argv,message", [
    (["--dtype", "float32"], "--dtype is for the gradient check"),
    (["--mode", "full"], "--mode is for the gradient check"),
    (["--strict"], "--strict is for the gradient check"),
    (["--all", "--plot", "x.png"], "--plot is for the gradient check"),
    (["--all", "--depths", "40"], "--depths values must be in 1..32"),
    (["--all", "--arch", "cnn"], "--all sweeps MLPs"),
    (["--arch", "cnn"], "the network has P = 5210 parameters, at most 2000"),
    (["--activation", "nope"], "unknown hidden activation 'nope'"),
], ids=["dtype", "mode", "strict", "plot", "depths", "all-arch", "too-big",
        "activation"])
def test_cli_bad_usage_exits_2_with_one_line(capsys, argv, message):
  err = cli_error(capsys, ["gradcheck", "--quantities", *argv])
  assert message in err, err


def test_sweep_models_cover_every_activation_pair_and_layer_type():
  models = quantities.sweep_models()
  mlps = [m for m in models if isinstance(m, fnn.MLP)]
  assert {(m.output.name, m.loss.name) for m in mlps} == set(
      fnn.valid_pairs())
  assert {a.name for m in mlps for a in m.activation} == set(
      activations.hidden_activations())
  assert {m.num_layers for m in mlps} == {1, 2, 3, 4}

  def types(layers):
    return {type(l) for l in layers} | {
        t for l in layers for t in types(l.sublayers())}

  seen = {t for m in models if not isinstance(m, fnn.MLP)
          for t in types(m.layers)}
  assert seen >= {L.Conv1d, L.LayerNorm, L.Residual, L.Flatten, L.Dense,
                  L.Activation}, seen


def test_unavailable_products_say_so(monkeypatch):
  """Without fnn.ggn_vp / hvp / hessian_eigs the rows say "not available"
  (row assembly only: no compile)."""
  monkeypatch.setattr(quantities, "_optional", lambda name: None)
  params = zeros_params(GOOD)
  layers = quantities._layers(GOOD, params)
  n = layers[-1].stop
  ref = dict(pe=np.ones((2, n)), ggn=np.eye(n), trace_pe=np.ones(2),
             kfac=[None] * len(layers))
  rows = quantities._rows({"ref": ref}, layers, 1e-10, 1e-6, {}, n, 0)
  notes = {r.quantity: r.note for r in rows}
  for name in ("ggn_vp", "hvp", "hessian_eigs"):
    assert notes[name] == f"not available: fnn.{name} not defined"
  assert all(r.ok and math.isnan(r.rel_err) for r in rows)


def test_check_quantities_bad_input():
  params = zeros_params(GOOD)
  x, y = jnp.zeros((3, 4)), jnp.array([0, 1, 2])
  with pytest.raises(ValueError, match="draws must be an int >= 2"):
    fnn.check_quantities(GOOD, params, x, y, draws=1)
  with pytest.raises(ValueError, match="x has 5 features"):
    fnn.check_quantities(GOOD, params, jnp.zeros((3, 5)), y)
  big = fnn.MLP((40, 50, 3))
  with pytest.raises(ValueError, match="P = 2203 parameters, at most 2000"):
    fnn.check_quantities(big, zeros_params(big), jnp.zeros((3, 40)), y)


# ---------------------------------------------------------------------------
# docs/curvature.md's conversions, with fnn's own functions.

def _mse_mean():
  """PyTorch's MSELoss(reduction="mean") per example: a mean over outputs
  (its batch mean is fnn's own), not registered (an fnn.Loss object)."""
  return fnn.Loss("mse_mean", lambda a, y: jnp.mean((a - y) ** 2, -1),
                  lambda a, y: 2 * (a - y) / a.shape[-1])


def test_peer_conventions():
  b = 5
  models = dict(
      ce=fnn.MLP((4, 5, 3), activation="tanh"),
      se=fnn.MLP((4, 5, 3), activation="tanh", output="identity",
                 loss="squared_error"),
      half=fnn.MLP((4, 5, 3), activation="tanh", output="identity",
                   loss="half_squared_error"),
      mse_mean=fnn.MLP((4, 5, 3), activation="tanh", output="identity",
                       loss=_mse_mean()))
  key = jax.random.key(3)
  params = models["ce"].init(key, jnp.float64)  # one set for every model
  x = jax.random.normal(jax.random.key(4), (b, 4), jnp.float64)
  labels = jnp.array([0, 1, 2, 0, 1])
  targets = jax.random.normal(jax.random.key(5), (b, 3), jnp.float64)

  def compute(params, x, labels, targets):
    out = {}
    ce = models["ce"]
    pe = fnn.per_example_grads(ce, params, x, labels)
    s = fnn.grad_stats(ce, params, x, labels)
    # BackPACK's BatchGrad with a mean: the gradients of the terms l_b / B.
    term = lambda p, xi, yi: ce.mean_loss(p, xi[None], yi[None]) / b
    batch_grad = jax.vmap(jax.grad(term), in_axes=(None, 0, 0))(params, x,
                                                                labels)
    out["BatchGrad = per_example_grads / B"] = (
        batch_grad, jax.tree.map(lambda v: v / b, pe))
    out["sum of BatchGrad = grad"] = (
        jax.tree.map(lambda v: jnp.sum(v, 0), batch_grad),
        fnn.grad(ce, params, x, labels))
    out["SumGradSquared = second_moment / B"] = (
        jax.tree.map(lambda v: jnp.sum(v ** 2, 0), batch_grad),
        jax.tree.map(lambda v: v / b, s.second_moment))
    out["Variance = variance / B^2"] = (
        jax.tree.map(lambda v: jnp.var(v, 0), batch_grad),
        jax.tree.map(lambda v: v / b ** 2, s.variance))
    # DiagGGN of a mean-reduced loss = diag_ggn; a sum-reduced one B times:
    # the batch's is the mean of the single examples'.
    one = jax.vmap(lambda xi, yi: fnn.diag_ggn(ce, params, xi[None],
                                               yi[None]))(x, labels)
    out["DiagGGN (mean) = diag_ggn"] = (
        fnn.diag_ggn(ce, params, x, labels),
        jax.tree.map(lambda v: jnp.mean(v, 0), one))
    # MSELoss(mean) divides by n_out too; squared_error = 2 x half.
    n_out = 3
    q = {k: (fnn.diag_ggn(models[k], params, x, targets),
             fnn.kfac_factors(models[k], params, x, targets, kind="exact"),
             fnn.ggn_trace(models[k], params, x, targets))
         for k in ("se", "half", "mse_mean")}
    out["DiagGGN MSELoss(mean) = diag_ggn(squared_error) / n_out"] = (
        q["mse_mean"][0], jax.tree.map(lambda v: v / n_out, q["se"][0]))
    out["KFLR G MSELoss(mean) = delta_cov(squared_error) / n_out"] = (
        [k.delta_cov for k in q["mse_mean"][1]],
        [k.delta_cov / n_out for k in q["se"][1]])
    out["squared_error = 2 x half_squared_error (diag_ggn)"] = (
        q["se"][0], jax.tree.map(lambda v: 2 * v, q["half"][0]))
    out["squared_error = 2 x half_squared_error (delta_cov)"] = (
        [k.delta_cov for k in q["se"][1]],
        [2 * k.delta_cov for k in q["half"][1]])
    out["squared_error = 2 x half_squared_error (trace)"] = (
        q["se"][2], 2 * q["half"][2])
    out["a_cov does not depend on the loss"] = (
        [k.a_cov for k in q["se"][1]], [k.a_cov for k in q["half"][1]])
    # KFLR's torch layout: kron(G, A) over (out, in) is kron(a_cov,
    # delta_cov) over (in, out), both axes permuted.
    k0 = fnn.kfac_factors(ce, params, x, labels, kind="exact")[0]
    n_in, n_o = k0.a_cov.shape[0], k0.delta_cov.shape[0]
    torch_order = jnp.kron(k0.delta_cov, k0.a_cov).reshape(n_o, n_in, n_o,
                                                           n_in)
    out["kron(G, A) = kron(a_cov, delta_cov) transposed"] = (
        torch_order.transpose(1, 0, 3, 2).reshape(n_in * n_o, -1),
        jnp.kron(k0.a_cov, k0.delta_cov))
    return out

  out = run_jit(compute, params, x, labels, targets)
  failed = []
  for name, (got, want) in out.items():
    try:
      assert_close(got, want)
    except AssertionError as e:
      failed.append(f"{name}: {e}")
  assert not failed, "\n".join(failed)
  # Not vacuous: with a positive trace, 2 x half = se rules out 1 x.
  se, half = out["squared_error = 2 x half_squared_error (trace)"]
  assert float(se) > 0


# ---------------------------------------------------------------------------
# Slow: a Sequential stack through the harness, and the sweep.

@pytest.mark.slow
def test_harness_passes_on_a_stack_of_every_layer_type():
  spec, n_in, n_out, out, loss = quantities.STACKS[0]
  model = fnn.arch.build(spec, n_in, n_out, output=out, loss=loss)
  key = jax.random.key(1)
  params, x, y = sweep.problem(model, key, 5)
  rows = fnn.check_quantities(model, params, x, y, key=key)
  assert not quantities.failures(rows), quantities.format(rows)
  layers = {r.layer for r in rows}
  assert any("Conv1d" in l for l in layers)
  assert any("LayerNorm" in l for l in layers)


@pytest.mark.slow
def test_cli_sweep_passes(capsys):
  code, out, err = _run(["--all", "--depths", "1,2"], capsys)
  assert code == 0, out
  n = len(quantities.sweep_models((1, 2)))
  assert f"{n} configurations: 0 failed" in out
  assert "configurations" in err  # progress on stderr

"""fnn.check_grads, the registries and `fnn gradcheck`: the checks can fail."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import activations, cli, gradcheck, losses, sweep


@pytest.fixture
def registry():
  """Registers names for one test and removes them afterwards."""
  added = []

  def act(name, *args, **kwargs):
    out = fnn.register_activation(name, *args, **kwargs)
    added.append((activations.ACTIVATIONS, name))  # only what was added
    return out

  def loss(name, *args, **kwargs):
    out = fnn.register_loss(name, *args, **kwargs)
    added.append((losses.LOSSES, name))
    return out

  yield act, loss
  for table, name in added:
    table.pop(name, None)


def _problem(model, seed=0, batch=6, dtype=jnp.float64):
  return sweep.problem(model, jax.random.key(seed), batch, dtype)


def _wrong_sigmoid_grad(z, a):
  del z
  return a  # should be a (1 - a)


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_correct_gradients_pass_with_tiny_errors(mode):
  model = fnn.MLP((4, 5, 6, 3), activation="tanh")
  report = fnn.check_grads(model, *_problem(model), mode=mode)
  assert report.passed and report.status == "pass"
  assert [(r.layer, r.leaf) for r in report.rows] == [
      (0, "w"), (0, "b"), (1, "w"), (1, "b"), (2, "w"), (2, "b")]
  for r in report.rows:
    assert r.autodiff.scaled < 1e-13 and r.per_example.scaled < 1e-13
    assert r.fd.scaled < 1e-7 and r.fd.cosine > 1 - 1e-12
    assert r.autodiff.tol.rtol == gradcheck.TOLERANCES["float64"]


def test_wrong_activation_derivative_fails_and_names_the_layer(registry):
  act, _ = registry
  act("bad_sigmoid", activations.sigmoid, _wrong_sigmoid_grad)
  model = fnn.MLP((4, 5, 3), activation="bad_sigmoid")
  report = fnn.check_grads(model, *_problem(model))
  assert not report.passed and report.status == "FAIL"
  status = {r.name: r.status for r in report.rows}
  # The wrong sigma' sits between layer 0 and layer 1: only layer 0's
  # gradient goes through it.
  assert status == {"layer 0 w": "FAIL", "layer 0 b": "FAIL",
                    "layer 1 w": "pass", "layer 1 b": "pass"}
  message = report.failures()[0]
  assert message.startswith("layer 0 w (4, 5): FAIL")
  assert "hand-derived vs" in message and "(reference)" in message
  assert "max |hand - ref|" in message
  row = report.rows[0]
  assert row.autodiff.scaled > 1e-2 and row.fd.scaled > 1e-2
  assert row.per_example.scaled > 1e-2


def test_wrong_derivative_fails_in_directional_mode_and_in_float32(registry):
  act, _ = registry
  act("bad_sigmoid", activations.sigmoid, _wrong_sigmoid_grad)
  # The net and problem of the "bad" half of the directional/full test below,
  # so the float64 checks compile once for both.
  model = fnn.MLP((4, 6, 3), activation="bad_sigmoid", output="sigmoid",
                  loss="binary_cross_entropy")
  for dtype in (jnp.float64, jnp.float32):
    params, x, y = _problem(model, seed=1, dtype=dtype)
    for mode in ("full", "directional"):
      report = fnn.check_grads(model, params, x, y, mode=mode)
      assert [r.status for r in report.rows][:2] == ["FAIL", "FAIL"], (
          dtype, mode)


def test_wrong_loss_derivative_fails(registry):
  _, loss = registry
  loss("bad_squared", losses.squared_error,
       lambda a, y: a - y)  # should be 2 (a - y)
  model = fnn.MLP((4, 5, 3), activation="tanh", output="identity",
                  loss="bad_squared")
  report = fnn.check_grads(model, *_problem(model))
  assert all(r.status == "FAIL" for r in report.rows)
  good = fnn.MLP((4, 5, 3), activation="tanh", output="identity",
                 loss="squared_error")
  assert fnn.check_grads(good, *_problem(good)).passed


def test_registered_names_work_everywhere(registry):
  act, loss = registry
  swish = act("swish_beta2", lambda z: z * jax.nn.sigmoid(2 * z),
              lambda z, a: jax.nn.sigmoid(2 * z) * (
                  1 + 2 * z * (1 - jax.nn.sigmoid(2 * z))))
  loss("log_cosh", lambda a, y: jnp.sum(jnp.log(jnp.cosh(a - y)), axis=-1),
       lambda a, y: jnp.tanh(a - y))
  assert "swish_beta2" in activations.hidden_activations()
  assert ("identity", "log_cosh") in fnn.valid_pairs()
  model = fnn.MLP((4, 5, 3), activation="swish_beta2", output="identity",
                  loss="log_cosh")
  assert model.activation == (swish,)
  assert fnn.check_grads(model, *_problem(model)).status == "pass"
  # The sweep picks registered names up.
  models = sweep.sweep_models(depths=(2,))
  assert any(m.activation[0].name == "swish_beta2" for m in models)
  assert any(m.loss.name == "log_cosh" for m in models)


def test_register_errors(registry):
  act, loss = registry
  with pytest.raises(ValueError, match="'relu' is a built-in activation"):
    act("relu", activations.relu, activations.relu_grad)
  with pytest.raises(TypeError, match="grad of 'x1' must be callable"):
    act("x1", activations.relu, 3)
  with pytest.raises(ValueError, match="needs grad"):
    act("x2", activations.relu)
  with pytest.raises(ValueError, match=r"must return an array of z's shape"):
    act("x3", activations.relu, lambda z, a: jnp.sum(z))
  act("x4", activations.relu, activations.relu_grad)
  with pytest.raises(ValueError, match="already registered"):
    act("x4", activations.relu, activations.relu_grad)
  act("x4", activations.tanh, activations.tanh_grad, replace=True)
  assert activations.ACTIVATIONS["x4"].fn is activations.tanh
  with pytest.raises(ValueError, match="'squared_error' is a built-in loss"):
    loss("squared_error", losses.squared_error, losses.squared_error_grad)
  with pytest.raises(ValueError, match=r"must return shape \(2,\)"):
    loss("l1", lambda a, y: a - y, losses.squared_error_grad)
  with pytest.raises(ValueError, match="needs fn_z and delta_z"):
    loss("l2", losses.squared_error, losses.squared_error_grad,
         canonical="identity")
  with pytest.raises(ValueError, match="targets"):
    loss("l3", losses.squared_error, losses.squared_error_grad,
         targets="labels")


def test_kink_is_reported_not_failed(registry):
  model = fnn.MLP((3, 4, 2), activation="relu")
  params, x, y = _problem(model, seed=3)
  # Place unit 0's pre-activation of example 0 exactly at ReLU's kink.
  w0, b0 = params[0]
  b0 = b0.at[0].set(-(x[0] @ w0[:, 0]))
  params = (fnn.Dense(w0, b0),) + params[1:]
  z = x @ params[0].w + params[0].b[None, :]
  assert z[0, 0] == 0
  report = fnn.check_grads(model, params, x, y, mode="full")
  first = {r.name: r for r in report.rows}
  assert first["layer 0 b"].status == "kink" and first["layer 0 b"].fd.kinks
  assert first["layer 0 w"].status == "kink" and first["layer 0 w"].fd.kinks
  assert report.passed and report.status == "kink"
  # The same net with the kink undeclared: the finite difference straddles
  # it and the check fails (relu'(0) = 0 by convention, FD sees 1/2).
  act, _ = registry
  act("relu_undeclared", activations.relu, activations.relu_grad)
  blind = fnn.MLP((3, 4, 2), activation="relu_undeclared")
  assert fnn.check_grads(blind, params, x, y, mode="full").status == "FAIL"
  # Directional mode sees the kink too (every direction moves z[0, 0]).
  directional = fnn.check_grads(model, params, x, y, mode="directional")
  assert directional.passed and directional.rows[1].fd.kinks > 0


def test_directional_and_full_agree_on_a_small_net(registry):
  model = fnn.MLP((4, 6, 3), activation="gelu", output="sigmoid",
                  loss="binary_cross_entropy")
  params, x, y = _problem(model, seed=1)
  full = fnn.check_grads(model, params, x, y, mode="full")
  directional = fnn.check_grads(model, params, x, y, mode="directional",
                                directions=8, key=jax.random.key(5))
  assert full.status == directional.status == "pass"
  for a, b in zip(full.rows, directional.rows):
    assert (a.layer, a.leaf, a.shape) == (b.layer, b.leaf, b.shape)
    assert a.autodiff == b.autodiff  # the same elementwise comparison
    assert a.fd.scaled < 1e-6 and b.fd.scaled < 1e-6
  act, _ = registry
  act("bad_sigmoid", activations.sigmoid, _wrong_sigmoid_grad)
  bad = fnn.MLP((4, 6, 3), activation="bad_sigmoid", output="sigmoid",
                loss="binary_cross_entropy")
  statuses = [[r.status for r in fnn.check_grads(bad, params, x, y,
                                                  mode=m).rows]
              for m in ("full", "directional")]
  assert statuses[0] == statuses[1] == ["FAIL", "FAIL", "pass", "pass"]


def test_float32_is_compared_with_its_expectation():
  model = fnn.MLP((4, 5, 3), activation="tanh")
  params, x, y = _problem(model, dtype=jnp.float32)
  report = fnn.check_grads(model, params, x, y)
  assert report.dtype == "float32" and report.status == "pass"
  worst = report.worst("autodiff").scaled
  # float32 rounding against the float64 reference: well above float64's
  # ~1e-16, well below the float32 expectation.
  assert 1e-9 < worst < gradcheck.TOLERANCES["float32"]
  # Demanding float64 accuracy of float32 gives "high", not a failure.
  strict = fnn.check_grads(model, params, x, y, rtol=1e-12)
  assert strict.status == "high" and strict.passed


@pytest.mark.slow  # an implementation detail; 13 s of compiles
def test_chunked_full_mode_matches():
  # 2,530 parameters: the perturbations run in lax.map chunks.
  model = fnn.MLP((40, 60, 10), activation="tanh")
  report = fnn.check_grads(model, *_problem(model, batch=4), mode="full")
  assert report.passed and report.mode == "full"
  assert max(r.fd.scaled for r in report.rows) < 1e-6


def test_check_grads_errors():
  model = fnn.MLP((4, 5, 3))
  params, x, y = _problem(model)
  with pytest.raises(ValueError, match="mode must be 'full' or 'directional'"):
    fnn.check_grads(model, params, x, y, mode="both")
  with pytest.raises(ValueError, match="x has 3 features"):
    fnn.check_grads(model, params, x[:, :3], y)
  with pytest.raises(ValueError, match="directions must be a positive int"):
    fnn.check_grads(model, params, x, y, directions=0)


def test_report_json_round_trip():
  model = fnn.MLP((4, 5, 3))
  report = fnn.check_grads(model, *_problem(model))
  d = json.loads(json.dumps(report.to_dict()))
  assert d["passed"] is True and len(d["rows"]) == 4
  assert d["rows"][0]["autodiff"]["reference"] == "jax.grad"


@pytest.mark.slow  # 25 s; every pair at depth 1 passes in the CLI sweep test
def test_sweep_subset_passes_in_float64():
  """Four activations (kinked and smooth, bounded and not) at depth 2 and
  four pairs (fused and not) at depth 1; every pair at depth 1 is in the
  CLI sweep test below, and the full sweep (744 configurations, ~90 s) is
  `pytest -m slow` and `fnn gradcheck --all`."""
  pairs = [("sigmoid", "binary_cross_entropy"),
           ("softmax", "categorical_cross_entropy"),
           ("tanh", "squared_error"), ("identity", "half_squared_error")]
  hidden = ("sigmoid", "relu", "leaky_relu", "gelu")
  reports = sweep.sweep(depths=(2,), hidden=hidden, pairs=pairs[1:2])
  reports += sweep.sweep(depths=(1,), pairs=pairs)
  assert len(reports) == len(hidden) + 4
  assert all(r.passed for r in reports), [
      (r.model, r.failures()) for r in reports if not r.passed]
  rows = [sweep.summary(r) for r in reports]
  assert max(r["autodiff"] for r in rows) < 1e-12
  assert max(r["fd"] for r in rows) < 1e-5


@pytest.mark.slow
def test_full_sweep_passes_in_float64():
  reports = sweep.sweep()
  assert len(reports) >= 700 and all(r.passed for r in reports)


# --------------------------------------------------------------------------
# float32 and bfloat16: judged against what the dtype can do.


def test_float32_kink_crossing_passes():
  """A float32 pre-activation lands exactly on leaky-ReLU's kink while
  float64 sees it just below (slope 1 against 0.01): the old checker FAILed
  this correct gradient; the example is now left out of every comparison."""
  model = fnn.MLP((1, 1, 4, 3), activation=("tanh", "leaky_relu"))
  params, x, y = _problem(model, batch=40, dtype=jnp.float32)
  # Width-1 layers with n_in = 1 make every float32 forward (batched or per
  # example, fused multiply-add or not) round the same way.
  a32 = np.asarray(jnp.tanh(x @ params[0].w + params[0].b[None, :]))[:, 0]
  a64 = np.tanh(np.asarray(x, np.float64) @ np.asarray(params[0].w,
                                                       np.float64))[:, 0]
  i = int(np.flatnonzero(a64 < a32.astype(np.float64))[0])
  w1, b1 = params[1]
  params = (params[0], fnn.Dense(w1.at[0, 0].set(1.0), b1.at[0].set(-a32[i])),
            params[2])
  z32 = (jnp.tanh(x @ params[0].w + params[0].b[None, :]) @ params[1].w
         + params[1].b[None, :])
  assert z32[i, 0] == 0 and a64[i] - np.float64(a32[i]) < 0
  report = fnn.check_grads(model, params, x, y, mode="full", strict=True)
  assert report.passed and report.status == "kink", report.table()
  assert report.left_out == 1
  # The yardstick agrees: float32's own jax.grad is as close to float64.
  for r in report.rows:
    assert r.autodiff.scaled < 1e-5 and r.per_example.scaled < 1e-4


def test_float32_saturated_sigmoid_passes():
  """float32 rounds sigmoid(z > 16.6) to exactly 1, so sigma' = 0 where
  float64 has ~1e-8, in the hand code and in float32's jax.grad alike: the
  old checker FAILed every row; saturated examples are now left out and the
  rest is judged against float32's own jax.grad."""
  model = fnn.MLP((3, 4, 1), activation="tanh", output="sigmoid",
                  loss="squared_error")
  params, x, y = _problem(model, seed=1, batch=40, dtype=jnp.float32)
  w, b = params[1]
  params = (params[0], fnn.Dense(w * 3, b + 17.0))
  a = jax.nn.sigmoid(model._logits(params, x))
  assert 0 < int(jnp.sum(a == 1)) < 40  # some saturated, some not
  report = fnn.check_grads(model, params, x, y, mode="full", strict=True)
  assert report.passed and report.left_out == int(jnp.sum(a == 1))
  # Near saturation float32 cannot do better than ~1e-1 of these tiny
  # gradients: "high" (explained by the dtype), never FAIL or suspect.
  assert {r.status for r in report.rows} <= {"high", "kink", "pass"}
  for r in report.rows:
    assert r.autodiff.explained and r.formula.ok


def _off_by(act, r):
  return lambda z, a: act.grad(z, a) * (1 + r)


# 1.5% is the same property at a smaller error (and its own compiles): slow.
@pytest.mark.parametrize(
    "r", [3e-2, pytest.param(1.5e-2, marks=pytest.mark.slow)],
    ids=["3%", "1.5%"])
def test_wrong_activation_is_reported_in_every_dtype(registry, r):
  act, _ = registry
  act("tanh_off", activations.tanh, _off_by(activations.TANH, r))
  model = fnn.MLP((4, 5, 3), activation="tanh_off")
  statuses = {}
  for dtype in (jnp.float64, jnp.float32, jnp.bfloat16):
    params, x, y = _problem(model, batch=40, dtype=dtype)
    report = fnn.check_grads(model, params, x, y)
    name = report.dtype
    statuses[name] = [row.status for row in report.rows]
    # Only layer 0's gradient goes through the wrong tanh'.
    assert statuses[name][2:] in (["pass", "pass"], ["high", "high"],
                                  ["pass", "high"], ["high", "pass"]), name
    assert set(statuses[name][:2]) <= {"FAIL", "suspect"}, (name, statuses)
    strict = report._replace(strict=True)
    assert not strict.passed and strict.failures()
  assert statuses["float64"][:2] == ["FAIL", "FAIL"]
  # bfloat16's own rounding (~1e-2) hides a 1.5-3% error from its own
  # comparisons; the hand code re-run in float64 does not.
  params, x, y = _problem(model, batch=40, dtype=jnp.bfloat16)
  report = fnn.check_grads(model, params, x, y)
  assert report.rows[0].formula.scaled > 1e-3 and not report.rows[0].formula.ok
  assert report.rows[2].formula.ok


@pytest.mark.slow  # 36 s; a wrong activation covers every dtype by default
def test_slightly_wrong_fused_delta_is_reported(registry):
  _, loss = registry
  bce = losses.BINARY_CROSS_ENTROPY
  loss("bce_shifted", bce.fn, bce.grad, outputs=("sigmoid",),
       canonical="sigmoid", fn_z=bce.fn_z,
       delta_z=lambda z, a, y: a - y + 1e-3 * a, targets="probability")
  model = fnn.MLP((4, 5, 3), activation="tanh", output="sigmoid",
                  loss="bce_shifted")
  for dtype in (jnp.float64, jnp.float32, jnp.bfloat16):
    params, x, y = _problem(model, batch=40, dtype=dtype)
    report = fnn.check_grads(model, params, x, y)
    if dtype == jnp.float64:
      assert report.status == "FAIL" and not report.passed
      continue
    # Every leaf goes through the output delta.
    assert all(r.status in ("FAIL", "suspect") for r in report.rows), (
        report.table())
    strict = fnn.check_grads(model, params, x, y, strict=True)
    assert not strict.passed
    assert len(strict.failures()) == len(report.rows)
    if report.status == "suspect":  # passes by default, but says so
      assert report.passed and report.suspects()
      assert "suspect" in report.table() and "--strict" in report.table()
  good = fnn.MLP((4, 5, 3), activation="tanh", output="sigmoid",
                 loss="binary_cross_entropy")
  for dtype in (jnp.float32, jnp.bfloat16):
    params, x, y = _problem(good, batch=40, dtype=dtype)
    assert fnn.check_grads(good, params, x, y, strict=True).passed


@pytest.mark.parametrize("tiny", [1e-9, pytest.param(1e-13, marks=pytest.mark.slow)],
                         ids=["1e-9", "1e-13"])
def test_wrong_tiny_layer_is_caught(registry, tiny):
  """Layer 0's gradient is ``tiny`` times the net's largest entry and 90%
  wrong: the tolerance floor is the leaf's own, so float64 catches it (the
  old floor, 1e-3 * rtol of the net's largest entry, hid it below ~1e-11)."""
  act, _ = registry
  act("tanh_90", activations.tanh, _off_by(activations.TANH, -0.9))
  model = fnn.MLP((4, 5, 5, 3), activation=("tanh_90", "tanh"))
  good = fnn.MLP((4, 5, 5, 3), activation="tanh")
  params, x, y = _problem(model, batch=40)
  w1, b1 = params[1]
  params = (params[0], fnn.Dense(w1 * tiny, b1), params[2])
  grads = fnn.grad(good, params, x, y)
  largest = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  ratio = float(jnp.abs(grads[0].w).max()) / largest
  assert tiny / 100 < ratio < tiny * 100
  report = fnn.check_grads(model, params, x, y)
  assert [r.status for r in report.rows] == ["FAIL"] * 2 + ["pass"] * 4
  assert report.rows[0].autodiff.scaled > 0.5
  assert fnn.check_grads(good, params, x, y).status == "pass"
  # float32 judges the tiny leaf at its own scale as well.
  p32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  if tiny > 1e-12:
    report = fnn.check_grads(model, p32, x.astype(jnp.float32), y)
    assert [r.status for r in report.rows][:2] == ["FAIL", "FAIL"]


@pytest.mark.slow  # 18 s; directional float32 also runs in
# test_wrong_derivative_fails_in_directional_mode_and_in_float32
def test_float32_directional_uses_the_yardstick():
  model = fnn.MLP((4, 6, 3), activation="gelu", output="sigmoid",
                  loss="binary_cross_entropy")
  params, x, y = _problem(model, batch=16, dtype=jnp.float32)
  report = fnn.check_grads(model, params, x, y, mode="directional",
                           strict=True)
  assert report.passed and report.status == "pass", report.table()
  for r in report.rows:
    for c in (r.autodiff, r.fd, r.per_example):
      assert c.same_dtype is not None and c.explained
  d = json.loads(json.dumps(report.to_dict()))
  assert d["strict"] is True and d["rows"][0]["formula"]["ok"] is True


def test_sweep_should_stop_and_progress():
  calls = []
  reports = sweep.sweep(depths=(1,), progress=lambda i, n, r: calls.append(
      (i, n, r.status)), should_stop=lambda: len(calls) >= 2)
  n = len(fnn.valid_pairs())
  assert len(reports) == 2 and [c[:2] for c in calls] == [(1, n), (2, n)]


def test_heatmap_marks_exact_zeros(tmp_path):
  rows = [dict(depth=d, activation=a, output="softmax",
               loss="categorical_cross_entropy", dtype="float64",
               autodiff=v, fd=v, per_example=v)
          for d, a, v in [(2, "tanh", 1e-15), (3, "tanh", 3e-16),
                          (2, "relu", 0.0), (3, "relu", 0.0)]]
  path = tmp_path / "h.png"
  sweep.heatmap(str(path), rows)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="which must be one of"):
    sweep.heatmap(str(path), rows, which="nope")


# --------------------------------------------------------------------------
# The CLI.


def _run(argv, capsys):
  try:
    code = cli.main(["gradcheck", *argv])
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_cli_single_configuration(capsys):
  code, out, _ = _run(["--sizes", "4,5,3", "--activation", "relu"], capsys)
  assert code == 0 and "PASSED" in out and "layer 1 b" in out
  code, out, _ = _run(["--format", "json", "--mode", "directional",
                       "--dtype", "float32"], capsys)
  d = json.loads(out)
  assert code == 0 and d["mode"] == "directional" and d["dtype"] == "float32"
  code, out, _ = _run(["--format", "markdown"], capsys)
  assert code == 0 and out.startswith("| leaf |")


def test_cli_exit_1_on_a_wrong_derivative(tmp_path, capsys, monkeypatch):
  (tmp_path / "mybad.py").write_text(
      "import fnn\n"
      "from fnn import activations\n"
      "fnn.register_activation('cli_bad_sigmoid', activations.sigmoid,\n"
      "                        lambda z, a: a)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  try:
    code, out, _ = _run(["--import", "mybad", "--activation",
                         "cli_bad_sigmoid"], capsys)
  finally:
    activations.ACTIVATIONS.pop("cli_bad_sigmoid", None)
    sys.modules.pop("mybad", None)
  assert code == 1
  assert "FAIL layer 0 w" in out and "hand-derived vs" in out


def test_cli_sweep_json_markdown_and_plot(tmp_path, capsys):
  plot = tmp_path / "heat.png"
  code, out, err = _run(["--all", "--depths", "1", "--format", "json",
                         "--plot", str(plot)], capsys)
  d = json.loads(out)
  assert code == 0 and d["failed"] == 0
  assert d["configurations"] == len(fnn.valid_pairs()) == len(d["rows"])
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "configurations" in err  # progress on stderr (not a terminal)
  code, out, _ = _run(["--all", "--depths", "1", "--format", "markdown",
                       "--quiet"], capsys)
  assert code == 0 and out.startswith("| depth | activation |")


BAD = [
    (["--sizes", "4,x"], "--sizes must be comma-separated ints"),
    (["--sizes", "4,0,3"], "--sizes values must be at least 1"),
    (["--activation", "nope"], "unknown hidden activation 'nope'"),
    (["--loss", "binary_cross_entropy"], "needs output sigmoid"),
    (["--plot", "x.png"], "use it with --all"),
    (["--batch", "0"], "argument --batch: must be a positive integer"),
    (["--import", "no_such_module_xyz"], "--import no_such_module_xyz"),
    (["--dtype", "float16"], "invalid choice"),
    (["--mode", "both"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_cli_bad_usage_exits_2_with_one_line(capsys, argv, message):
  code, out, err = _run(argv, capsys)
  assert code == 2 and message in err and err.count("\n") == 1
  assert "Traceback" not in err

"""experiments/edge_of_stability.py and experiments/mislabeled.py: their core
functions on tiny problems (the scripts' real runs are in
experiments/results/)."""
import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fnn
from fnn import data as data_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))  # their _common.py


def _load(name):
  path = os.path.join(ROOT, "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


eos = _load("edge_of_stability")
mis = _load("mislabeled")


def _blobs(n, d, k, *, seed, spread=0.3):
  r"""``k`` well-separated Gaussian clusters in ``d`` dimensions."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(k, d)) * 2
  y = np.arange(n) % k
  x = centers[y] + spread * rng.normal(size=(n, d))
  return data_lib.Dataset("blobs", x.astype(np.float32), y, x[:k].astype(
      np.float32), y[:k], k)


# --- edge of stability ------------------------------------------------------

def _tiny_eos():
  return eos.make_problem(12, seed=1, sizes=(3, 4, 3),
                          dataset=_blobs(12, 3, 3, seed=0))


def test_sharpness_is_the_brute_force_top_eigenvalue():
  """Lanczos on the hand-derived HVP against eigvalsh of jax.hessian of the
  reference loss, after 30 GD steps (a point off the init)."""
  model, params, x, y = _tiny_eos()
  p = eos.gd_steps(model, params, x, y, 0.5, 30)[0]
  flat, unravel = ravel_pytree(p)
  h = jax.jit(jax.hessian(lambda f: model.mean_loss(unravel(f), x, y)))(flat)
  want = float(jnp.linalg.eigvalsh(h)[-1])
  # iters = P = 31: Lanczos with full reorthogonalization is then exact, so
  # only float64 rounding separates the two (x64 in conftest)
  got = eos.sharpness(model, p, x, y, key=jax.random.key(0), iters=flat.size)
  assert got == pytest.approx(want, rel=1e-9)
  # the script's default (20 steps < P) finds the top one as well
  assert eos.sharpness(model, p, x, y, key=jax.random.key(1)) == (
      pytest.approx(want, rel=1e-6))


def test_gd_steps_are_gd_with_fnn_grad():
  model, params, x, y = _tiny_eos()
  got, losses = eos.gd_steps(model, params, x, y, 0.3, 4)
  p, want = params, []
  for _ in range(4):
    want.append(model.mean_loss(p, x, y))
    g = jax.grad(model.mean_loss)(p, x, y)
    p = jax.tree.map(lambda w, dw: w - 0.3 * dw, p, g)
  np.testing.assert_allclose(losses, want, rtol=1e-12)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_run_eta_records_and_stops_on_divergence():
  model, params, x, y = _tiny_eos()
  r = eos.run_eta(model, params, x, y, 0.1, steps=10, every=4,
                  key=jax.random.key(0), iters=10, check_iters=20)
  assert r["sharpness_steps"] == [0, 4, 8, 10] and len(r["loss"]) == 10
  assert r["diverged"] is None and 0 <= r["final_accuracy"] <= 1
  a, b = r["lanczos_check"]["sharpness"]
  assert a == pytest.approx(b, rel=1e-6)
  # far above 2 / sharpness: the loss overflows and the run stops there
  bad = eos.run_eta(model, params, x, y, 1e6, steps=40, every=8,
                    key=jax.random.key(0), iters=5)
  assert bad["diverged"] is not None and len(bad["loss"]) == bad["diverged"]
  assert np.all(np.isfinite(bad["loss"]))


def test_eos_summary():
  r = dict(eta=0.2, two_over_eta=10.0, sharpness_steps=[0, 10, 20, 30, 40,
                                                        50, 60],
           sharpness=[4, 8, 10.5, 9.5, 10.2, 9.9, 10.1],
           loss=[5, 4, 3, 2, 1, 2, 1, 2, 1, 0.5] + [0.4] * 50,
           diverged=None, seconds=1.0, final_loss=0.4, final_accuracy=0.9)
  s = eos.summarize(r)
  assert s["max_sharpness"] == 10.5 and s["max_ratio"] == 1.05
  assert s["first_step_at_2_over_eta"] == 20
  assert s["median_last_third"] == pytest.approx(10.1)  # steps 40, 50, 60
  assert s["loss_up_before"] == pytest.approx(2 / 19)  # 2 rises in 19 steps
  assert s["loss_up_after"] == 0.0


@pytest.mark.slow  # MNIST-1D is generated (seconds) and a few compilations
def test_eos_script_end_to_end(tmp_path):
  assert eos.main(["--steps", "20", "--every", "10", "--etas", "0.2,0.1",
                   "--n", "100", "--iters", "5", "--out", str(tmp_path)]) == 0
  got = json.loads((tmp_path / "edge_of_stability.json").read_text())
  assert [s["two_over_eta"] for s in got["summary"]] == pytest.approx([10,
                                                                       20])
  assert got["machine"] and got["command"].startswith("experiments/")
  assert (tmp_path / "edge_of_stability.png").exists()
  assert eos.main(["--replot", "--out", str(tmp_path)]) == 0


# --- mislabeled -------------------------------------------------------------

def test_flip_labels():
  y = np.arange(200) % 10
  noisy, flipped = mis.flip_labels(y, 10, 0.1, seed=3)
  assert flipped.sum() == 20
  assert np.all(noisy[flipped] != y[flipped])
  assert np.all(noisy[~flipped] == y[~flipped])
  assert noisy.min() >= 0 and noisy.max() <= 9
  with pytest.raises(ValueError, match="noise"):
    mis.flip_labels(y, 10, 1.5, seed=0)


def test_self_influence_against_autodiff_per_example_gradients():
  """The exact score is sum_c lr_c |g_i|^2 over every parameter; the last
  layer's is the same over the output layer's (w, b) only."""
  ds = _blobs(10, 4, 3, seed=1)
  model = fnn.MLP((4, 5, 3), activation="tanh")
  ckpts = [model.init(jax.random.key(s), dtype=jnp.float64) for s in (0, 1)]
  lrs = [0.1, 0.05]
  scores, err = mis.self_influence(model, ckpts, lrs, ds.x, ds.y, chunk=4)
  want = {m: np.zeros(10) for m in mis.METHODS}
  one = lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])  # noqa
  sq = lambda tree: sum(jnp.sum(v ** 2, axis=tuple(range(1, v.ndim)))  # noqa
                        for v in jax.tree.leaves(tree))  # (B,)
  for p, lr in zip(ckpts, lrs):
    g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(p, ds.x, ds.y)
    want["tracin"] += lr * np.asarray(sq(g))
    want["tracin-last"] += lr * np.asarray(sq(g[-1]))
    want["loss"] += np.asarray(jax.vmap(one, in_axes=(None, 0, 0))(
        p, ds.x, ds.y))
  for m in mis.METHODS:
    np.testing.assert_allclose(scores[m], want[m], rtol=1e-10)
  assert err < 1e-12
  with pytest.raises(ValueError, match="one learning rate per checkpoint"):
    mis.self_influence(model, ckpts, [0.1], ds.x, ds.y)


def test_detection_metrics():
  flipped = np.array([1, 0, 1, 0, 0, 0], bool)
  score = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
  got = mis.detection(score, flipped)
  assert got["precision_at_k"] == 0.5  # top 2: one flip
  # pairs (flip above clean): flip 5.0 beats 4 cleans, flip 3.0 beats 3
  assert got["auc"] == pytest.approx(7 / 8)
  assert got["found"][0] == 0 and got["found"][-1] == 1
  from sklearn.metrics import roc_auc_score
  rng = np.random.default_rng(0)
  s, f = rng.integers(0, 5, 50).astype(float), rng.random(50) < 0.3
  assert mis.roc_auc(s, f) == pytest.approx(roc_auc_score(f, s))  # ties


def test_checkpoint_epochs():
  assert mis.checkpoint_epochs(30, 6) == [5, 10, 15, 20, 25, 30]
  assert mis.checkpoint_epochs(150, 6) == [25, 50, 75, 100, 125, 150]
  assert mis.checkpoint_epochs(2, 6) == [1, 2]
  with pytest.raises(ValueError, match="epochs and count"):
    mis.checkpoint_epochs(0, 6)


def test_self_influence_finds_flipped_labels_on_a_tiny_problem():  # ~3 s
  """Separable clusters, 10% flipped: every score ranks the flips far above
  chance (P@k 0.1, AUC 0.5)."""
  ds = _blobs(300, 6, 4, seed=2)
  r = mis.run_seed(ds, 0, noise=0.1, epochs=20, checkpoints=[5, 10, 20],
                   lr=0.1, batch_size=30, sizes=(6, 16, 4))
  assert r["flipped"] == 30 and r["checkpoints"] == [5, 10, 20]
  for m in mis.METHODS:
    assert r["methods"][m]["auc"] > 0.8, (m, r["methods"][m])
    assert r["methods"][m]["precision_at_k"] > 0.5, (m, r["methods"][m])


def test_mislabeled_summary_pairs_the_seeds():
  def run(p, a):
    return dict(methods={m: dict(precision_at_k=p[i], auc=a[i],
                                 found=[0.0, 1.0])
                         for i, m in enumerate(mis.METHODS)})
  runs = [run((0.8, 0.6, 0.7), (0.9, 0.8, 0.95)),
          run((0.6, 0.6, 0.5), (0.85, 0.9, 0.9))]
  s = mis.summarize(runs)
  assert s["methods"]["tracin"]["precision_at_k_mean"] == pytest.approx(0.7)
  assert s["methods"]["tracin"]["precision_at_k_std"] == pytest.approx(
      np.std([0.8, 0.6], ddof=1))
  d = s["paired"]["tracin-minus-loss-auc"]
  assert d["mean"] == pytest.approx(-0.05) and d["tracin_higher"] == 0
  assert s["paired"]["tracin-minus-tracin-last-precision_at_k"][
      "tracin_higher"] == 1


@pytest.mark.slow  # MNIST-1D is generated (seconds), then one short seed
def test_mislabeled_script_end_to_end(tmp_path):
  assert mis.main(["--seeds", "2", "--epochs", "2", "--regimes", "early",
                   "--out", str(tmp_path)]) == 0
  got = json.loads((tmp_path / "mislabeled.json").read_text())
  reg = got["regimes"]["early"]
  assert reg["checkpoints"] == [1, 2] and len(reg["runs"]) == 2
  assert set(reg["summary"]["methods"]) == set(mis.METHODS)
  assert reg["runs"][0]["flipped"] == 400
  assert got["machine"] and "early" in (tmp_path / "mislabeled.md").read_text()
  assert (tmp_path / "mislabeled.png").exists()
  assert mis.main(["--replot", "--out", str(tmp_path)]) == 0

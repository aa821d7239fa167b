r"""Finding mislabeled training examples by self-influence (TracIn).

Pruthi et al. (NeurIPS 2020), "Estimating Training Data Influence by
Tracing Gradient Descent": the TracIn self-influence of a training example
is ``sum_c eta_c |g_i(theta_c)|^2`` over saved checkpoints ``theta_c``
(``eta_c`` the learning rate there, ``g_i`` the gradient of example ``i``'s
own loss). A mislabeled example keeps a large gradient (the rest of the
data pulls the model away from its label), so ranking by self-influence
should put the flipped labels first. Three scores, each summed over the same
checkpoints:

- ``tracin``: exact, every layer: the diagonal of ``fnn.grad_gram`` (per
  dense layer ``(|a_prev|^2 + 1) |delta|^2``; the Gram of a chunk of
  examples from one hand-derived backward pass, its diagonal taken), times
  the learning rate; checked against ``fnn.per_example_grad_norms ** 2``
  (the largest relative difference is in the JSON);
- ``tracin-last``: the last dense layer only, ``(|a_prev|^2 + 1)
  |delta_L|^2`` (captum's ``TracInCPFast``, which uses only the final fully
  connected layer's gradient), times the learning rate;
- ``loss``: the example's loss alone.

Setup: MNIST-1D (``fnn.data.load("mnist1d")``, 4,000 training examples);
10% of the training labels (400) replaced by a different class drawn
uniformly (``--noise``); a 40-100-100-10 ReLU MLP (softmax, cross-entropy)
trained with plain SGD (constant learning rate, batch 100, shuffled each
epoch), six checkpoints evenly spaced over training (``--num-checkpoints``).
Two training regimes (:data:`REGIMES`), both at learning rate 0.1:

- ``early``: 30 epochs (checkpoints after 5, 10, ..., 30): the model has
  not fitted the flipped labels (it predicts the noisy label on ~15% of
  them), roughly where one would stop on a validation set;
- ``memorize``: 150 epochs (after 25, 50, ..., 150): every training label,
  flipped or not, is fitted.

Per seed (0..``--seeds``-1) the flips, the init and the shuffling differ;
both regimes see the same flips for a seed. Float32.

For softmax cross-entropy the output delta is ``p - e_y``, so the last
layer's ``|g_L|^2 = (|a_prev|^2 + 1) |p - e_y|^2`` and the loss ``-log p_y``
both grow as ``p_y`` falls: the three scores are close relatives, and the
loss is a strong baseline.

Figures per regime and method, mean +- std over seeds: precision at ``k``
(``k`` = the number of flipped labels: the fraction of the ``k`` highest
scores that are flipped; chance = the noise rate) and the ROC AUC of the
score as a detector of the flips (chance 0.5); the fraction of flips found
against the fraction of the training set inspected (the curve of Pruthi et
al.'s Figure 3); and the per-seed paired differences of TracIn against the
other two.

Writes ``experiments/results/mislabeled.{json,md,png}``.

Usage:
  .venv/bin/python experiments/mislabeled.py [--seeds 5] [--noise 0.1]
      [--regimes early,memorize] [--epochs E] [--num-checkpoints 6]
  .venv/bin/python experiments/mislabeled.py --replot  # PNG from JSON
"""
from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import data as data_lib, train

from _common import (RESULTS, add_replot_flag, machine, mean_std, pyplot,
                     replot, save_figure, write)

NAME = "mislabeled"
METHODS = ("tracin", "tracin-last", "loss")
LABELS = {"tracin": "TracIn, all layers (diag of fnn.grad_gram)",
          "tracin-last": "TracIn, last layer only (TracInCPFast)",
          "loss": "loss alone"}
SIZES = (40, 100, 100, 10)
CURVE = np.linspace(0, 1, 51)  # fractions of the training set inspected
# name -> (learning rate, epochs); probed with one seed: at lr 0.1 the
# flipped labels are ~15% fitted after 30 epochs and all after 150.
REGIMES = {"early": (0.1, 30), "memorize": (0.1, 150)}


def checkpoint_epochs(epochs: int, count: int) -> list[int]:
  r"""``count`` epochs evenly spaced over ``1..epochs``, the last one last
  (fewer when ``epochs < count``)."""
  if epochs < 1 or count < 1:
    raise ValueError(f"epochs and count must be >= 1, got {epochs}, {count}")
  return sorted({max(1, round(epochs * j / count)) for j in
                 range(1, count + 1)})


def flip_labels(y: np.ndarray, num_classes: int, noise: float, *, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
  r"""``round(noise * n)`` labels, chosen at random, each replaced by a
  different class drawn uniformly from the other ``num_classes - 1``.

  Returns:
    ``(noisy labels [n], flipped: bool [n])``.
  """
  if not 0 < noise < 1:
    raise ValueError(f"noise must be in (0, 1), got {noise}")
  rng = np.random.default_rng(seed)
  n = len(y)
  idx = rng.choice(n, size=int(round(noise * n)), replace=False)
  noisy = np.array(y, copy=True)
  # + 1..K-1 (mod K): never the true class, uniform over the others
  noisy[idx] = (y[idx] + rng.integers(1, num_classes, size=len(idx))
                ) % num_classes
  flipped = np.zeros(n, bool)
  flipped[idx] = True
  return noisy, flipped


@functools.partial(jax.jit, static_argnums=0)
def _chunk_scores(model, params, x, y):
  r"""Per example of a chunk: ``|g|^2`` (grad_gram's diagonal), the last
  dense layer's ``|g_L|^2``, the loss, and ``per_example_grad_norms**2``
  (the cross-check). ``y``: one-hot targets ``[C, K]``."""
  full = jnp.diagonal(fnn.grad_gram(model, params, x, y))  # (C,)
  losses, fs = fnn.factors(model, params, x, y)
  a_prev, delta = fs[-1]  # the output layer's factors, (C, n_in), (C, K)
  last = (jnp.sum(a_prev ** 2, -1) + 1) * jnp.sum(delta ** 2, -1)  # (C,)
  check = fnn.per_example_grad_norms(model, params, x, y) ** 2
  return full, last, losses, check


def self_influence(model, checkpoints, lrs, x, y, *, chunk: int = 500
                   ) -> tuple[dict, float]:
  r"""The three scores of every training example, summed over checkpoints.

  Args:
    model: an :class:`fnn.MLP` whose last layer is dense.
    checkpoints: params at each checkpoint.
    lrs: the learning rate at each checkpoint (TracIn's ``eta_c``).
    x: ``[n, d]``; y: ``[n]`` integer labels (the noisy ones trained on).
    chunk: examples per Gram block (``[chunk, chunk]`` per layer).

  Returns:
    ``({"tracin": [n], "tracin-last": [n], "loss": [n]}, err)`` with
    ``err`` the largest relative difference between grad_gram's diagonal
    and ``per_example_grad_norms ** 2``.
  """
  if len(checkpoints) != len(lrs) or not checkpoints:
    raise ValueError(f"need one learning rate per checkpoint, got "
                     f"{len(checkpoints)} checkpoints and {len(lrs)} rates")
  n = len(x)
  dtype = jax.tree.leaves(checkpoints[0])[0].dtype
  x = jnp.asarray(x, dtype)
  y1 = jnp.asarray(np.eye(model.n_out)[np.asarray(y)], dtype)
  scores = {m: np.zeros(n) for m in METHODS}
  err = 0.0
  for params, lr in zip(checkpoints, lrs):
    for lo in range(0, n, chunk):
      full, last, loss, check = map(np.asarray, _chunk_scores(
          model, params, x[lo:lo + chunk], y1[lo:lo + chunk]))
      scores["tracin"][lo:lo + chunk] += lr * full
      scores["tracin-last"][lo:lo + chunk] += lr * last
      scores["loss"][lo:lo + chunk] += loss
      err = max(err, float(np.max(np.abs(full - check)
                                  / np.maximum(np.abs(check), 1e-30))))
  return scores, err


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
  r"""The ROC AUC: the probability that a random positive scores above a
  random negative (ties count one half), by the Mann-Whitney rank sum."""
  from scipy.stats import rankdata
  pos = np.asarray(positive, bool)
  n1, n0 = int(pos.sum()), int((~pos).sum())
  if not n1 or not n0:
    raise ValueError("need positives and negatives for an AUC")
  ranks = rankdata(score)  # average ranks for ties
  return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def detection(score: np.ndarray, flipped: np.ndarray) -> dict:
  r"""Precision at ``k = #flipped``, ROC AUC, and the fraction of flips
  found among the top ``q`` of the ranking for ``q`` in :data:`CURVE`."""
  k = int(flipped.sum())
  order = np.argsort(-score, kind="stable")
  hits = np.concatenate([[0], np.cumsum(flipped[order])])
  found = hits[np.round(CURVE * len(score)).astype(int)] / k
  return dict(precision_at_k=float(hits[k] / k),
              auc=roc_auc(score, flipped), found=found.tolist())


def run_seed(ds, seed: int, *, noise: float, epochs: int, checkpoints,
             lr: float, batch_size: int = 100, sizes=SIZES) -> dict:
  r"""Flips, trains, saves the checkpoints, scores and evaluates one seed."""
  t0 = time.perf_counter()
  noisy, flipped = flip_labels(ds.y, ds.num_classes, noise, seed=seed)
  data = ds._replace(y=noisy)
  model = fnn.MLP(tuple(sizes), activation="relu")
  opt = train.make_optimizer("sgd", lr)
  state = train.init_state(model, opt, jax.random.key(seed))
  saved = {}

  def keep(metrics, state):
    if metrics["epoch"] in checkpoints:
      saved[metrics["epoch"]] = state.params

  state, hist = train.fit(model, opt, state, data, epochs=epochs,
                          batch_size=batch_size, callback=keep)
  t_train = time.perf_counter() - t0
  epochs_saved = sorted(saved)
  scores, err = self_influence(model, [saved[e] for e in epochs_saved],
                               [lr] * len(epochs_saved), data.x, noisy)
  pred = np.asarray(jnp.argmax(model.apply(state.params, jnp.asarray(
      data.x)), -1))
  return dict(
      seed=seed, flipped=int(flipped.sum()), n=len(noisy),
      checkpoints=epochs_saved, test_accuracy=hist[-1]["test_accuracy"],
      # how far the final model memorized the flips: it predicts the wrong
      # (noisy) label on this fraction of them
      fits_flipped=float(np.mean(pred[flipped] == noisy[flipped])),
      fits_clean=float(np.mean(pred[~flipped] == noisy[~flipped])),
      gram_vs_norms_max_rel=err, train_seconds=t_train,
      seconds=time.perf_counter() - t0,
      methods={m: detection(scores[m], flipped) for m in METHODS})


def summarize(runs: list) -> dict:
  r"""Mean +- std over seeds per method, and the paired per-seed
  differences of ``tracin`` against each other method."""
  out = {}
  for m in METHODS:
    p = [r["methods"][m]["precision_at_k"] for r in runs]
    a = [r["methods"][m]["auc"] for r in runs]
    found = np.asarray([r["methods"][m]["found"] for r in runs])
    out[m] = dict(zip(("precision_at_k_mean", "precision_at_k_std"),
                      mean_std(p)))
    out[m].update(zip(("auc_mean", "auc_std"), mean_std(a)))
    out[m]["found_mean"] = found.mean(0).tolist()
    out[m]["found_std"] = (found.std(0, ddof=1) if len(runs) > 1
                           else np.zeros(found.shape[1])).tolist()
  paired = {}
  for other in METHODS[1:]:
    for metric in ("precision_at_k", "auc"):
      d = [r["methods"]["tracin"][metric] - r["methods"][other][metric]
           for r in runs]
      mu, sd = mean_std(d)
      paired[f"tracin-minus-{other}-{metric}"] = dict(
          mean=mu, std=sd, tracin_higher=int(sum(v > 0 for v in d)),
          seeds=len(d))
  return dict(methods=out, paired=paired)


def plot(path, payload):
  r"""Per regime (one row each): P@k and AUC per method, and the fraction of
  flips found against the fraction inspected, from the JSON payload that
  :func:`main` writes."""
  plt = pyplot()
  cfg, regimes = payload["config"], payload["regimes"]
  fig, axes = plt.subplots(len(regimes), 2, figsize=(12, 4.3 * len(regimes)),
                           squeeze=False)
  width = 0.25
  for (name, reg), (ax1, ax2) in zip(regimes.items(), axes):
    s = reg["summary"]["methods"]
    k = reg["runs"][0]["flipped"]
    for i, m in enumerate(METHODS):
      vals = [s[m]["precision_at_k_mean"], s[m]["auc_mean"]]
      errs = [s[m]["precision_at_k_std"], s[m]["auc_std"]]
      xs = np.arange(2) + (i - 1) * width
      ax1.bar(xs, vals, width, yerr=errs, capsize=3, color=f"C{i}",
              label=LABELS[m])
      for xv, v in zip(xs, vals):
        ax1.annotate(f"{v:.3f}", (xv, v), textcoords="offset points",
                     xytext=(0, 8), ha="center", fontsize=7)
    ax1.plot([-0.45, 0.45], [cfg["noise"]] * 2, "k:", lw=1)
    ax1.plot([0.55, 1.45], [0.5] * 2, "k:", lw=1, label="chance")
    ax1.set_xticks([0, 1], [f"precision at k\n(k = {k} flipped labels)",
                            "ROC AUC"])
    ax1.set_ylim(0, 1.12)
    ax1.set_ylabel(f"mean +- std over {len(reg['runs'])} seeds")
    ax1.set_title(f"{name}: SGD lr {reg['lr']}, {reg['epochs']} epochs, "
                  f"checkpoints {reg['checkpoints']}", fontsize=9)
    ax1.legend(fontsize=7, loc="upper left")
    q = np.asarray(payload["curve_fractions"])
    for i, m in enumerate(METHODS):
      mu = np.asarray(s[m]["found_mean"])
      sd = np.asarray(s[m]["found_std"])
      ax2.plot(q, mu, color=f"C{i}", label=LABELS[m])
      ax2.fill_between(q, mu - sd, mu + sd, color=f"C{i}", alpha=0.2)
    ax2.plot(q, q, "k:", lw=1, label="random order")
    ax2.axvline(cfg["noise"], color="gray", lw=0.8, ls="--")
    ax2.set_xlabel("fraction of the training set inspected (highest score "
                   "first)")
    ax2.set_ylabel("fraction of the flipped labels found")
    ax2.set_title(f"{name}: final models fit {_fits(reg):.0%} of the flipped "
                  f"labels", fontsize=9)
    ax2.legend(fontsize=7, loc="lower right")
  fig.suptitle(f"Mislabeled examples by self-influence: MNIST-1D, "
               f"{100 * cfg['noise']:.0f}% of the training labels flipped, "
               f"MLP {'-'.join(map(str, cfg['sizes']))} ReLU, plain SGD")
  fig.tight_layout()
  save_figure(fig, path)


def _fits(reg) -> float:
  return float(np.mean([r["fits_flipped"] for r in reg["runs"]]))


def markdown(payload) -> str:
  cfg, regimes = payload["config"], payload["regimes"]
  first = next(iter(regimes.values()))["runs"]
  k = first[0]["flipped"]
  lines = [
      "# Mislabeled examples by self-influence (TracIn)", "",
      f"`{payload['command']}`; {payload['date']}; {payload['machine']}; "
      f"JAX {payload['versions']['jax']}, NumPy "
      f"{payload['versions']['numpy']}; float32; {payload['seconds']:.0f} s "
      f"in all.", "",
      f"MNIST-1D, {first[0]['n']} training examples, {k} labels "
      f"({100 * cfg['noise']:.0f}%) flipped to another class; MLP "
      f"{'-'.join(map(str, cfg['sizes']))} ReLU, softmax cross-entropy, "
      f"plain SGD, batch {cfg['batch_size']}; each score summed over "
      f"{cfg['num_checkpoints']} checkpoints. Mean +- std over "
      f"{len(first)} seeds (the flips, init and shuffling differ; the "
      f"regimes share them).", "",
      f"| regime | score | precision at k = {k} | ROC AUC |",
      "|---|---|---:|---:|"]
  for name, reg in regimes.items():
    for m in METHODS:
      v = reg["summary"]["methods"][m]
      lines.append(f"| {name} | {LABELS[m]} | {v['precision_at_k_mean']:.3f}"
                   f" +- {v['precision_at_k_std']:.3f} | {v['auc_mean']:.3f}"
                   f" +- {v['auc_std']:.3f} |")
  lines.append(f"| | chance | {cfg['noise']:.3f} | 0.500 |")
  lines.append("")
  for name, reg in regimes.items():
    s, runs = reg["summary"], reg["runs"]
    te = mean_std([r["test_accuracy"] for r in runs])
    fc = mean_std([r["fits_clean"] for r in runs])
    lines += [f"## {name}: lr {reg['lr']}, {reg['epochs']} epochs, "
              f"checkpoints after epochs {reg['checkpoints']}", "",
              f"Final models: clean test accuracy {te[0]:.3f} +- {te[1]:.3f}"
              f"; they predict the noisy label on {_fits(reg):.3f} of the "
              f"flipped examples and {fc[0]:.3f} of the clean ones.", "",
              "Paired per seed, TracIn (all layers) minus:"]
    for other in METHODS[1:]:
      parts = []
      for metric, label in (("precision_at_k", "P@k"), ("auc", "AUC")):
        d = s["paired"][f"tracin-minus-{other}-{metric}"]
        parts.append(f"{label} {d['mean']:+.3f} +- {d['std']:.3f} (TracIn "
                     f"higher on {d['tracin_higher']} of {d['seeds']} seeds)")
      lines.append(f"- {LABELS[other]}: " + "; ".join(parts))
    best = {metric: max(METHODS, key=lambda m: s["methods"][m][
        f"{metric}_mean"]) for metric in ("precision_at_k", "auc")}
    lines += ["", f"Highest mean: P@k {LABELS[best['precision_at_k']]}; AUC "
              f"{LABELS[best['auc']]}.", ""]
  err = max(r["gram_vs_norms_max_rel"] for reg in regimes.values()
            for r in reg["runs"])
  lines.append(f"grad_gram's diagonal against per_example_grad_norms**2: "
               f"largest relative difference {err:.1e} (float32).")
  return "\n".join(lines) + "\n"


def _regimes(value: str) -> list[str]:
  names = [v.strip() for v in value.split(",") if v.strip()]
  bad = [n for n in names if n not in REGIMES]
  if bad or not names:
    raise argparse.ArgumentTypeError(
        f"unknown regime(s) {bad}; choose from {', '.join(REGIMES)}")
  return names


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--noise", type=float, default=0.1,
                      help="fraction of training labels flipped")
  parser.add_argument("--regimes", type=_regimes, default=list(REGIMES),
                      help=f"comma-separated, from {', '.join(REGIMES)}")
  parser.add_argument("--epochs", type=int, default=None,
                      help="replace every regime's epochs (short runs)")
  parser.add_argument("--num-checkpoints", type=int, default=6)
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--out", default=RESULTS)
  add_replot_flag(parser, NAME)
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, NAME, plot)
  if args.seeds < 1 or args.num_checkpoints < 1:
    parser.error("--seeds and --num-checkpoints must be at least 1")
  if args.epochs is not None and args.epochs < 1:
    parser.error("--epochs must be at least 1")
  if not 0 < args.noise < 1:
    parser.error("--noise must be in (0, 1)")
  command = (f"experiments/{NAME}.py " + " ".join(
      sys.argv[1:] if argv is None else argv)).strip()
  t0 = time.perf_counter()
  ds = data_lib.load("mnist1d")
  regimes = {}
  for name in args.regimes:
    lr, epochs = REGIMES[name]
    epochs = epochs if args.epochs is None else args.epochs
    ckpts = checkpoint_epochs(epochs, args.num_checkpoints)
    runs = []
    for seed in range(args.seeds):
      r = run_seed(ds, seed, noise=args.noise, epochs=epochs,
                   checkpoints=ckpts, lr=lr, batch_size=args.batch_size)
      runs.append(r)
      print(f"{name} seed {seed}: test acc {r['test_accuracy']:.3f}, fits "
            f"flipped {r['fits_flipped']:.2f}; " + ", ".join(
                f"{m} P@k {r['methods'][m]['precision_at_k']:.3f} AUC "
                f"{r['methods'][m]['auc']:.3f}" for m in METHODS)
            + f"; {r['seconds']:.0f} s", flush=True)
    regimes[name] = dict(lr=lr, epochs=epochs, checkpoints=ckpts, runs=runs,
                         summary=summarize(runs))
  payload = dict(
      config=dict(noise=args.noise, num_checkpoints=args.num_checkpoints,
                  batch_size=args.batch_size, sizes=list(SIZES),
                  dataset="mnist1d", optimizer="sgd", dtype="float32",
                  seeds=args.seeds),
      command=command, date=datetime.date.today().isoformat(),
      machine=machine(), versions=dict(jax=jax.__version__,
                                       numpy=np.__version__,
                                       python=sys.version.split()[0]),
      seconds=time.perf_counter() - t0, curve_fractions=CURVE.tolist(),
      regimes=regimes)
  md = markdown(payload)
  write(args.out, NAME, payload, md)
  plot(f"{args.out}/{NAME}.png", payload)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())

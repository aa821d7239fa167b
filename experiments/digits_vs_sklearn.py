r"""fnn against scikit-learn's MLPClassifier on the bundled 8x8 digits.

The same split (fnn's ``digits``: stratified 80/20, ``random_state=0``,
features standardized with training statistics), architecture (64-100-10,
ReLU, softmax + cross-entropy), optimizer (Adam, lr 1e-3, betas 0.9/0.999,
eps 1e-8), batch (200, sklearn's default ``min(200, n)``), L2 penalty
(sklearn's ``alpha = 1e-4`` adds ``alpha/2 |W|^2 / batch`` to the batch loss:
fnn's ``weight_decay = alpha / batch``; biases not decayed in either), init
(sklearn's Glorot uniform) and epochs (200, every epoch run: sklearn's early
stopping is switched off), for 5 seeds, in one run. Both shuffle each epoch;
sklearn keeps the last partial batch, fnn drops it (7 full batches of 200
of 1,437 examples against sklearn's 8).

Reports test accuracy (mean +- std) and wall time, fnn's including its one
compilation (shared by the seeds: the model is the same).

Writes ``experiments/results/digits_vs_sklearn.{json,md,png}``.

Usage:
  .venv/bin/python experiments/digits_vs_sklearn.py [--seeds 5] [--epochs 200]
  .venv/bin/python experiments/digits_vs_sklearn.py --replot  # PNG from JSON
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import jax
import numpy as np

import fnn
from fnn import data as data_lib, train

from _common import (RESULTS, add_replot_flag, machine, mean_std, pyplot,
                     replot, save_figure, write)

HIDDEN, LR, BATCH, ALPHA = 100, 1e-3, 200, 1e-4


def run_fnn(ds, seed, epochs):
  model = fnn.MLP((64, HIDDEN, 10), activation="relu")
  opt = train.make_optimizer("adam", LR)
  state = train.init_state(model, opt, jax.random.key(seed), scheme="glorot")
  cfg = train.StepConfig(weight_decay=ALPHA / BATCH)
  _, hist = train.fit(model, opt, state, ds, epochs=epochs, batch_size=BATCH,
                      cfg=cfg)
  return hist[-1]["test_accuracy"]


def run_sklearn(ds, seed, epochs):
  from sklearn.neural_network import MLPClassifier
  clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu",
                      solver="adam", alpha=ALPHA, batch_size=BATCH,
                      learning_rate_init=LR, max_iter=epochs, shuffle=True,
                      random_state=seed, tol=0.0, n_iter_no_change=epochs + 1)
  with warnings.catch_warnings():  # "max_iter reached": what we asked for
    warnings.simplefilter("ignore")
    clf.fit(ds.x, ds.y)
  return float(np.mean(clf.predict(ds.x_test) == ds.y_test))


def plot(path, payload):
  r"""Accuracy per seed and wall time of fnn and sklearn, from the JSON
  payload that :func:`main` writes."""
  plt = pyplot()
  names = ("fnn", "sklearn")
  seeds, epochs = payload["seeds"], payload["epochs"]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
  accs = [payload[n]["accuracy"] for n in names]
  a1.boxplot(accs, tick_labels=names, medianprops=dict(color="k"))
  for i, acc in enumerate(accs):  # every seed, spread sideways: ties are
    # common (accuracies are multiples of 1/360)
    a1.plot(i + 1 + np.linspace(-0.1, 0.1, len(acc)), acc, "o",
            color=f"C{i}", alpha=0.7, label=f"{names[i]}: one seed")
  a1.set_xlabel("implementation")
  a1.set_ylabel("test accuracy (fraction of 360 test images)")
  a1.set_title(f"test accuracy, {seeds} seeds (box: quartiles)", fontsize=10)
  a1.legend(fontsize=8)
  a2.bar(names, [payload[n]["wall_seconds"] for n in names],
         color=["C0", "C1"])
  a2.set_xlabel("implementation")
  a2.set_ylabel(f"wall time (s), all {seeds} seeds")
  a2.set_title(f"wall time, fnn's incl. compilation\n({payload['machine']})",
               fontsize=10)
  fig.suptitle(f"Digits (8x8, 1,437 train / 360 test), 64-{HIDDEN}-10 ReLU "
               f"MLP, Adam lr {LR:g}, batch {BATCH}, L2 {ALPHA:g}, {epochs} "
               "epochs:\nfnn against scikit-learn's MLPClassifier")
  fig.tight_layout()
  save_figure(fig, path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--epochs", type=int, default=200)
  parser.add_argument("--out", default=RESULTS)
  add_replot_flag(parser, "digits_vs_sklearn")
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, "digits_vs_sklearn", plot)
  ds = data_lib.load("digits")
  results = {}
  for name, fn in (("fnn", run_fnn), ("sklearn", run_sklearn)):
    t0 = time.perf_counter()
    accs = [fn(ds, seed, args.epochs) for seed in range(args.seeds)]
    wall = time.perf_counter() - t0
    results[name] = dict(accuracy=accs, wall_seconds=wall)
    print(f"{name}: accuracy {mean_std(accs)}, {wall:.2f} s", flush=True)
  f, s = results["fnn"], results["sklearn"]
  speedup = s["wall_seconds"] / f["wall_seconds"]
  fm, fs = mean_std(f["accuracy"])
  sm, ss = mean_std(s["accuracy"])
  md = "\n".join([
      "# fnn vs scikit-learn's MLPClassifier on digits", "",
      f"`experiments/digits_vs_sklearn.py --seeds {args.seeds} --epochs "
      f"{args.epochs}`; {machine()}. 64-{HIDDEN}-10 ReLU, Adam lr {LR}, "
      f"batch {BATCH}, L2 alpha {ALPHA}, {args.epochs} epochs, "
      f"{args.seeds} seeds.", "",
      "| | test accuracy (mean +- std) | wall time, all seeds | per seed |",
      "|---|---:|---:|---:|",
      f"| fnn (incl. compilation) | {fm:.4f} +- {fs:.4f} | "
      f"{f['wall_seconds']:.2f} s | {f['wall_seconds'] / args.seeds:.2f} s |",
      f"| sklearn MLPClassifier | {sm:.4f} +- {ss:.4f} | "
      f"{s['wall_seconds']:.2f} s | {s['wall_seconds'] / args.seeds:.2f} s |",
      "", f"fnn is {speedup:.1f}x faster in wall time (target >= 5x); "
      f"accuracy {'>=' if fm >= sm else '<'} sklearn's (target >=).", ""])
  payload = dict(results, speedup=speedup, seeds=args.seeds,
                 epochs=args.epochs, machine=machine())
  write(args.out, "digits_vs_sklearn", payload, md)
  plot(f"{args.out}/digits_vs_sklearn.png", payload)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())

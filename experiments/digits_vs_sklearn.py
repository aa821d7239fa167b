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

from _common import RESULTS, machine, mean_std, save_figure, write

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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--epochs", type=int, default=200)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args(argv)
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
  write(args.out, "digits_vs_sklearn",
        dict(results, speedup=speedup, seeds=args.seeds, epochs=args.epochs,
             machine=machine()), md)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
  a1.boxplot([f["accuracy"], s["accuracy"]], tick_labels=["fnn", "sklearn"])
  a1.set_ylabel("test accuracy")
  a2.bar(["fnn", "sklearn"], [f["wall_seconds"], s["wall_seconds"]])
  a2.set_ylabel(f"wall seconds, {args.seeds} seeds")
  fig.tight_layout()
  save_figure(fig, f"{args.out}/digits_vs_sklearn.png")
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())

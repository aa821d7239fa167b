r"""DP-SGD with fnn: test accuracy against epsilon on MNIST-1D and digits.

Each run trains with per-example clipping to norm ``C`` and Gaussian noise
``sigma C`` on Poisson-sampled batches (expected size ``B``), all in one
backward pass per step (:func:`fnn.dp_grad`); epsilon at ``delta = 1e-5``
comes from ``dp-accounting``'s RDP accountant (and its PLD accountant,
tighter, also reported). Every noise multiplier runs for the same number of
epochs, so more noise means smaller epsilon. A non-private run of the same
setup (no clipping, no noise, shuffled batches) is the reference.

Setups (no dropout, no weight decay: neither is part of the DP analysis):

- ``mnist1d``: 40-256-256-10 ReLU, Adam lr 3e-3, B = 100 (q = 0.025),
  30 epochs (1,200 steps), C = 1;
- ``digits``: 64-64-10 ReLU, Adam lr 2e-3, B = 64 (q = 0.045), 30 epochs
  (660 steps), C = 1.

Writes ``experiments/results/dp_sgd.{json,md,png}``.

Usage:
  .venv/bin/python experiments/dp_sgd.py [--seeds 3] [--datasets mnist1d,digits]
  .venv/bin/python experiments/dp_sgd.py --replot  # the PNG from the JSON
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from fnn import checkpoint, data as data_lib, run, stats, train

from _common import RESULTS, add_replot_flag, gaps, pyplot, replot, save_figure

DELTA = 1e-5
NOISES = (0.5, 0.7, 1.0, 1.5, 2.5, 4.0)
SETUPS = {
    "mnist1d": dict(hidden="256,256", lr=3e-3, batch_size=100, epochs=30),
    "digits": dict(hidden="64", lr=2e-3, batch_size=64, epochs=30),
}
INPUTS = {"mnist1d": 40, "digits": 64}  # input sizes, for the figure's labels


def one_run(name, ds, noise, seed, epochs=None):
  r"""Test accuracy and epsilon of one run (noise None: non-private)."""
  setup = dict(SETUPS[name], **({"epochs": epochs} if epochs else {}))
  options = dict(setup, dataset=name, optimizer="adam",
                 schedule="constant", dropout=0.0, weight_decay=0.0, seed=seed,
                 dp_clip=1.0 if noise is not None else 0.0,
                 dp_noise=noise or 0.0)
  config = run.resolve_config(options)
  model, opt, cfg = run.build(config, ds)
  state = train.init_state(model, opt, jax.random.key(seed),
                           scheme=config["init"])
  t0 = time.perf_counter()
  state, hist = train.fit(model, opt, state, ds, epochs=config["epochs"],
                          batch_size=config["batch_size"], cfg=cfg)
  out = dict(dataset=name, noise=noise, seed=seed,
             test_accuracy=hist[-1]["test_accuracy"],
             seconds=time.perf_counter() - t0, steps=int(state.step))
  if noise is not None:
    q = config["batch_size"] / len(ds.x)
    out.update(epsilon=stats.dp_epsilon(noise=noise, sample_rate=q,
                                        steps=out["steps"], delta=DELTA),
               epsilon_pld=stats.dp_epsilon(noise=noise, sample_rate=q,
                                            steps=out["steps"], delta=DELTA,
                                            accountant="pld"))
  return out


def summarize(runs):
  rows = []
  keys = sorted({(r["dataset"], r["noise"] if r["noise"] is not None else -1)
                 for r in runs})
  for name, noise in keys:
    group = [r for r in runs if r["dataset"] == name
             and (r["noise"] if r["noise"] is not None else -1) == noise]
    acc = np.array([r["test_accuracy"] for r in group])
    rows.append(dict(dataset=name, noise=None if noise < 0 else noise,
                     epsilon=group[0].get("epsilon"),
                     epsilon_pld=group[0].get("epsilon_pld"),
                     accuracy_mean=float(acc.mean()),
                     accuracy_std=float(acc.std(ddof=1)) if len(acc) > 1
                     else 0.0, seeds=len(acc),
                     seconds_mean=float(np.mean([r["seconds"] for r in group]))))
  return rows


def markdown(rows, seeds):
  lines = ["# DP-SGD: test accuracy against epsilon", "",
           f"`experiments/dp_sgd.py --seeds {seeds}`; delta = {DELTA:g}, "
           "clip C = 1, Poisson sampling; mean +- std over seeds. epsilon: "
           "dp-accounting RDP accountant (PLD in brackets).", "",
           "| dataset | noise sigma | epsilon (PLD) | test accuracy | "
           "s per run |", "|---|---:|---:|---:|---:|"]
  for r in rows:
    eps = ("non-private" if r["noise"] is None else
           f"{r['epsilon']:.2f} ({r['epsilon_pld']:.2f})")
    lines.append(f"| {r['dataset']} | {r['noise'] if r['noise'] else '-'} | "
                 f"{eps} | {r['accuracy_mean']:.3f} +- "
                 f"{r['accuracy_std']:.3f} | {r['seconds_mean']:.1f} |")
  return "\n".join(lines) + "\n"


def plot(path, payload):
  r"""Test accuracy against epsilon per data set, from the JSON payload that
  :func:`main` writes (``rows`` from :func:`summarize`, ``setups``)."""
  plt = pyplot()
  rows, setups = payload["rows"], payload["setups"]
  fig, ax = plt.subplots(figsize=(9, 6))
  names = sorted({r["dataset"] for r in rows})
  for i, name in enumerate(names):
    dp = [r for r in rows if r["dataset"] == name and r["noise"]]
    base = [r for r in rows if r["dataset"] == name and not r["noise"]]
    s = setups[name]
    arch = f"{INPUTS.get(name, 'n')}-{s['hidden'].replace(',', '-')}-10"
    label = (f"{name}, {arch}, lr {s['lr']:g}, B {s['batch_size']}, "
             f"{s['epochs']} epochs")
    eps = gaps([r["epsilon"] for r in dp], log=True)  # None: no accountant
    ax.errorbar(eps, gaps([r["accuracy_mean"] for r in dp]),
                yerr=gaps([r["accuracy_std"] for r in dp]), marker="o",
                capsize=3, color=f"C{i}", label=f"{label}: DP-SGD")
    for x, r in zip(eps, dp):
      if np.isfinite(x):
        ax.annotate(f"sigma {r['noise']:g}", (x, r["accuracy_mean"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=7,
                    color=f"C{i}")
    if base:
      ax.axhline(base[0]["accuracy_mean"], color=f"C{i}", ls="--",
                 label=f"{name}: non-private, same setup")
  seeds = sorted({r["seeds"] for r in rows})
  ax.set_xscale("log")
  ax.margins(x=0.1)  # room for the right-most point's sigma label
  lo, hi = ax.get_xlim()
  ax.set_xticks([t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200,
                             500) if lo <= t <= hi])
  ax.xaxis.set_major_formatter("{x:g}")
  ax.xaxis.set_minor_formatter("")
  ax.set_xlabel(f"epsilon at delta = {DELTA:g} (RDP accountant; log scale; "
                "smaller is more private)")
  ax.set_ylabel(f"test accuracy (fraction), mean +- std over "
                f"{'/'.join(map(str, seeds))} seed{'s' * (seeds[-1] > 1)}")
  ax.set_title(f"DP-SGD on {' and '.join(names)}: test accuracy against "
               f"epsilon\nReLU MLPs, Adam, clip C = 1, noise sigma C, Poisson "
               "sampling, no dropout or weight decay", fontsize=11)
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13),
            ncol=2)  # below the axes: it hides no point
  fig.tight_layout()
  save_figure(fig, path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--datasets", default="mnist1d,digits")
  parser.add_argument("--noises", default=",".join(map(str, NOISES)))
  parser.add_argument("--epochs", type=int,
                      help="override every setup's epochs (default 30)")
  parser.add_argument("--out", default=RESULTS)
  add_replot_flag(parser, "dp_sgd")
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, "dp_sgd", plot)
  noises = [float(v) for v in args.noises.split(",")]
  runs = []
  for name in args.datasets.split(","):
    ds = data_lib.load(name)
    for noise in [None] + noises:
      for seed in range(args.seeds):
        runs.append(one_run(name, ds, noise, seed, args.epochs))
        r = runs[-1]
        print(f"{name} noise {noise}: seed {seed} acc "
              f"{r['test_accuracy']:.3f}, eps {r.get('epsilon', 0):.2f}, "
              f"{r['seconds']:.1f} s", flush=True)
  rows = summarize(runs)
  os.makedirs(args.out, exist_ok=True)
  setups = {name: dict(s, **({"epochs": args.epochs} if args.epochs else {}))
            for name, s in SETUPS.items()}  # the ones that ran
  payload = dict(rows=rows, runs=runs, setups=setups)
  checkpoint.atomic_write_bytes(
      os.path.join(args.out, "dp_sgd.json"),
      lambda f: f.write(json.dumps(payload, indent=1).encode()))
  text = markdown(rows, args.seeds)
  checkpoint.atomic_write_bytes(os.path.join(args.out, "dp_sgd.md"),
                                lambda f: f.write(text.encode()))
  plot(os.path.join(args.out, "dp_sgd.png"), payload)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())

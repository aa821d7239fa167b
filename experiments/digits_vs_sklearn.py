r"""fnn against scikit-learn's MLPClassifier on the bundled 8x8 digits.

The same split (fnn's ``digits``: stratified 80/20, ``random_state=0``,
features standardized with training statistics), architecture (64-100-10,
ReLU, softmax + cross-entropy), optimizer (Adam, lr 1e-3, betas 0.9/0.999,
eps 1e-8), batch (200, sklearn's default ``min(200, n)``), L2 penalty
(sklearn's ``alpha = 1e-4`` adds ``alpha/2 |W|^2 / batch`` to the batch loss:
fnn's ``weight_decay = alpha / batch``; biases not decayed in either), init
(sklearn's Glorot uniform) and epochs (200, every epoch run: sklearn's early
stopping is switched off), for 5 seeds, in one process. Both shuffle each
epoch; sklearn keeps the last partial batch, fnn drops it (7 full batches of
200 of 1,437 examples against sklearn's 8).

fnn trains its seeds in one program (:func:`fnn.fit_many`: the seeds' states
stacked, one compiled epoch for all of them; each seed equals the same seed
trained alone by :func:`fnn.fit`); sklearn fits one MLPClassifier per seed.
Wall time: fnn's from building the model to the last epoch's accuracies,
its compilation included; sklearn's its fits, on whichever of 1 and all
usable BLAS threads is faster on the machine at the time
(:func:`sklearn_threads`, recorded in the JSON). Neither counts importing
its library (both are imported first) nor loading the data.

Compilation: JAX's persistent compilation cache (``--compile-cache DIR``,
every program stored: ``jax_persistent_cache_min_compile_time_secs`` and
``..._min_entry_size_bytes`` 0) lets a second process load the compiled
programs instead of compiling them. ``--cold-and-warm`` (the published
figures) runs this script twice in fresh processes on one new, empty cache
directory: first cold (it compiles and fills the cache), then warm (it loads
them); the warm run's figures are the table's, the cold run's are beside
them. Without it one process measures with the cache it finds: by default
JAX's own when one is configured (``JAX_COMPILATION_CACHE_DIR``), else
``$FNN_COMPILE_CACHE`` or ``~/.cache/fnn/jax`` (``fnn train``'s); the JSON
records how many cache entries the run added (0: every program loaded).
``--compile-cache off`` turns the persistent cache off.

Reports test accuracy (mean +- std) and wall time.

Writes ``experiments/results/digits_vs_sklearn.{json,md,png}``.

Usage:
  .venv/bin/python experiments/digits_vs_sklearn.py --cold-and-warm
      [--seeds 5] [--epochs 200]
  .venv/bin/python experiments/digits_vs_sklearn.py [--seeds 5]
      [--epochs 200] [--compile-cache DIR|off]
  .venv/bin/python experiments/digits_vs_sklearn.py --replot  # PNG from JSON
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import data as data_lib, many, train

from _common import (RESULTS, add_replot_flag, machine, mean_std, pyplot,
                     replot, save_figure, write)

HIDDEN, LR, BATCH, ALPHA = 100, 1e-3, 200, 1e-4
NAME = "digits_vs_sklearn"


def configure_cache(value: str | None) -> str | None:
  r"""JAX's persistent compilation cache for this process: ``value`` a
  directory or ``"off"``; ``None``: JAX's own configuration when it has a
  directory, else fnn's (``$FNN_COMPILE_CACHE``, ``~/.cache/fnn/jax``).
  Call before anything compiles. Returns the directory in use, or None."""
  if value is not None and value.strip().lower() == "off":
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if value is None:
    if jax.config.jax_compilation_cache_dir:
      return jax.config.jax_compilation_cache_dir
    from fnn import _cache
    value = _cache.directory()
    if value is None:  # $FNN_COMPILE_CACHE says off
      return None
  path = os.path.abspath(os.path.expanduser(value))
  os.makedirs(path, mode=0o700, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def cache_entries(path: str | None) -> int | None:
  r"""The compiled programs stored under ``path`` (JAX's ``*-cache`` files)."""
  if path is None or not os.path.isdir(path):
    return None
  return sum(1 for n in os.listdir(path) if n.endswith("-cache"))


def run_fnn(ds, seed, epochs):
  r"""One seed alone (:func:`fnn.fit`): its test accuracy. The seeds of
  :func:`run_fnn_many` equal these (to float rounding)."""
  model = fnn.MLP((64, HIDDEN, 10), activation="relu")
  opt = train.make_optimizer("adam", LR)
  state = train.init_state(model, opt, jax.random.key(seed), scheme="glorot")
  cfg = train.StepConfig(weight_decay=ALPHA / BATCH)
  _, hist = train.fit(model, opt, state, ds, epochs=epochs, batch_size=BATCH,
                      cfg=cfg)
  return hist[-1]["test_accuracy"]


def run_fnn_many(ds, seeds, epochs) -> tuple[list[float], dict]:
  r"""All ``seeds`` in one program (:func:`fnn.fit_many`): their test
  accuracies and timings (the first epoch's seconds, which hold the
  compilation or the cache load, and the median epoch's)."""
  model = fnn.MLP((64, HIDDEN, 10), activation="relu")
  states = many.init_many(model, "adam",
                          [jax.random.key(s) for s in seeds], jnp.float32,
                          "glorot")
  hyper = many.hyper(len(seeds), lr=LR, weight_decay=ALPHA / BATCH)
  _, hist = many.fit_many(model, "adam", states, ds, epochs=epochs,
                          batch_size=BATCH, hyper=hyper)
  seconds = [h["seconds"] for h in hist]
  return hist[-1]["test_accuracy"], dict(
      first_epoch_seconds=seconds[0],
      median_epoch_seconds=float(np.median(seconds[1:] or seconds)))


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


CALIBRATION_EPOCHS = 20


def sklearn_threads(ds, epochs: int) -> dict:
  r"""The faster of 1 and all usable BLAS threads for sklearn's fits here
  (best of two short fits each, untimed).

  On a 2-core machine that another process keeps busy, OpenBLAS's 2 threads
  wait on each other: one fit takes 10x as long as with 1 thread (19 s
  against 1.5 s, measured). Giving sklearn its faster setting keeps the
  comparison fair.
  """
  from threadpoolctl import threadpool_limits
  options = sorted({1, max(1, len(os.sched_getaffinity(0)))})
  best = {n: np.inf for n in options}
  calibration = min(epochs, CALIBRATION_EPOCHS)
  for _ in range(2):
    for n in options:
      with threadpool_limits(limits=n, user_api="blas"):
        t0 = time.perf_counter()
        run_sklearn(ds, 0, calibration)
        best[n] = min(best[n], time.perf_counter() - t0)
  return dict(threads=min(best, key=best.get),
              calibration_seconds={str(n): t for n, t in best.items()},
              calibration_epochs=calibration)


def measure(seeds: int, epochs: int, cache: str | None) -> dict:
  r"""fnn's seeds in one program, then sklearn's fits, in this process."""
  import sklearn.neural_network  # noqa: F401 (imported before timing)
  from threadpoolctl import threadpool_limits
  ds = data_lib.load("digits")
  before = cache_entries(cache)
  results = {}
  t0 = time.perf_counter()
  accs, timing = run_fnn_many(ds, list(range(seeds)), epochs)
  wall = time.perf_counter() - t0
  results["fnn"] = dict(accuracy=accs, wall_seconds=wall, **timing)
  print(f"fnn ({seeds} seeds in one program): accuracy "
        f"{mean_std(accs)}, {wall:.2f} s (first epoch "
        f"{timing['first_epoch_seconds']:.2f} s)", flush=True)
  threads = sklearn_threads(ds, epochs)
  with threadpool_limits(limits=threads["threads"], user_api="blas"):
    t0 = time.perf_counter()
    accs = [run_sklearn(ds, seed, epochs) for seed in range(seeds)]
    wall = time.perf_counter() - t0
  results["sklearn"] = dict(accuracy=accs, wall_seconds=wall, **threads)
  print(f"sklearn ({seeds} fits, {threads['threads']} BLAS thread"
        f"{'s' * (threads['threads'] > 1)}): accuracy {mean_std(accs)}, "
        f"{wall:.2f} s", flush=True)
  after = cache_entries(cache)
  results["speedup"] = (results["sklearn"]["wall_seconds"]
                        / results["fnn"]["wall_seconds"])
  results["cache"] = dict(
      dir=cache, entries_before=before, entries_after=after,
      state=None if cache is None else "warm" if before and after == before
      else "cold" if not before else "partly warm")
  results["loadavg"] = os.getloadavg()[0]
  return results


def cold_and_warm(args) -> tuple[dict, dict]:
  r"""This script twice in fresh processes on one new cache directory."""
  tmp = tempfile.mkdtemp(prefix="fnn-digits-vs-sklearn-")
  try:
    cache = os.path.join(tmp, "jax-cache")
    out = []
    for label in ("cold", "warm"):
      path = os.path.join(tmp, f"{label}.json")
      load = os.getloadavg()[0]
      print(f"{label} cache: a new process (load average {load:.2f})",
            flush=True)
      subprocess.run([sys.executable, os.path.abspath(__file__), "--seeds",
                      str(args.seeds), "--epochs", str(args.epochs),
                      "--compile-cache", cache, "--measure-only", path],
                     check=True)
      with open(path) as f:
        r = json.load(f)
      r["loadavg_before"] = load
      out.append(r)
    return out[0], out[1]
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


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
  cold = payload.get("cold")
  state = (payload.get("cache") or {}).get("state")
  labels = [f"fnn\n({state} cache)" if state else "fnn", "sklearn"]
  walls = [payload[n]["wall_seconds"] for n in names]
  colors = ["C0", "C1"]
  if cold:
    labels.insert(1, "fnn\n(cold cache)")
    walls.insert(1, cold["fnn"]["wall_seconds"])
    colors.insert(1, "C2")
  a2.bar(labels, walls, color=colors)
  a2.set_xlabel("implementation")
  a2.set_ylabel(f"wall time (s), all {seeds} seeds")
  a2.set_title(f"wall time, fnn's seeds in one program, incl. compilation\n"
               f"({payload['machine']})", fontsize=10)
  fig.suptitle(f"Digits (8x8, 1,437 train / 360 test), 64-{HIDDEN}-10 ReLU "
               f"MLP, Adam lr {LR:g}, batch {BATCH}, L2 {ALPHA:g}, {epochs} "
               "epochs:\nfnn against scikit-learn's MLPClassifier")
  fig.tight_layout()
  save_figure(fig, path)


# Accuracies are multiples of 1/360 (fnn's in float32): means closer than
# this are equal.
TIE = 1e-6


def _compare(a: float, b: float) -> str:
  return "=" if abs(a - b) < TIE else ">" if a > b else "<"


def markdown(payload: dict, command: str) -> str:
  f, s = payload["fnn"], payload["sklearn"]
  seeds, epochs = payload["seeds"], payload["epochs"]
  fm, fs = mean_std(f["accuracy"])
  sm, ss = mean_std(s["accuracy"])
  cold = payload.get("cold")
  state = (payload.get("cache") or {}).get("state")
  rows = [
      f"| fnn, {seeds} seeds in one program (incl. compilation"
      + (f", {state} cache" if state else "") + f") | {fm:.4f} +- {fs:.4f} | "
      f"{f['wall_seconds']:.2f} s | {f['wall_seconds'] / seeds:.2f} s |"]
  if cold:
    cm, cs = mean_std(cold["fnn"]["accuracy"])
    rows.append(
        f"| fnn, the same, cold cache (compiles) | {cm:.4f} +- {cs:.4f} | "
        f"{cold['fnn']['wall_seconds']:.2f} s | "
        f"{cold['fnn']['wall_seconds'] / seeds:.2f} s |")
  rows.append(f"| sklearn MLPClassifier, {seeds} fits ({s['threads']} "
              f"BLAS thread{'s' * (s['threads'] > 1)}) | {sm:.4f} +- "
              f"{ss:.4f} | {s['wall_seconds']:.2f} s | "
              f"{s['wall_seconds'] / seeds:.2f} s |")
  speedup = payload["speedup"]
  lines = [
      "# fnn vs scikit-learn's MLPClassifier on digits", "",
      f"`{command}`; {payload['machine']}. 64-{HIDDEN}-10 ReLU, Adam lr "
      f"{LR}, batch {BATCH}, L2 alpha {ALPHA}, {epochs} epochs, {seeds} "
      f"seeds; fnn and sklearn in one process, imports and data loading not "
      f"timed.", "",
      "| | test accuracy (mean +- std) | wall time, all seeds | per seed |",
      "|---|---:|---:|---:|", *rows, "",
      f"Speedup, sklearn's wall time over fnn's: {speedup:.1f}x"
      + (f" with a {state} compilation cache" if state else "")
      + f" (target >= 5x: {'HOLDS' if speedup >= 5 else 'MISSED'}); fnn's "
      f"accuracy {_compare(fm, sm)} sklearn's (target >=: "
      f"{'HOLDS' if fm >= sm - TIE else 'MISSED'})."]
  if cold:
    lines.append(
        f"With a cold cache (a fresh process compiling every program, "
        f"{cold['fnn']['first_epoch_seconds']:.2f} s of fnn's time in its "
        f"first epoch): {cold['speedup']:.1f}x (sklearn "
        f"{cold['sklearn']['wall_seconds']:.2f} s in that process).")
  loads = [(k, v) for k, v in (("cold", (cold or {}).get("loadavg_before")),
                               ("warm" if cold else "run",
                                payload.get("loadavg_before")))
           if v is not None]
  if loads:
    lines.append("1-minute load average before each process: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in loads) + ".")
  return "\n".join(lines + [""])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--epochs", type=int, default=200)
  parser.add_argument("--out", default=RESULTS)
  parser.add_argument(
      "--compile-cache", metavar="DIR",
      help="JAX's persistent compilation cache directory for this run, or "
      "'off' (default: JAX's own configuration, else $FNN_COMPILE_CACHE or "
      "~/.cache/fnn/jax)")
  parser.add_argument(
      "--cold-and-warm", action="store_true",
      help="measure in two fresh processes on a new, empty cache: cold "
      "(compiles), then warm (loads); the published figures")
  parser.add_argument("--measure-only", metavar="JSON",
                      help=argparse.SUPPRESS)  # a --cold-and-warm child
  add_replot_flag(parser, NAME)
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, NAME, plot)
  if args.seeds < 1 or args.epochs < 1:
    parser.error("--seeds and --epochs must be at least 1")
  if args.cold_and_warm and args.compile_cache is not None:
    parser.error("--cold-and-warm makes its own cache; drop --compile-cache")
  command = " ".join(["experiments/digits_vs_sklearn.py", *(
      sys.argv[1:] if argv is None else argv)])
  if args.measure_only:
    results = measure(args.seeds, args.epochs,
                      configure_cache(args.compile_cache))
    with open(args.measure_only, "w") as f:
      json.dump(results, f)
    return 0
  if args.cold_and_warm:
    cold, results = cold_and_warm(args)
    cold = {k: cold[k] for k in ("fnn", "sklearn", "speedup", "cache",
                                 "loadavg_before")}
  else:
    cold = None
    load = os.getloadavg()[0]
    results = measure(args.seeds, args.epochs,
                      configure_cache(args.compile_cache))
    results["loadavg_before"] = load
  payload = dict(results, seeds=args.seeds, epochs=args.epochs,
                 machine=machine(), command=command,
                 date=time.strftime("%Y-%m-%d"))
  if cold:
    payload["cold"] = cold
  md = markdown(payload, command)
  write(args.out, NAME, payload, md)
  plot(f"{args.out}/{NAME}.png", payload)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())

r"""Benchmark: fnn's training throughput against an equivalent PyTorch loop.

Measures, in float32 on the CPU, the steady-state training steps per second of
fnn's default MNIST-1D setup (``fnn.run.DEFAULTS["mnist1d"]``: batch 100,
AdamW lr 1e-3 with a cosine schedule over 200 epochs, decoupled weight decay
0.05 on the weights, dropout 0.2 on the hidden layers, He init; data from
``fnn.data.load("mnist1d")``: 4,000 training examples, so 40 steps an epoch)
for two ReLU models, 40-100-100-10 and 40-512-512-10, with three contenders:

  fnn hand      ``fnn.train.train_epoch`` (jitted; one ``lax.scan`` of 40
                steps an epoch) with ``StepConfig(grads="hand")``;
  fnn autodiff  the same with ``grads="autodiff"`` (``jax.value_and_grad``);
  torch         ``nn.Sequential(Linear, ReLU, Dropout(0.2), Linear, ReLU,
                Dropout(0.2), Linear)``, ``CrossEntropyLoss``,
                ``torch.optim.AdamW(lr=1e-3, weight_decay=0.05)`` (decay on
                the weights only, like fnn: biases in a group with decay 0)
                and ``CosineAnnealingLR`` stepped every step, in a plain
                Python loop over shuffled mini-batches of prebuilt tensors
                (``torch.set_num_threads`` = the usable CPU count). Skipped,
                with a note, when torch cannot be imported.

Timing: per model, every contender warms up (fnn: the first, compiling
epoch plus ``WARMUP_EPOCHS`` more; torch: ``WARMUP_EPOCHS`` epochs), then
``--epochs`` rounds run one timed epoch of each contender in turn (fnn hand,
fnn autodiff, torch), so that machine noise hits all alike; a pause of
``PAUSE_S`` (untimed) before each epoch lets the previous contender's
spinning worker threads (OpenMP, Eigen) go idle. Each epoch is timed on its
own, fnn's with ``jax.block_until_ready`` (torch on the CPU is synchronous;
its epoch ends with one ``.item()`` of the summed loss, as fnn returns the
epoch's mean loss). steps/s = 40 / (median epoch seconds); the mean over
all timed epochs is in the JSON too. Compile time = the first
``train_epoch`` call minus the median steady epoch.

Other load: the run measures, from ``/proc``, how many CPUs other processes
kept busy (and the hypervisor stole) while it timed, prints it and warns
above ``OTHER_LOAD_WARN``. On a 2-core machine even one busy neighbour
wrecks torch's 2-thread OpenMP loop (each parallel region waits for a
descheduled thread), so a ratio from a disturbed run says little. Even on a
quiet 2-core VM, epochs vary by 10-30% between runs; a ratio near a target
can land on either side of it.

FLOPs: one training step counts ``6 * batch * sum_l n_in_l * n_out_l``, i.e.
2 flops per multiply-accumulate forward and 4 backward (input gradient and
weight gradient); this slightly overcounts the first layer, whose input
gradient nobody needs, and ignores elementwise work, the optimizer and
dropout. Achieved GFLOP/s = that count * steps/s. For scale the same run
measures a large matmul: ``jnp.dot`` of two 2048 x 2048 float32 matrices,
jitted, median of ``MATMUL_REPEATS`` (and ``torch.mm`` when torch is there);
its GFLOP/s stands in for the hardware limit.

Targets (printed HOLDS / MISSED; the exit code is 0 either way):

  fnn hand steps/s >= 3x torch for 40-100-100-10
  fnn hand steps/s >= 2x torch for 40-512-512-10

The whole run takes about 20-25 s on 2 CPU cores (quiet), most of it in
making the MNIST-1D data set, compiling and warming up.

Many runs in one program (``--runs 1,8,32``): instead of the torch
comparison, measures ``fnn.fit_many`` (K runs, seeds 0..K-1, stacked along a
leading axis and trained by one compiled, ``jax.vmap``-ed epoch) for each K,
and plain ``fnn.fit`` (one run) for reference, on the CPU, for the models of
``--models`` (default ``mlp,resmlp,cnn``), built as ``fnn train --dataset
mnist1d [--arch A]`` builds them (``fnn.run.resolve_config`` and
``fnn.run.build``; ``fnn train --seeds`` for the stacked initial states):

  mlp       40-100-100-10 ReLU MLP (``--hidden 100,100``), He init;
  mlp512    40-512-512-10 (``fnn train``'s own default ``--hidden 512,512``);
  resmlp    ``--arch resmlp``: MNIST-1D's residual MLP, PyTorch's init;
  cnn       ``--arch cnn``: MNIST-1D's ConvBase, PyTorch's init;

all with MNIST-1D's training defaults above (AdamW lr 1e-3 cosine, decoupled
weight decay 0.05, dropout 0.2, batch 100, hand-derived gradients). A cell
(one model, one K) is one ``fit`` / ``fit_many`` call of ``1 + WARMUP_EPOCHS
+ --epochs`` epochs (the cosine schedule spans them); its per-epoch
``seconds`` (the epoch, the test-set evaluation after it and the host sync:
what a user's run costs per epoch) give the figures: model-steps/s = K *
steps per epoch / median timed epoch (the first, compiling epoch and the
warm-up are left out); compile s = the first epoch less the median one; the
fastest timed epoch is in the JSON too. ``--repeats R`` runs every cell R
times in turn (later repeats reuse the compiled programs) and keeps, per
cell, the repeat with the best median. Each cell records the 1-minute load
average before it, its other load (see above) and its process CPU seconds
over wall seconds (CPU use: 1 is one busy core).

Target (printed HOLDS / MISSED): for 40-100-100-10, ``fit_many`` with K = 8
at least 4x the model-steps/s of one run (the faster of ``fit`` and
``fit_many`` with K = 1).

Usage:
  .venv/bin/python scripts/bench_train.py [--epochs 5] [--markdown]
      [--json PATH]
  .venv/bin/python scripts/bench_train.py --runs 1,8,32 [--models
      mlp,resmlp,cnn] [--epochs 3] [--repeats 1] [--markdown] [--json PATH]
"""
from __future__ import annotations

import os

# The benchmark is defined on the CPU; set before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402
from fnn import data as data_lib, many, run, train  # noqa: E402
from fnn.run import DEFAULTS  # noqa: E402

MODELS = ((40, 100, 100, 10), (40, 512, 512, 10))

# The MNIST-1D defaults of `fnn train` (fnn/run.py).
SETUP = DEFAULTS["mnist1d"]
BATCH = SETUP["batch_size"]            # 100
LR = SETUP["lr"]                       # 1e-3
WEIGHT_DECAY = SETUP["weight_decay"]   # 0.05, decoupled (AdamW)
DROPOUT = SETUP["dropout"]             # 0.2
RUN_EPOCHS = SETUP["epochs"]           # 200: the cosine schedule's length
INIT = "he"

# Targets: fnn hand steps/s over torch steps/s, per model.
TARGETS = {(40, 100, 100, 10): 3.0, (40, 512, 512, 10): 2.0}

WARMUP_EPOCHS = 2  # after the first (compiling) one for fnn
PAUSE_S = 0.005  # idle time before each timed epoch (not timed)
OTHER_LOAD_WARN = 0.1  # CPUs busy with other processes: warn above this
MATMUL_N = 2048
MATMUL_REPEATS = 7

CONTENDERS = ("fnn hand", "fnn autodiff", "torch")


# --------------------------------------------------------------------------
# Counting.


def flops_per_step(sizes, batch: int) -> int:
  r"""``6 * batch * sum n_in * n_out``: 2 flops/MAC forward, 4 backward."""
  return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _summary(epoch_s: list[float], steps: int, flops: int) -> dict:
  median_s = statistics.median(epoch_s)
  steps_per_s = steps / median_s
  return {
      "epoch_ms_median": 1e3 * median_s,
      "epoch_ms_min": 1e3 * min(epoch_s),
      "epoch_ms_max": 1e3 * max(epoch_s),
      "epoch_ms_samples": [1e3 * s for s in epoch_s],
      "steps_per_epoch": steps,
      "steps_per_s": steps_per_s,
      "steps_per_s_mean": steps * len(epoch_s) / sum(epoch_s),
      "gflops": flops * steps_per_s / 1e9,
  }


# --------------------------------------------------------------------------
# Other load on the machine.


class OtherLoad:
  r"""CPU time used by OTHER processes while it runs, from ``/proc``.

  ``cpus`` is their average number of busy CPUs over the window: the
  machine's busy jiffies (``/proc/stat``: user, nice, system, irq, softirq)
  minus this process's (``/proc/self/stat``: utime + stime), over wall time.
  ``steal`` is the same for the hypervisor's steal time (CPU time a virtual
  machine's CPUs were ready but not running). Both ``None`` where ``/proc``
  is unavailable. A benchmark on a shared machine is only as good as these
  numbers are small.
  """

  def __init__(self):
    self.cpus = None
    self.steal = None
    self._start = None

  @staticmethod
  def _read():
    try:
      with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
      with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    except OSError:
      return None
    v = [int(t) for t in fields] + [0] * 8
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, v[7], int(own[11]) + int(own[12]), time.perf_counter()

  def __enter__(self):
    self._start = self._read()
    return self

  def __exit__(self, *exc):
    end = self._read()
    if self._start is not None and end is not None:
      ticks = os.sysconf("SC_CLK_TCK")
      busy, steal, own, t = (b - a for a, b in zip(self._start, end))
      t = max(t, 1e-9)
      self.cpus = max(0.0, (busy - own) / ticks / t)
      self.steal = steal / ticks / t
    return False


# --------------------------------------------------------------------------
# fnn.


def fnn_contender(sizes, grads: str, x, y):
  r"""Compiles and warms up ``train.train_epoch``; returns (epoch fn, info).

  The epoch fn runs one epoch and returns its wall seconds; ``info`` holds
  the first (compiling) epoch's seconds and, once done, the final loss.
  """
  steps = x.shape[0] // BATCH
  model = fnn.MLP(sizes, activation="relu", output="softmax",
                  loss="categorical_cross_entropy")
  opt = train.make_optimizer("adamw", LR, schedule="cosine",
                             total_steps=steps * RUN_EPOCHS,
                             weight_decay=WEIGHT_DECAY)
  cfg = train.StepConfig(grads=grads, weight_decay=0.0, dropout=DROPOUT)
  holder = [train.init_state(model, opt, jax.random.key(0), jnp.float32,
                             INIT)]
  jax.block_until_ready(holder[0])
  info = {"steps_per_epoch": steps}

  def epoch():
    t0 = time.perf_counter()
    state, loss = train.train_epoch(model, opt, cfg, BATCH, holder[0], x, y)
    jax.block_until_ready((state, loss))
    dt = time.perf_counter() - t0
    holder[0] = state
    info["final_train_loss"] = float(loss)
    info["steps_done"] = int(state.step)
    return dt

  info["first_epoch_s"] = epoch()
  for _ in range(WARMUP_EPOCHS):
    epoch()
  return epoch, info


# --------------------------------------------------------------------------
# torch.


def import_torch():
  try:
    import torch
  except Exception as e:  # noqa: BLE001 - any import failure means "skip"
    return None, f"{type(e).__name__}: {e}"
  return torch, None


def torch_contender(torch, sizes, x_np, y_np):
  r"""The equivalent PyTorch loop, warmed up; returns (epoch fn, info)."""
  nn = torch.nn
  torch.manual_seed(0)
  layers = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    layers.append(nn.Linear(a, b))
    if i < len(sizes) - 2:
      layers += [nn.ReLU(), nn.Dropout(DROPOUT)]
  net = nn.Sequential(*layers)
  for m in net:  # He normal, zero biases, as fnn's INIT (speed is unaffected)
    if isinstance(m, nn.Linear):
      nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      nn.init.zeros_(m.bias)
  net.train()
  weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
  biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
  opt = torch.optim.AdamW(
      [{"params": weights, "weight_decay": WEIGHT_DECAY},
       {"params": biases, "weight_decay": 0.0}], lr=LR)
  n = len(x_np)
  steps = n // BATCH
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(
      opt, T_max=steps * RUN_EPOCHS)
  loss_fn = nn.CrossEntropyLoss()
  x = torch.from_numpy(np.array(x_np, np.float32))
  y = torch.from_numpy(np.array(y_np, np.int64))
  gen = torch.Generator().manual_seed(0)
  info = {"steps_per_epoch": steps, "threads": torch.get_num_threads()}

  def epoch():
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=gen)
    total = torch.zeros(())
    for i in range(steps):
      idx = perm[i * BATCH:(i + 1) * BATCH]
      xb, yb = x[idx], y[idx]
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(net(xb), yb)
      loss.backward()
      opt.step()
      sched.step()
      total += loss.detach()
    mean_loss = total.item() / steps  # one sync, like fnn's epoch mean
    dt = time.perf_counter() - t0
    info["final_train_loss"] = mean_loss
    return dt

  for _ in range(WARMUP_EPOCHS):
    epoch()
  return epoch, info


# --------------------------------------------------------------------------
# One model: all contenders, interleaved.


def bench_model(sizes, x, y, dataset, torch, epochs: int, log) -> dict:
  r"""Sets up every contender, then times ``epochs`` interleaved rounds."""
  flops = flops_per_step(sizes, BATCH)
  contenders = {}
  for grads, name in (("hand", "fnn hand"), ("autodiff", "fnn autodiff")):
    contenders[name] = fnn_contender(sizes, grads, x, y)
  if torch is not None:
    contenders["torch"] = torch_contender(torch, sizes, dataset.x, dataset.y)
  samples = {name: [] for name in contenders}
  with OtherLoad() as load:
    for _ in range(epochs):
      for name, (epoch, _) in contenders.items():
        time.sleep(PAUSE_S)  # let the previous contender's threads go idle
        samples[name].append(epoch())
  r = {"sizes": list(sizes), "flops_per_step": flops,
       "other_load_cpus": load.cpus, "steal_cpus": load.steal}
  for name in CONTENDERS:
    if name not in contenders:
      r[name] = None
      continue
    info = contenders[name][1]
    out = _summary(samples[name], info["steps_per_epoch"], flops)
    out.update(info)
    if "first_epoch_s" in info:
      out["compile_s"] = info["first_epoch_s"] - statistics.median(
          samples[name])
    r[name] = out
    log(f"  {_sizes_text(sizes):>14} {name:<12}: "
        + (f"compile {out['compile_s']:.2f} s, " if "compile_s" in out else "")
        + f"epoch {out['epoch_ms_median']:.2f} ms, "
        f"{out['steps_per_s']:.0f} steps/s")
  return r


# --------------------------------------------------------------------------
# Matmul reference.


def bench_matmul(torch=None) -> dict:
  r"""GFLOP/s of a jitted ``jnp.dot`` (and ``torch.mm``), 2048^2 float32."""
  n = MATMUL_N
  flops = 2 * n**3
  ka, kb = jax.random.split(jax.random.key(2))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  times = []
  with OtherLoad() as load:
    for _ in range(MATMUL_REPEATS):
      t0 = time.perf_counter()
      jax.block_until_ready(dot(a, b))
      times.append(time.perf_counter() - t0)
  out = {"n": n, "repeats": MATMUL_REPEATS,
         "jax_ms": 1e3 * statistics.median(times),
         "jax_gflops": flops / statistics.median(times) / 1e9,
         "jax_samples_ms": [1e3 * t for t in times],
         "other_load_cpus": load.cpus, "steal_cpus": load.steal}
  if torch is not None:
    ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
    torch.mm(ta, tb)
    times = []
    for _ in range(MATMUL_REPEATS):
      t0 = time.perf_counter()
      torch.mm(ta, tb)
      times.append(time.perf_counter() - t0)
    out.update(torch_ms=1e3 * statistics.median(times),
               torch_gflops=flops / statistics.median(times) / 1e9,
               torch_samples_ms=[1e3 * t for t in times])
  return out


# --------------------------------------------------------------------------
# Many runs in one program (--runs).

# --models names: (label, fnn train options besides --dataset mnist1d).
RUN_MODELS = {
    "mlp": ("40-100-100-10", dict(arch="mlp", hidden="100,100")),
    "mlp512": ("40-512-512-10", dict(arch="mlp", hidden="512,512")),
    "resmlp": ("resmlp", dict(arch="resmlp")),
    "cnn": ("cnn", dict(arch="cnn")),
}
RUNS_MODELS_DEFAULT = ("mlp", "resmlp", "cnn")
RUNS_EPOCHS_DEFAULT = 3  # timed epochs per cell in --runs mode
RUNS_TARGET = ("mlp", 8, 4.0)  # model, K, model-steps/s over one run's


def _loadavg() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def runs_setup(name: str, dataset, epochs: int):
  r"""``fnn train --dataset mnist1d`` with ``RUN_MODELS[name]``'s options and
  ``--epochs epochs``: (config, model, opt, cfg), as ``fnn.run.build``."""
  config = run.resolve_config(dict(dataset="mnist1d", epochs=epochs,
                                   **RUN_MODELS[name][1]))
  model, opt, cfg = run.build(config, dataset)
  return config, model, opt, cfg


def step_flops(model, opt, cfg, batch_size: int, dataset) -> float | None:
  r"""XLA's count of the floating-point operations of one training step of
  one run (``compiled.cost_analysis()`` of :func:`fnn.train_step`; None
  where the backend gives none): the numerator of the matmul-FLOP/s
  fraction on an accelerator. (An epoch's scan would count its body once.)"""
  state = train.init_state(model, opt, jax.random.key(0), jnp.float32)
  x = jnp.asarray(dataset.x[:batch_size], jnp.float32)
  y = jnp.asarray(dataset.y[:batch_size])
  try:
    cost = train.train_step.lower(model, opt, cfg, state, x,
                                  y).compile().cost_analysis()
  except Exception:  # noqa: BLE001 (a backend without cost analysis)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def runs_cell(name: str, k: int | None, dataset, epochs: int) -> dict:
  r"""One cell: ``fnn.fit`` (``k`` None) or ``fnn.fit_many`` of ``k`` runs
  for ``1 + WARMUP_EPOCHS + epochs`` epochs; its timings."""
  total = 1 + WARMUP_EPOCHS + epochs
  config, model, opt, cfg = runs_setup(name, dataset, total)
  steps = len(dataset.x) // config["batch_size"]
  # As fnn train: an MLP takes --init, a Sequential's layers hold theirs.
  scheme = config["init"] if config["arch"] == "mlp" else None
  load0 = _loadavg()
  t0, c0 = time.perf_counter(), time.process_time()
  if k is None:
    state = train.init_state(model, opt, jax.random.key(0), jnp.float32,
                             scheme)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    with OtherLoad() as load:
      state, hist = train.fit(model, opt, state, dataset, epochs=total,
                              batch_size=config["batch_size"], cfg=cfg)
    losses = [hist[-1]["train_loss"]]
    accs = [hist[-1]["test_accuracy"]]
    runs = 1
  else:
    states = many.init_many(
        model, config["optimizer"], [jax.random.key(s) for s in range(k)],
        jnp.float32, scheme, schedule=config["schedule"],
        total_steps=steps * total)
    jax.block_until_ready(states)
    init_s = time.perf_counter() - t0
    hyper = many.hyper(k, lr=config["lr"],
                       weight_decay=config["weight_decay"],
                       dropout=config["dropout"], dp_clip=config["dp_clip"],
                       dp_noise=config["dp_noise"])
    with OtherLoad() as load:
      states, hist = many.fit_many(
          model, config["optimizer"], states, dataset, epochs=total,
          batch_size=config["batch_size"], hyper=hyper,
          schedule=config["schedule"],
          cfg=cfg)
    losses = hist[-1]["train_loss"]
    accs = hist[-1]["test_accuracy"]
    runs = k
  wall = time.perf_counter() - t0
  cpu = time.process_time() - c0
  flops = step_flops(model, opt, cfg, config["batch_size"], dataset)
  seconds = [h["seconds"] for h in hist]
  timed = seconds[1 + WARMUP_EPOCHS:]
  median = statistics.median(timed)
  return {
      "runs": runs, "via": "fit" if k is None else "fit_many",
      "epochs": total, "timed_epochs": epochs, "steps_per_epoch": steps,
      "epoch_ms_median": 1e3 * median, "epoch_ms_min": 1e3 * min(timed),
      "epoch_ms_samples": [1e3 * s for s in timed],
      "first_epoch_s": seconds[0],
      "compile_s": max(seconds[0] - median, 0.0), "init_s": init_s,
      "model_steps_per_s": runs * steps / median,
      "model_steps_per_s_best": runs * steps / min(timed),
      "wall_s": wall, "cpu_s": cpu, "cpu_use": cpu / wall,
      "loadavg_before": load0, "loadavg_after": _loadavg(),
      "other_load_cpus": load.cpus, "steal_cpus": load.steal,
      "final_train_loss": losses, "final_test_accuracy": accs,
      "flops_per_model_step": flops,
      "tflops_per_s": (None if flops is None
                       else runs * steps * flops / median / 1e12),
  }


def bench_runs(names, ks, dataset, epochs: int, repeats: int, log) -> list:
  r"""Every cell of ``names`` x (``fit``, ``fit_many`` for each of ``ks``),
  ``repeats`` times in turn; per cell, the repeat with the best median (the
  first repeat's compile time: later ones reuse the compiled program)."""
  cells = [(name, k) for name in names for k in (None, *ks)]
  best = {}
  for rep in range(repeats):
    for name, k in cells:
      r = runs_cell(name, k, dataset, epochs)
      log(f"  {RUN_MODELS[name][0]:>14} {r['via']:<8} K={r['runs']:<3} "
          f"(repeat {rep + 1}): "
          + (f"compile {r['compile_s']:.2f} s, " if rep == 0 else "")
          + f"epoch {r['epoch_ms_median']:.1f} ms, "
          f"{r['model_steps_per_s']:.0f} model-steps/s, load "
          + ("-" if r["loadavg_before"] is None else
             f"{r['loadavg_before']:.2f}"))
      old = best.get((name, k))
      if old is None:
        r["repeat_model_steps_per_s"] = [r["model_steps_per_s"]]
      else:  # the compiling repeat's compile time; the best repeat's rest
        samples = old["repeat_model_steps_per_s"] + [r["model_steps_per_s"]]
        if r["model_steps_per_s"] > old["model_steps_per_s"]:
          r.update(compile_s=old["compile_s"],
                   first_epoch_s=old["first_epoch_s"])
        else:
          r = old
        r["repeat_model_steps_per_s"] = samples
      best[(name, k)] = r
  out = []
  for name in names:
    row = {"model": name, "label": RUN_MODELS[name][0],
           "options": RUN_MODELS[name][1],
           "cells": [best[(name, k)] for k in (None, *ks)]}
    one = max(c["model_steps_per_s"] for c in row["cells"]
              if c["runs"] == 1)
    for c in row["cells"]:
      c["vs_one_run"] = c["model_steps_per_s"] / one
    out.append(row)
  return out


RUNS_HEADER = ("model", "program", "K", "compile s", "epoch ms",
               "model-steps/s", "best epoch", "vs 1 run", "CPU use", "load",
               "TFLOP/s", "of peak")


def runs_table(results: list, markdown: bool, peak: float | None = None
               ) -> str:
  r"""The table; ``peak``: the device's peak TFLOP/s (``--peak-tflops``)."""
  rows = []
  for row in results:
    for c in row["cells"]:
      rows.append((
          row["label"], "fnn.fit" if c["via"] == "fit" else "fit_many",
          str(c["runs"]), f"{c['compile_s']:.2f}",
          f"{c['epoch_ms_median']:.1f}", f"{c['model_steps_per_s']:.0f}",
          f"{c['model_steps_per_s_best']:.0f}", f"{c['vs_one_run']:.2f}x",
          f"{c['cpu_use']:.2f}",
          "-" if c["loadavg_before"] is None else
          f"{c['loadavg_before']:.2f}",
          "-" if c.get("tflops_per_s") is None else
          f"{c['tflops_per_s']:.4f}",
          "-" if c.get("tflops_per_s") is None or not peak else
          f"{100 * c['tflops_per_s'] / peak:.2f}%"))
  if markdown:
    lines = ["| " + " | ".join(RUNS_HEADER) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(RUNS_HEADER) - 2))
             + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
  widths = [max(len(h), *(len(r[i]) for r in rows))
            for i, h in enumerate(RUNS_HEADER)]
  fmt = lambda r: "  ".join(  # noqa: E731
      v.ljust(w) if i < 2 else v.rjust(w)
      for i, (v, w) in enumerate(zip(r, widths)))
  return "\n".join([fmt(RUNS_HEADER), "  ".join("-" * w for w in widths)]
                   + [fmt(r) for r in rows])


def runs_targets(results: list) -> list[dict]:
  name, k, want = RUNS_TARGET
  for row in results:
    if row["model"] != name:
      continue
    cell = next((c for c in row["cells"] if c["via"] == "fit_many"
                 and c["runs"] == k), None)
    if cell is None:
      continue
    return [{"name": f"fit_many K={k} >= {want:g}x one run's model-steps/s "
             f"(the faster of fnn.fit and fit_many K=1), {row['label']}",
             "value": cell["vs_one_run"],
             "holds": cell["vs_one_run"] >= want}]
  return []


def _mnist1d(info: dict, log):
  r"""Ends the header (a warning off the CPU) and loads MNIST-1D, logging
  how long it took."""
  if info["backend"] != "cpu":
    print(f"WARNING: backend is {info['backend']}, not cpu")
  print(flush=True)
  t0 = time.perf_counter()
  dataset = data_lib.load("mnist1d")
  log(f"  data: mnist1d {dataset.x.shape} train, "
      f"{time.perf_counter() - t0:.1f} s to make")
  return dataset


def main_runs(args, ks: list[int], names: list[str]) -> int:
  r"""``--runs``: the many-runs benchmark."""
  start = time.perf_counter()
  info = machine_info()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  epochs = RUNS_EPOCHS_DEFAULT if args.epochs is None else args.epochs
  command = shlex.join(["scripts/bench_train.py", *(
      sys.argv[1:] if args.argv is None else args.argv)])
  print(f"fnn many-runs benchmark (scripts/bench_train.py --runs), fnn "
        f"{fnn.__version__}")
  print(f"machine: {info['cpu']} ({info['machine']}), cpu count "
        f"{info['cpu_count']} ({info['usable_cpus']} usable), "
        f"{info['platform']}")
  print(f"jax {info['jax']} (jaxlib {info['jaxlib']}), backend "
        f"{info['backend']}, device {info['device']}, dtype float32")
  print(f"setup: fnn train --dataset mnist1d defaults: batch {BATCH}, AdamW "
        f"lr {LR:g} cosine, weight decay {WEIGHT_DECAY:g} (decoupled), "
        f"dropout {DROPOUT:g}, hand gradients, float32; K runs = seeds "
        f"0..K-1 in one fit_many program")
  print(f"timing: per cell 1 compiling + {WARMUP_EPOCHS} warm-up + {epochs} "
        f"timed epochs (each with its test evaluation); model-steps/s = K * "
        f"steps per epoch / median timed epoch; best of {args.repeats} "
        f"repeat(s)")
  dataset = _mnist1d(info, log)
  results = bench_runs(names, ks, dataset, epochs, args.repeats, log)
  targets = runs_targets(results)
  print(runs_table(results, args.markdown, args.peak_tflops))
  print()
  print("CPU use = process CPU seconds / wall seconds of the cell (1.00: one "
        "busy core); load = the 1-minute load average before the cell.")
  loads = [c["other_load_cpus"] for r in results for c in r["cells"]
           if c["other_load_cpus"] is not None]
  if loads:
    print(f"Other load while timing (CPUs busy with other processes, "
          f"per cell): {min(loads):.2f} to {max(loads):.2f}")
    if max(loads) > OTHER_LOAD_WARN:
      print(f"WARNING: other processes took up to {max(loads):.2f} CPUs "
            f"while timing; the numbers are disturbed.")
  print()
  print(format_targets(targets, args.markdown))
  wall_s = time.perf_counter() - start
  print()
  print(f"Total wall time: {wall_s:.1f} s")
  if args.json:
    write_json_atomic(args.json, {
        "benchmark": "scripts/bench_train.py --runs",
        "fnn": fnn.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "command": command,
        "machine": info,
        "config": {"dataset": "mnist1d", "n_train": int(len(dataset.x)),
                   "batch": BATCH, "optimizer": "adamw", "lr": LR,
                   "schedule": "cosine (over each cell's epochs)",
                   "weight_decay": WEIGHT_DECAY, "dropout": DROPOUT,
                   "grads": "hand", "dtype": "float32", "runs": ks,
                   "warmup_epochs": WARMUP_EPOCHS, "timed_epochs": epochs,
                   "repeats": args.repeats,
                   "peak_tflops": args.peak_tflops,
                   "epoch_seconds": "fnn.fit / fit_many history 'seconds' "
                                    "(epoch + test evaluation + host sync)"},
        "results": results,
        "targets": targets,
        "wall_s": wall_s,
    })
    print(f"Wrote {args.json}")
  return 0


# --------------------------------------------------------------------------
# Output.


def _sizes_text(sizes) -> str:
  return "-".join(str(s) for s in sizes)


HEADER = ("model", "contender", "compile s", "epoch ms", "steps/s",
          "vs torch", "GFLOP/s", "% matmul")


def table_rows(results: list[dict], peak_gflops: float):
  rows = []
  for r in results:
    torch_sps = (r["torch"] or {}).get("steps_per_s")
    for name in CONTENDERS:
      c = r[name]
      if c is None:
        continue
      compile_s = c.get("compile_s")
      ratio = c["steps_per_s"] / torch_sps if torch_sps else None
      rows.append((
          _sizes_text(r["sizes"]), name,
          "-" if compile_s is None else f"{compile_s:.2f}",
          f"{c['epoch_ms_median']:.2f}", f"{c['steps_per_s']:.0f}",
          "-" if ratio is None else f"{ratio:.2f}x",
          f"{c['gflops']:.1f}", f"{100 * c['gflops'] / peak_gflops:.1f}"))
  return rows


def format_table(results: list[dict], peak_gflops: float,
                 markdown: bool) -> str:
  rows = table_rows(results, peak_gflops)
  if markdown:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADER) - 2)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
  widths = [max(len(h), *(len(r[i]) for r in rows))
            for i, h in enumerate(HEADER)]
  fmt = lambda r: "  ".join(  # noqa: E731
      v.ljust(w) if i < 2 else v.rjust(w)
      for i, (v, w) in enumerate(zip(r, widths)))
  lines = [fmt(HEADER), "  ".join("-" * w for w in widths)]
  lines += [fmt(r) for r in rows]
  return "\n".join(lines)


def evaluate_targets(results: list[dict]) -> list[dict]:
  targets = []
  for r in results:
    want = TARGETS.get(tuple(r["sizes"]))
    if want is None:
      continue
    name = (f"fnn hand >= {want:g}x torch steps/s, "
            f"{_sizes_text(r['sizes'])}")
    if r["torch"] is None:
      targets.append({"name": name, "value": None, "holds": None})
      continue
    value = r["fnn hand"]["steps_per_s"] / r["torch"]["steps_per_s"]
    targets.append({"name": name, "value": value, "holds": value >= want})
  return targets


def format_targets(targets: list[dict], markdown: bool) -> str:
  bullet = "- " if markdown else "  "
  lines = ["Targets:"]
  for t in targets:
    if t["holds"] is None:
      lines.append(f"{bullet}NOT MEASURED (no torch): {t['name']}")
    else:
      lines.append(f"{bullet}{'HOLDS' if t['holds'] else 'MISSED'}: "
                   f"{t['name']} (measured {t['value']:.2f}x)")
  return "\n".join(lines)


def usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def machine_info() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  device = jax.devices()[0]
  return {
      "cpu": cpu or platform.machine(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "usable_cpus": usable_cpus(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
      "backend": jax.default_backend(),
      "device": f"{device.device_kind} ({device})",
      "dtype": "float32",
  }


def _jaxlib_version():
  try:
    import jaxlib
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def write_json_atomic(path: str, payload: dict) -> None:
  r"""Writes ``payload`` to ``path`` via a temporary file and ``os.replace``."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory,
                             prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  try:
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600)
    with os.fdopen(fd, "w") as f:
      json.dump(payload, f, indent=2)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# --------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--epochs", type=int, default=None,
      help="timed epochs per contender and model (after the warm-up); "
           "steps/s uses their median; default 5 (--runs: per cell, "
           f"default {RUNS_EPOCHS_DEFAULT})")
  parser.add_argument("--markdown", action="store_true",
                      help="print the table as markdown")
  parser.add_argument("--json", metavar="PATH",
                      help="also write the results as JSON to PATH")
  parser.add_argument(
      "--runs", metavar="K,...",
      help="many runs in one program instead of the torch comparison: "
           "model-steps/s of fnn.fit_many for each K (e.g. 1,8,32), and of "
           "fnn.fit for one run")
  parser.add_argument(
      "--models", metavar="NAME,...",
      help=f"with --runs: models among {', '.join(RUN_MODELS)} (default "
           f"{','.join(RUNS_MODELS_DEFAULT)})")
  parser.add_argument(
      "--peak-tflops", type=float, default=None, metavar="T",
      help="with --runs: the device's peak matmul TFLOP/s (e.g. an H100's "
           "dense TF32 or FP32 figure); adds the fraction of it achieved, "
           "from XLA's FLOP count of an epoch")
  parser.add_argument(
      "--repeats", type=int, default=1,
      help="with --runs: run every cell this many times in turn and keep "
           "the best median; default 1")
  return parser


def _int_list(text: str) -> list[int]:
  values = [int(v) for v in text.split(",") if v.strip()]
  if not values or min(values) < 1:
    raise ValueError(text)
  return values


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  args.argv = argv
  if args.epochs is not None and args.epochs < 1:
    parser.error("--epochs must be at least 1")
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")
  if args.runs is None:
    if args.models is not None or args.repeats != 1:
      parser.error("--models and --repeats go with --runs")
  else:
    try:
      ks = sorted(set(_int_list(args.runs)))
    except ValueError:
      parser.error(f"--runs must be comma-separated integers >= 1, got "
                   f"{args.runs!r}")
    names = (list(RUNS_MODELS_DEFAULT) if args.models is None else
             [m.strip() for m in args.models.split(",") if m.strip()])
    bad = [m for m in names if m not in RUN_MODELS]
    if bad or not names:
      parser.error(f"--models: unknown {bad or args.models!r}; choose from "
                   f"{', '.join(RUN_MODELS)}")
    return main_runs(args, ks, names)
  if args.epochs is None:
    args.epochs = 5

  start = time.perf_counter()
  info = machine_info()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  torch, torch_error = import_torch()
  if torch is not None:
    torch.set_num_threads(usable_cpus())
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  print(f"fnn training benchmark (scripts/bench_train.py), fnn "
        f"{fnn.__version__}")
  print(f"machine: {info['cpu']} ({info['machine']}), cpu count "
        f"{info['cpu_count']} ({info['usable_cpus']} usable), "
        f"{info['platform']}")
  print(f"jax {info['jax']} (jaxlib {info['jaxlib']}), backend "
        f"{info['backend']}, device {info['device']}, dtype float32")
  if torch is not None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  else:
    print(f"torch: not importable ({torch_error}); torch comparison skipped")
  print(f"setup: mnist1d, batch {BATCH}, AdamW lr {LR:g} cosine over "
        f"{RUN_EPOCHS} epochs, weight decay {WEIGHT_DECAY:g} (weights only), "
        f"dropout {DROPOUT:g}, ReLU, softmax + cross-entropy, float32")
  print(f"timing: {WARMUP_EPOCHS} warm-up epochs (fnn: after the compiling "
        f"one), then {args.epochs} interleaved rounds of one timed epoch per "
        f"contender; steps/s = steps per epoch / median epoch time")
  dataset = _mnist1d(info, log)
  x = jnp.asarray(dataset.x, jnp.float32)
  y = jnp.asarray(dataset.y)

  results = [bench_model(sizes, x, y, dataset, torch, args.epochs, log)
             for sizes in MODELS]

  matmul = bench_matmul(torch)
  peak = matmul["jax_gflops"]
  targets = evaluate_targets(results)

  print(format_table(results, peak, args.markdown))
  print()
  bullet = "- " if args.markdown else "  "
  print(f"FLOPs per step = 6 * batch * sum(n_in * n_out): "
        + ", ".join(f"{_sizes_text(r['sizes'])} "
                    f"{r['flops_per_step'] / 1e6:.1f} MFLOP" for r in results))
  print(f"Matmul reference ({MATMUL_N}x{MATMUL_N} float32, median of "
        f"{MATMUL_REPEATS}):")
  print(f"{bullet}jnp.dot (jit): {matmul['jax_ms']:.1f} ms, "
        f"{matmul['jax_gflops']:.1f} GFLOP/s (the '% matmul' column's 100%)")
  if "torch_gflops" in matmul:
    print(f"{bullet}torch.mm: {matmul['torch_ms']:.1f} ms, "
          f"{matmul['torch_gflops']:.1f} GFLOP/s")
  loads = [(_sizes_text(r["sizes"]), r["other_load_cpus"], r["steal_cpus"])
           for r in results]
  loads.append(("matmul", matmul["other_load_cpus"], matmul["steal_cpus"]))
  if all(v is not None for _, v, _ in loads):
    print(f"Other load while timing (CPUs busy with other processes / "
          f"stolen by the hypervisor, on average): "
          + ", ".join(f"{k} {v:.2f} / {st:.2f}" for k, v, st in loads))
    worst = max(v + st for _, v, st in loads)
    if worst > OTHER_LOAD_WARN:
      print(f"WARNING: other processes and steal took up to {worst:.2f} CPUs "
            f"while timing; the numbers are disturbed (torch's OpenMP "
            f"threads suffer most). Rerun on a quiet machine.")
  print()
  print(format_targets(targets, args.markdown))
  wall_s = time.perf_counter() - start
  print()
  print(f"Total wall time: {wall_s:.1f} s")

  if args.json:
    write_json_atomic(args.json, {
        "benchmark": "scripts/bench_train.py",
        "fnn": fnn.__version__,
        "machine": info,
        "torch_skipped": None if torch is not None else torch_error,
        "config": {"dataset": "mnist1d", "n_train": int(len(dataset.x)),
                   "batch": BATCH, "optimizer": "adamw", "lr": LR,
                   "schedule": "cosine", "schedule_epochs": RUN_EPOCHS,
                   "weight_decay": WEIGHT_DECAY, "dropout": DROPOUT,
                   "init": INIT, "dtype": "float32",
                   "warmup_epochs": WARMUP_EPOCHS,
                   "timed_epochs": args.epochs,
                   "flops_per_step": "6 * batch * sum(n_in * n_out)"},
        "results": results,
        "matmul": matmul,
        "targets": targets,
        "wall_s": wall_s,
    })
    print(f"Wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

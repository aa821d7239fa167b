r"""MNIST-1D's table, reproduced: logistic regression, MLPs, the repository's
residual MLP and CNN with fnn, and the repository's PyTorch models beside.

Against the published test accuracies (Greydanus, "Scaling Down Deep
Learning"): logistic regression 32%, MLP 68%, CNN 94%. Data: ``mnist1d``'s
``make_dataset`` defaults (4,000 train / 1,000 test), standardized (one mean
and standard deviation over all training values).

Rows (fnn, hand-derived gradients, float32):

- ``logistic``: sizes (40, 10), the repository's training setup (Adam lr
  1e-2, batch 100, 6,000 steps = 150 epochs, no weight decay, PyTorch's
  default init);
- ``mlp-paper``: a plain 40-100-100-10 ReLU MLP, the same setup (the
  paper's width, no residual layer; kept with its earlier meaning);
- ``resmlp``: the repository's ``MLPBase`` itself (``fnn.arch.resmlp``:
  40 -> 100 ReLU, ``h + relu(W h)``, -> 10), the same setup;
- ``cnn``: the repository's ``ConvBase`` (``fnn.arch.cnn``: three strided
  Conv1d 25-channel layers with ReLU, flatten 125, dense 10), the same
  setup;
- ``mlp-fnn``: ``fnn train``'s default (40-512-512-10, dropout 0.2, AdamW
  lr 1e-3 cosine, weight decay 0.05, batch 100, 200 epochs).

PyTorch rows (optional peer, when torch is importable): the repository's own
models and loop (Adam 1e-2, batch 100 in order without shuffling, 6,000
steps, torch's default init; no evaluation inside the loop):

- ``torch-mlp``: its ``MLPBase`` (the same model as ``resmlp``);
- ``torch-cnn``: its ``ConvBase`` (the model family of ``cnn``: fnn's
  Conv1d weight ``w[k, c_in, c_out]`` is torch's ``weight[c_out, c_in, k]``,
  and fnn flattens ``[length, channels]`` as ``t * C + c`` where torch's
  ``view`` of ``[channels, length]`` gives ``c * L + t``, a fixed
  permutation of the dense layer's inputs, so the two are the same set of
  functions with the same init distribution).

fnn shuffles the training set every epoch and evaluates on the test set
after every epoch (150 evaluations, inside the timed run); the repository's
loop goes through the data in order. The torch loop runs on whichever of 1
and all usable threads is faster for that model on the machine at the time
(:func:`torch_threads`, recorded in the JSON).

Many seeds in one program: an fnn row trains all its seeds at once
(:func:`fnn.fit_many`: the seeds' states stacked along a leading axis, one
compiled, ``vmap``-ed epoch for all; each seed equals the same seed trained
alone by :func:`fnn.fit`, to float rounding). A run's seconds, CPU seconds,
init and compile seconds are then the program's divided by its seeds (the
JSON keeps the program's own figures with each run: ``program_seconds``,
``program_runs``, ...), so a table row's mean and max per run are equal.
``--separate-runs`` trains one program per seed instead (:func:`fnn.fit`,
the table before ``fit_many``).

Wall time: every fnn program starts from empty jit caches
(``jax.clear_caches``), so its seconds include its compilation, as a fresh
process would; the torch loop's seconds are its 6,000 steps. Each fnn
program also records the seconds spent drawing its params (``init``: eager
random ops, each compiled on first use) and compiling its first epoch; every
run records its process CPU seconds (user + system, all threads), which
other processes' load disturbs less than wall time. fnn rows run first, one
program each (with ``--separate-runs``: interleaved by seed, seed 0 of every
row, then seed 1, ...), then the PyTorch rows interleaved by seed; each run
records the 1-minute load average before and after.

Mean +- std over ``--seeds`` (default 5; 3 for ``mlp-fnn``); the torch rows
run ``--torch-seeds`` (default: ``--seeds``). ``--rows`` runs a subset and
keeps the other rows' runs from the existing JSON (each run keeps the date
and command it was measured with).

Writes ``experiments/results/mnist1d_table.{json,md,png}``.

Usage:
  .venv/bin/python experiments/mnist1d_table.py [--seeds 5]
      [--torch-seeds N] [--rows resmlp,cnn,torch-mlp,torch-cnn]
      [--separate-runs]
  .venv/bin/python experiments/mnist1d_table.py --replot  # PNG from JSON
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import jax
import numpy as np

import jax.numpy as jnp

import fnn
from fnn import data as data_lib, many, run, train

from _common import (RESULTS, add_replot_flag, gaps, machine, mean_std,
                     pyplot, replot, save_figure, write)

PUBLISHED = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94}
STEPS = 6000
FNN_ROWS = ("logistic", "mlp-paper", "resmlp", "cnn", "mlp-fnn")
TORCH_ROWS = ("torch-mlp", "torch-cnn")
ROWS = FNN_ROWS + TORCH_ROWS
LABELS = {"logistic": "fnn logistic regression (40, 10)",
          "mlp-paper": "fnn MLP 40-100-100-10, repo setup",
          "resmlp": "fnn residual MLP (repo's MLPBase), repo setup",
          "cnn": "fnn CNN (repo's ConvBase), repo setup",
          "mlp-fnn": "fnn MLP 40-512-512-10, fnn default",
          "torch-mlp": "PyTorch, the repository's MLPBase and loop",
          "torch-cnn": "PyTorch, the repository's ConvBase and loop"}
PUBLISHED_OF = {"logistic": "logistic", "cnn": "cnn", "torch-cnn": "cnn"}
# fnn row -> the PyTorch row of the same model (for the targets).
PEER = {"resmlp": "torch-mlp", "cnn": "torch-cnn"}
CNN_TARGET = 0.93  # the paper's 94%, one point of slack
SPEEDUP_TARGET = 3.0


def _load() -> float:
  return os.getloadavg()[0]


def _setup(ds, name, seed=0):
  r"""A row's model, optimizer, step config, batch, epochs, init scheme and
  (for ``mlp-fnn``) ``fnn train``'s configuration."""
  if name == "mlp-fnn":
    config = run.resolve_config(dict(dataset="mnist1d", seed=seed))
    model, opt, cfg = run.build(config, ds)
    return (model, opt, cfg, config["batch_size"], config["epochs"], "he",
            config)
  if name == "resmlp":
    model = fnn.arch.resmlp(40, 10)
  elif name == "cnn":
    model = fnn.arch.cnn(40, 10)
  else:
    sizes = (40, 10) if name == "logistic" else (40, 100, 100, 10)
    model = fnn.MLP(sizes, activation="relu")
  opt = train.make_optimizer("adam", 1e-2)
  batch = 100
  return (model, opt, train.StepConfig(), batch, STEPS // (len(ds.x) // batch),
          "pytorch", None)


def fnn_runs(ds, name, seeds) -> list[dict]:
  r"""All ``seeds`` of a row in one program (:func:`fnn.fit_many`): one
  record per seed, its seconds the program's divided by the seeds."""
  jax.clear_caches()  # the program pays its own compilation
  model, _, cfg, batch, epochs, scheme, config = _setup(ds, name)
  if config is None:  # the repository's setup: Adam 1e-2, constant
    optimizer, schedule = "adam", "constant"
    hyper = many.hyper(len(seeds), lr=1e-2)
  else:  # fnn train's default
    optimizer, schedule = config["optimizer"], config["schedule"]
    hyper = many.hyper(len(seeds), lr=config["lr"],
                       weight_decay=config["weight_decay"],
                       dropout=config["dropout"])
  load0 = _load()
  c0, t0 = time.process_time(), time.perf_counter()
  states = jax.block_until_ready(many.init_many(
      model, optimizer, [jax.random.key(s) for s in seeds], jnp.float32,
      scheme, schedule=schedule, total_steps=len(ds.x) // batch * epochs))
  init_seconds = time.perf_counter() - t0
  states, hist = many.fit_many(
      model, optimizer, states, ds, epochs=epochs, batch_size=batch,
      hyper=hyper, schedule=schedule,
      cfg=cfg._replace(weight_decay=0.0, dropout=0.0, dp_clip=0.0,
                       dp_noise=0.0))
  seconds = time.perf_counter() - t0
  cpu_seconds = time.process_time() - c0
  steady = float(np.median([h["seconds"] for h in hist[1:]]))
  k = len(seeds)
  program = dict(program_runs=k, program_seconds=seconds,
                 program_cpu_seconds=cpu_seconds,
                 program_init_seconds=init_seconds,
                 program_compile_seconds=max(hist[0]["seconds"] - steady,
                                             0.0),
                 program_steady_seconds=steady * len(hist))
  load1 = _load()
  steps = np.asarray(states.step)
  return [dict(accuracy=hist[-1]["test_accuracy"][i], steps=int(steps[i]),
               seconds=seconds / k, cpu_seconds=cpu_seconds / k,
               init_seconds=init_seconds / k,
               compile_seconds=program["program_compile_seconds"] / k,
               steady_seconds=program["program_steady_seconds"] / k,
               seed=seed, load_before=load0, load_after=load1, **program)
          for i, seed in enumerate(seeds)]


def fnn_run(ds, name, seed):
  r"""One seed alone (:func:`fnn.fit`; ``--separate-runs``)."""
  jax.clear_caches()  # every run pays its own compilation
  model, opt, cfg, batch, epochs, scheme, _ = _setup(ds, name, seed)
  load0 = _load()
  c0, t0 = time.process_time(), time.perf_counter()
  state = jax.block_until_ready(
      train.init_state(model, opt, jax.random.key(seed), scheme=scheme))
  init_seconds = time.perf_counter() - t0
  state, hist = train.fit(model, opt, state, ds, epochs=epochs,
                          batch_size=batch, cfg=cfg)
  seconds = time.perf_counter() - t0
  steady = float(np.median([h["seconds"] for h in hist[1:]]))
  return dict(accuracy=hist[-1]["test_accuracy"], steps=int(state.step),
              seconds=seconds, cpu_seconds=time.process_time() - c0,
              # drawing the params: eager random ops, each compiled anew
              init_seconds=init_seconds,
              # the first epoch's seconds less a steady epoch's: compilation
              compile_seconds=max(hist[0]["seconds"] - steady, 0.0),
              steady_seconds=steady * len(hist), seed=seed,
              load_before=load0, load_after=_load())


def _torch_models():
  r"""The repository's ``MLPBase`` and ``ConvBase`` (``notebooks/models.py``,
  printing and ``count_params`` left out)."""
  import torch.nn as nn

  class MLPBase(nn.Module):  # linear1, relu, h + relu(linear2), linear3
    def __init__(self, input_size=40, output_size=10, hidden_size=100):
      super().__init__()
      self.linear1 = nn.Linear(input_size, hidden_size)
      self.linear2 = nn.Linear(hidden_size, hidden_size)
      self.linear3 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
      h = self.linear1(x).relu()
      h = h + self.linear2(h).relu()
      return self.linear3(h)

  class ConvBase(nn.Module):
    def __init__(self, output_size=10, channels=25, linear_in=125):
      super().__init__()
      self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
      self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
      self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
      self.linear = nn.Linear(linear_in, output_size)

    def forward(self, x):
      x = x.view(-1, 1, x.shape[-1])
      h1 = self.conv1(x).relu()
      h2 = self.conv2(h1).relu()
      h3 = self.conv3(h2).relu()
      h3 = h3.view(h3.shape[0], -1)  # flatten the conv features
      return self.linear(h3)

  return {"torch-mlp": MLPBase, "torch-cnn": ConvBase}


def _torch_loop(name, ds, steps):
  r"""The repository's model and loop for ``steps`` steps: ``(model,
  seconds)``."""
  import torch
  import torch.nn as nn
  model = _torch_models()[name]()
  opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0)
  x = torch.from_numpy(np.asarray(ds.x, np.float32))
  y = torch.from_numpy(np.asarray(ds.y, np.int64))
  criterion = nn.CrossEntropyLoss()
  t0 = time.perf_counter()
  for step in range(steps):  # batches in order, no shuffling (the repo's)
    bix = (step * 100) % len(x)
    loss = criterion(model(x[bix:bix + 100]), y[bix:bix + 100])
    loss.backward()
    opt.step()
    opt.zero_grad()
  return model, time.perf_counter() - t0


CALIBRATION_STEPS = 200  # per thread count and repeat, about 1 s
_THREADS: dict = {}


def torch_threads(name, ds) -> dict:
  r"""The faster torch thread count for ``name`` on this machine, 1 or all
  usable CPUs, timed once per row (best of two interleaved
  :data:`CALIBRATION_STEPS`-step loops each): ``{"threads": n,
  "calibration_ms_per_step": {"1": ms, "2": ms}}``.

  These models' ops are tiny: on 2 cores while other processes kept both
  busy, two intra-op threads made a step 12-26x slower than one (the
  threads wait on each other). Giving the peer its faster setting keeps the
  speed comparison fair.
  """
  import torch
  if name not in _THREADS:
    options = sorted({1, max(1, len(os.sched_getaffinity(0)))})
    best = {n: np.inf for n in options}
    for _ in range(2):
      for n in options:
        torch.set_num_threads(n)
        best[n] = min(best[n], _torch_loop(name, ds, CALIBRATION_STEPS)[1])
    _THREADS[name] = dict(threads=min(best, key=best.get),
                          calibration_ms_per_step={
                              str(n): 1e3 * t / CALIBRATION_STEPS
                              for n, t in best.items()})
  return _THREADS[name]


def torch_run(ds, name, seed):
  r"""The mnist1d repository's model and training loop, verbatim in spirit
  (``train.py``'s ``train_model`` without its periodic evaluation), on the
  faster thread count (:func:`torch_threads`)."""
  import torch
  threads = torch_threads(name, ds)
  torch.set_num_threads(threads["threads"])
  torch.manual_seed(seed)
  load0 = _load()
  c0 = time.process_time()
  model, seconds = _torch_loop(name, ds, STEPS)
  cpu_seconds = time.process_time() - c0
  x_test = torch.from_numpy(np.asarray(ds.x_test, np.float32))
  with torch.no_grad():
    acc = float((model(x_test).argmax(-1).numpy() == ds.y_test).mean())
  return dict(accuracy=acc, steps=STEPS, seconds=seconds,
              cpu_seconds=cpu_seconds, seed=seed, load_before=load0,
              load_after=_load(), **threads)


def plot(path, payload):
  r"""Each row's test accuracy against its published figure, from the JSON
  payload that :func:`main` writes."""
  plt = pyplot()
  rows = payload["rows"]
  fig, ax = plt.subplots(figsize=(9.5, 1.2 + 0.62 * len(rows)))
  y = np.arange(len(rows))
  ax.barh(y, gaps([r["mean"] for r in rows]),
          xerr=gaps([r["std"] for r in rows]),
          color=["C1" if r["name"].startswith("torch") else "C0"
                 for r in rows], capsize=3)
  from matplotlib.patches import Patch
  handles = [Patch(color="C0", label="fnn: mean +- std over seeds"),
             Patch(color="C1", label="PyTorch, the repository's code")]
  for i, r in enumerate(rows):
    line, = ax.plot([r["published"]] * 2, [i - 0.4, i + 0.4], color="C3",
                    label="published (Greydanus 2020)")
    ax.annotate(f"{r['mean']:.3f}",  # right of the error bar and red mark
                (max(r["mean"] + r["std"], r["published"]), i),
                textcoords="offset points", xytext=(6, -3), fontsize=8)
  handles.append(line)
  ax.set_yticks(y, [f"{r['label']}\n{r['seeds']} seed"
                    f"{'s' * (r['seeds'] > 1)}, {r['steps']} steps"
                    for r in rows], fontsize=8)
  ax.set_ylabel("model and training setup")
  ax.set_xlabel("test accuracy (fraction of 1,000 test examples)")
  ax.set_xlim(0, 1.12)
  ax.legend(handles=handles, fontsize=8, loc="upper right")  # beside the
  # logistic row, the shortest bar
  ax.invert_yaxis()  # the table's order, top down
  fig.suptitle("MNIST-1D (4,000 train / 1,000 test, standardized): test "
               "accuracy\nagainst the published table (logistic regression "
               "32%, MLP 68%, CNN 94%)")
  fig.tight_layout()
  save_figure(fig, path)


def _rows_arg(value: str) -> list[str]:
  names = [v.strip() for v in value.split(",") if v.strip()]
  bad = [n for n in names if n not in ROWS]
  if bad or not names:
    raise argparse.ArgumentTypeError(
        f"unknown row(s) {bad}; choose from {', '.join(ROWS)}")
  return names


def _previous(out: str) -> tuple[dict, dict]:
  r"""The runs (and their provenance) of the existing JSON, if any."""
  try:
    with open(os.path.join(out, "mnist1d_table.json")) as f:
      payload = json.load(f)
  except (OSError, ValueError):
    return {}, {}
  return payload.get("runs", {}), payload.get("provenance", {})


def summarize(runs: dict, provenance: dict) -> tuple[list, list]:
  r"""Table rows (in :data:`ROWS` order) and the Markdown lines."""
  rows = []
  for name in (n for n in ROWS if n in runs):
    rs = runs[name]
    m, s = mean_std([r["accuracy"] for r in rs])
    secs = [r["seconds"] for r in rs]
    opt_mean = lambda k: (float(np.mean([r[k] for r in rs]))  # noqa: E731
                          if all(k in r for r in rs) else None)
    rows.append(dict(
        name=name, label=LABELS[name], mean=m, std=s, seeds=len(rs),
        published=PUBLISHED[PUBLISHED_OF.get(name, "mlp")],
        seconds=float(np.mean(secs)), seconds_max=float(np.max(secs)),
        compile_seconds=opt_mean("compile_seconds"),
        init_seconds=opt_mean("init_seconds"),
        cpu_seconds=opt_mean("cpu_seconds"),
        steps=rs[0]["steps"]))
  by = {r["name"]: r for r in rows}
  lines = ["| model | test accuracy | published | seeds | steps | "
           "s per run (mean / max) | of which init | of which compile | "
           "CPU s per run |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  num = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
  for r in rows:
    lines.append(f"| {r['label']} | {r['mean']:.3f} +- {r['std']:.3f} | "
                 f"{r['published']:.2f} | {r['seeds']} | {r['steps']} | "
                 f"{r['seconds']:.2f} / {r['seconds_max']:.2f} | "
                 f"{num(r.get('init_seconds'))} | "
                 f"{num(r.get('compile_seconds'))} | "
                 f"{num(r.get('cpu_seconds'))} |")
  lines.append("")
  if "logistic" in by:
    lr = by["logistic"]
    lines.append(f"- logistic regression: {lr['mean']:.3f}, "
                 f"{abs(lr['mean'] - 0.32) * 100:.1f} points from 32% "
                 f"(target: within 3)")
  mlps = [r for r in rows if r["name"] in ("mlp-paper", "mlp-fnn", "resmlp")]
  if mlps:
    best = max(mlps, key=lambda r: r["mean"])
    lines.append(f"- best fnn MLP: {best['label']}, {best['mean']:.3f} "
                 f"(target >= 0.73)")
  if "cnn" in by:
    c = by["cnn"]
    lines.append(f"- fnn CNN: {c['mean']:.3f} +- {c['std']:.3f} over "
                 f"{c['seeds']} seeds (target: mean >= {CNN_TARGET}; "
                 f"{'HOLDS' if c['mean'] >= CNN_TARGET else 'MISSED'})")
  for name, peer in PEER.items():
    if name not in by or peer not in by:
      continue
    f, t = by[name], by[peer]
    if t["seeds"] > 1:
      ok = abs(f["mean"] - t["mean"]) <= t["std"]
      lines.append(
          f"- {f['label']} vs {t['label']}: {f['mean']:.3f} vs "
          f"{t['mean']:.3f} +- {t['std']:.3f} ({t['seeds']} seeds): "
          f"difference {f['mean'] - t['mean']:+.3f}, "
          f"{'within' if ok else 'outside'} one standard deviation of the "
          f"PyTorch run" + (" (target for the residual MLP: within; "
                            f"{'HOLDS' if ok else 'MISSED'})"
                            if name == "resmlp" else ""))
    else:
      lines.append(f"- {f['label']}: {f['mean']:.3f}; PyTorch "
                   f"{t['mean']:.3f} from one seed (no standard deviation)")
    worst = t["seconds"] / f["seconds_max"]
    lines.append(
        f"- wall time for {STEPS} steps, {name} vs {peer}: PyTorch "
        f"{t['seconds']:.1f} s (mean), fnn {f['seconds']:.1f} s (mean), "
        f"{f['seconds_max']:.1f} s (slowest run), each including "
        f"compilation and 150 test evaluations: {t['seconds'] / f['seconds']:.1f}x "
        f"on the means, {worst:.1f}x against fnn's slowest run (target: "
        f"each fnn run >= {SPEEDUP_TARGET:g}x faster; "
        f"{'HOLDS' if worst >= SPEEDUP_TARGET else 'MISSED'})"
        + ("" if f.get("cpu_seconds") is None or t.get("cpu_seconds") is None
           else f"; CPU seconds {t['cpu_seconds']:.1f} vs "
                f"{f['cpu_seconds']:.1f} ({t['cpu_seconds'] / f['cpu_seconds']:.1f}x)")
        + ("" if f.get("init_seconds") is None else
           f"; without fnn's init and compilation {t['seconds'] / max(f['seconds'] - f['init_seconds'] - f['compile_seconds'], 1e-9):.1f}x"))
  lines.append("")
  lines.append("Measured (per row: date, load average before/after each "
               "run, median over runs):")
  for name in (n for n in ROWS if n in runs):
    loads = [(r["load_before"], r["load_after"]) for r in runs[name]
             if "load_before" in r]
    p = provenance.get(name, {})
    load = (f"load {np.median([a for a, _ in loads]):.1f} / "
            f"{np.median([b for _, b in loads]):.1f}" if loads else
            "load not recorded")
    programs = {r["program_seconds"]: r["program_runs"] for r in runs[name]
                if "program_seconds" in r}
    how = "".join(f", {k} seeds in one program of {s:.1f} s"
                  for s, k in programs.items())
    lines.append(f"- {name}: {p.get('date', 'before 2026-11-23')}, {load}"
                 + how
                 + (f", `{p['command']}`" if "command" in p else ""))
  return rows, lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--torch-seeds", type=int, default=None,
                      help="seeds of the PyTorch rows (default: --seeds)")
  parser.add_argument("--rows", type=_rows_arg, default=list(ROWS),
                      help=f"comma-separated rows to run (default all: "
                      f"{','.join(ROWS)}); the others keep their runs from "
                      f"the existing JSON")
  parser.add_argument(
      "--separate-runs", action="store_true",
      help="train each fnn seed in its own program (fnn.fit, one "
      "compilation per seed) instead of a row's seeds in one (fnn.fit_many)")
  parser.add_argument("--out", default=RESULTS)
  add_replot_flag(parser, "mnist1d_table")
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, "mnist1d_table", plot)
  if args.seeds < 1 or (args.torch_seeds is not None and args.torch_seeds < 1):
    parser.error("--seeds and --torch-seeds must be at least 1")
  torch_seeds = args.seeds if args.torch_seeds is None else args.torch_seeds
  rows = list(args.rows)
  if any(r in TORCH_ROWS for r in rows):
    try:
      import torch  # noqa: F401
    except ImportError:
      print("torch not installed: the PyTorch comparison is skipped "
            "(pip install torch==2.13.0)")
      rows = [r for r in rows if r not in TORCH_ROWS]
  seeds = {r: (torch_seeds if r in TORCH_ROWS else
               min(args.seeds, 3) if r == "mlp-fnn" else args.seeds)
           for r in rows}
  ds = data_lib.load("mnist1d")
  runs, provenance = _previous(args.out)
  if set(rows) != set(ROWS):
    print(f"keeping the earlier runs of: "
          f"{', '.join(n for n in ROWS if n in runs and n not in rows)}")
  command = ("experiments/mnist1d_table.py " + " ".join(
      sys.argv[1:] if argv is None else argv)).strip()
  date = datetime.date.today().isoformat()
  new = {r: [] for r in rows}
  t_start = time.perf_counter()
  if not args.separate_runs:  # each fnn row's seeds in one program
    for name in (r for r in rows if r not in TORCH_ROWS):
      new[name] = fnn_runs(ds, name, list(range(seeds[name])))
      r = new[name][0]
      print(f"{name}: {seeds[name]} seeds in one program: accuracy "
            f"{mean_std([x['accuracy'] for x in new[name]])[0]:.3f} (mean), "
            f"{r['program_seconds']:.1f} s, load {r['load_before']:.1f} -> "
            f"{r['load_after']:.1f}", flush=True)
  for seed in range(max(seeds.values())):  # interleaved by seed
    for name in rows:
      if seed >= seeds[name] or (name not in TORCH_ROWS
                                 and not args.separate_runs):
        continue
      fn = torch_run if name in TORCH_ROWS else fnn_run
      r = fn(ds, name, seed)
      new[name].append(r)
      print(f"{name} seed {seed}: accuracy {r['accuracy']:.3f}, "
            f"{r['seconds']:.1f} s, load {r['load_before']:.1f} -> "
            f"{r['load_after']:.1f}", flush=True)
  print(f"all runs: {time.perf_counter() - t_start:.1f} s", flush=True)
  for name in rows:
    runs[name] = new[name]
    provenance[name] = dict(date=date, command=command)
  table_rows, body = summarize(runs, provenance)
  lines = ["# MNIST-1D: fnn against the published table", "",
           f"`{command}`; {machine()}; float32 on the CPU; JAX "
           f"{jax.__version__}" + (f", PyTorch {sys.modules['torch'].__version__}"
                                   if "torch" in sys.modules else "")
           + "; wall time per run, fnn's including its compilation"
           + ("" if args.separate_runs else
              " (an fnn row's seeds train in one program, fnn.fit_many: "
              "per run = the program's seconds / seeds)") + ".", ""]
  md = "\n".join(lines + body) + "\n"
  payload = dict(rows=table_rows, runs={n: runs[n] for n in ROWS if n in runs},
                 provenance=provenance, machine=machine())
  write(args.out, "mnist1d_table", payload, md)
  plot(f"{args.out}/mnist1d_table.png", payload)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())

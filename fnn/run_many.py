r"""Many runs on disk: ``fnn train --seeds`` and ``fnn sweep``.

Every run of one invocation shares the network's shapes and trains in one
compiled program (:func:`fnn.fit_many`). The run directory holds the stacked
``checkpoint.npz`` (atomic, every epoch; its header holds the configuration,
every run's settings and every epoch's metrics) and ``metrics.jsonl`` (one
line per epoch, a value per run), as a single run's directory does, and:

- ``fnn train --seeds``: ``seed-<s>/`` per seed, each a whole single run
  (``checkpoint.npz``, ``metrics.jsonl``, ``summary.json``, ``curves.png``;
  ``fnn train --resume --out DIR/seed-<s>`` continues that seed alone), and a
  top-level ``summary.json`` (per seed and mean +- std) and ``curves.png``
  (mean and a band of +- one standard deviation);
- ``fnn sweep``: ``sweep.json`` and ``sweep.md``, mean +- std over seeds of
  the validation and test accuracy per configuration, and the configuration
  selected by validation accuracy alone.

``--resume`` continues either from the stacked checkpoint, bit for bit on
the CPU (only ``--epochs`` may change). The runs share the data: on the toy
datasets, which are drawn from ``--seed``, every run uses the first seed's
draw.
"""
from __future__ import annotations

import itertools
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _fs, checkpoint, many, run as run_lib
from fnn.config import SEED_MAX, resolve_config, validate_config

SWEEP_JSON, SWEEP_MD = run_lib.SWEEP_JSON, run_lib.SWEEP_MD
MAX_RUNS = 4096  # runs of one program: far above a sensible grid
GRID = ("lr", "weight_decay", "dropout", "dp_clip", "dp_noise")
SWEEP_VAL_FRACTION = 0.1  # fnn sweep's default validation split


def parse_seeds(text: str, first: int = 0) -> list[int]:
  r"""``--seeds``: ``N`` (the N seeds from ``first``), ``A-B`` (inclusive)
  or ``a,b,c``.

  Raises:
    ValueError: not of these forms, an empty range, a seed outside
      ``[0, SEED_MAX]``, a repeated seed, more than :data:`MAX_RUNS`.
  """
  t = str(text).strip()
  try:
    if re.fullmatch(r"\d+", t):
      n = int(t)
      if n < 1:
        raise ValueError(f"--seeds {t}: the number of seeds must be >= 1")
      seeds = list(range(first, first + n))
    elif re.fullmatch(r"\d+-\d+", t):
      a, b = map(int, t.split("-"))
      if b < a:
        raise ValueError(f"--seeds {t} is an empty range (give A-B with A <= "
                         f"B)")
      seeds = list(range(a, b + 1))
    elif re.fullmatch(r"\d+(,\d+)+", t):
      seeds = [int(s) for s in t.split(",")]
    else:
      raise ValueError(f"--seeds must be N (that many seeds from --seed), A-B "
                       f"or a list a,b,c of seeds, got {text!r}")
  except OverflowError:
    raise ValueError(f"--seeds {text!r} is too large") from None
  if len(seeds) > MAX_RUNS:
    raise ValueError(f"--seeds {t} gives {len(seeds)} seeds; at most "
                     f"{MAX_RUNS} runs fit one program")
  dup = sorted({s for s in seeds if seeds.count(s) > 1})
  if dup:
    raise ValueError(f"--seeds {t} repeats seed {dup[0]}; each seed once")
  bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
  if bad:
    raise ValueError(f"--seeds {t}: seed {bad[0]} is outside [0, {SEED_MAX}]")
  return seeds


def parse_grid(text: str, option: str) -> list[float]:
  r"""A grid option's comma-separated finite numbers (``1e-3,3e-3``).

  Raises:
    ValueError: empty, a value that is not a finite number, a repeat.
  """
  parts = [p.strip() for p in str(text).split(",")]
  if not any(parts):
    raise ValueError(f"{option}: the grid is empty; give one or more values "
                     f"(e.g. {option} 1e-3,3e-3)")
  values = []
  for p in parts:
    try:
      v = float(p)
    except ValueError:
      raise ValueError(f"{option}: {p!r} is not a number (give values "
                       f"separated by commas)") from None
    if not math.isfinite(v):
      raise ValueError(f"{option}: {p} is not a finite number")
    if v in values:
      raise ValueError(f"{option} repeats {p}; give each value once")
    values.append(v)
  return values


def runs_of(config: dict, seeds: list[int], grid: dict | None = None
            ) -> list[dict]:
  r"""Every run: the grid's configurations (in the order given, the last
  option fastest) times the seeds; values not in ``grid`` are the config's."""
  grid = grid or {}
  axes = [grid.get(k, [config[k]]) for k in GRID]
  runs = [dict(zip(GRID, combo), seed=s)
          for combo in itertools.product(*axes) for s in seeds]
  if len(runs) > MAX_RUNS:
    raise ValueError(f"the grid and seeds give {len(runs)} runs; at most "
                     f"{MAX_RUNS} fit one program")
  return runs


# ---------------------------------------------------------------- the runs


def _check_config(config: dict, kind: str) -> None:
  what = "fnn sweep" if kind == "sweep" else "fnn train --seeds"
  if config["log_grad_stats"]:
    raise ValueError(f"{what} does not log gradient statistics; drop "
                     f"--log-grad-stats (or train one seed with it)")
  if config["devices"] not in (None, 1):
    raise ValueError(f"{what} trains on one device (the runs are the "
                     f"parallel axis); drop --devices {config['devices']}")


def _hyper(runs: list[dict]) -> many.Hyper:
  r""":func:`fnn.many.hyper` of the runs; its errors name the options."""
  try:
    return many.hyper(len(runs), **{k: [r[k] for r in runs] for k in GRID})
  except ValueError as e:
    message = str(e)
    for k in GRID:
      message = re.sub(rf"\b{k}\b", "--" + k.replace("_", "-"), message)
    raise ValueError(message) from None


def _setup(config: dict, runs: list[dict], dataset):
  r"""Model, step structure and the stacked initial states."""
  model, _, cfg = run_lib.build(config, dataset)
  if cfg.mesh is not None:
    raise ValueError("many runs train on one device; give --devices 1")
  if config["dtype"] == "float64":
    jax.config.update("jax_enable_x64", True)
  dtype = jnp.dtype("float32" if config["dtype"] == "bfloat16"
                    else config["dtype"])
  scheme = config["init"] if config["arch"] == "mlp" else None
  spe = len(dataset.x) // config["batch_size"]
  states = many.init_many(model, config["optimizer"],
                          [jax.random.key(r["seed"]) for r in runs], dtype,
                          scheme, schedule=config["schedule"],
                          total_steps=spe * config["epochs"])
  return model, cfg, states


def run(config_args: dict, out: str | None, resume: bool, quiet: bool, *,
        kind: str, seeds: str | None, grid: dict | None = None,
        interrupts=None) -> int:
  r"""``fnn train --seeds`` (``kind="seeds"``) or ``fnn sweep``; returns the
  exit code.

  Raises:
    ValueError: bad options, data, checkpoint or output location.
  """
  started = run_lib._now()
  if resume:
    return run_lib.run(config_args, out, True, quiet, interrupts=interrupts)
  config = resolve_config(config_args)
  if kind == "sweep" and config_args.get("val_fraction") is None:
    config["val_fraction"] = SWEEP_VAL_FRACTION
  validate_config(config)
  _check_config(config, kind)
  if kind == "sweep" and not config["val_fraction"]:
    raise ValueError("fnn sweep selects on a validation split: --val-fraction "
                     "must be in (0, 1), got 0")
  seed_list = parse_seeds(seeds if seeds is not None else "1",
                          config["seed"])
  config["seed"] = seed_list[0]
  runs = runs_of(config, seed_list, grid)
  _hyper(runs)  # the values' checks, before anything is written
  many_info = dict(kind=kind, runs=runs, grid=dict(grid or {}))
  return run_lib.new_run(
      out or run_lib.default_out(config, f"-{kind}"), interrupts, quiet,
      f"fnn {_command(kind)}",
      lambda r: _new(r, config, started, many_info))


def _new(r, config: dict, started: str, many_info: dict) -> int:
  if not r.quiet:
    print(f"{r.command}: loading {config['dataset']} ...", flush=True)
  dataset = run_lib._load_data(config)
  if r.stopping():
    return r.interrupted()
  model, cfg, states = _setup(config, many_info["runs"], dataset)
  meta = dict(epoch=0, data=run_lib._fingerprint(dataset),
              steps_per_epoch=len(dataset.x) // config["batch_size"],
              started=started, resumed=[], history=[], many=many_info)
  r.save(states, config, meta, [])
  return _train(r, config, dataset, model, cfg, states, meta, [], 0)


def resume(r, config: dict, meta: dict, dataset, started: str) -> int:
  r"""Continues many runs from the stacked checkpoint (``run.run`` calls it
  when the checkpoint's header says so). Only ``--epochs`` may have changed
  (``config`` holds it)."""
  info = meta["many"]
  if not isinstance(info, dict) or info.get("kind") not in ("seeds", "sweep"):
    raise ValueError(f"checkpoint {r.ckpt}: its record of many runs is not "
                     f"valid")
  runs = info.get("runs")
  if not isinstance(runs, list) or not runs or not all(
      isinstance(x, dict) and set(x) == {*GRID, "seed"} for x in runs):
    raise ValueError(f"checkpoint {r.ckpt}: its list of runs is not valid")
  _hyper(runs)
  model, cfg, states = _setup(config, runs, dataset)
  states, _ = checkpoint.load(r.ckpt, states)
  spe = len(dataset.x) // config["batch_size"]
  start = meta.get("epoch")
  steps = np.asarray(states.step)
  history = [h for h in meta.get("history", []) if h["epoch"] <= start]
  diverged = history[-1].get("diverged") if history else None
  diverged = diverged if isinstance(diverged, list) else [None] * len(runs)
  want = np.array([start if d is None else d - 1 for d in diverged]) * spe
  if not isinstance(start, int) or start < 0 or not np.array_equal(steps,
                                                                   want):
    raise ValueError(f"checkpoint {r.ckpt} is at steps {steps.tolist()[:4]}, "
                     f"which do not end epoch {start} of {spe} steps; it does "
                     f"not belong to these data")
  r.saved_epoch = start
  meta.update(epoch=start, history=history, steps_per_epoch=spe)
  if start >= config["epochs"]:
    _finish(r, config, model, dataset, states, meta, history)
    print(f"runs in {r.out} already finished {start} of {config['epochs']} "
          f"epochs; wrote their outputs")
    return 0
  r.save(states, config, meta, history)
  return _train(r, config, dataset, model, cfg, states, meta, history, start,
                diverged)


def _plural(n: int, word: str) -> str:
  return f"{n} {word}{'' if n == 1 else 's'}"


def _command(kind: str) -> str:
  return "sweep" if kind == "sweep" else "train"


def _mean(values) -> float | None:
  v = [x for x in values if x is not None and math.isfinite(x)]
  return float(np.mean(v)) if v else None


def _train(r, config, dataset, model, cfg, states, meta, history, start,
           diverged=None) -> int:
  info = meta["many"]
  runs, kind = info["runs"], info["kind"]
  k = len(runs)
  if not r.quiet:
    print(f"fnn {_command(kind)}: {config['dataset']} ({len(dataset.x)} "
          f"train, {0 if dataset.x_val is None else len(dataset.x_val)} "
          f"validation, {len(dataset.x_test)} test) -> {r.out}")
    print(f"  {run_lib._model_line(config, model)}, {config['optimizer']} "
          f"({config['schedule']}), {config['epochs']} epochs, batch "
          f"{config['batch_size']}, {config['dtype']}: {k} runs in one "
          f"program ({_plural(len({x['seed'] for x in runs}), 'seed')})")
    print("  compiling the training epoch of all runs (the first epoch "
          "includes it) ...", flush=True)
  view = run_lib._View(config["epochs"], start, r.quiet, runs=k)

  def on_epoch(metrics, new_states):
    metrics = run_lib._json_safe(metrics)
    history.append(metrics)
    meta.update(epoch=metrics["epoch"], history=history)
    stop = r.stopping()
    r.save(new_states, config, meta, history,
           force=stop or metrics["epoch"] == config["epochs"])
    # The means over the runs; with a validation split, its figures (a
    # sweep selects on them: the progress shows no test figure then).
    split = "val" if "val_accuracy" in metrics else "test"
    shown = dict(epoch=metrics["epoch"], split=split,
                 train_loss=_mean(metrics["train_loss"]),
                 test_loss=_mean(metrics[f"{split}_loss"]),
                 test_accuracy=_mean(metrics[f"{split}_accuracy"]))
    view.update(shown)
    if stop:
      raise run_lib._Stop

  hyper = _hyper(runs)
  try:
    try:
      states, _ = many.fit_many(
          model, config["optimizer"], states, dataset,
          epochs=config["epochs"], batch_size=config["batch_size"],
          hyper=hyper, schedule=config["schedule"], cfg=cfg,
          start_epoch=start, callback=on_epoch, diverged=diverged)
    finally:
      view.close()
  except run_lib._Stop:
    return r.interrupted()
  except KeyboardInterrupt:
    return r.stopped_now()
  except Exception as e:  # out of memory inside XLA: one line, not a trace
    message = run_lib._resources.resource_error_message(e)
    if message is None:
      raise
    r.flush_quietly()
    raise ValueError(f"{message}; {r.kept()}") from None
  return _finish(r, config, model, dataset, states, meta, history)


# ---------------------------------------------------------------- outputs


def _stats(values) -> dict:
  v = [x for x in values if x is not None and math.isfinite(x)]
  return dict(mean=float(np.mean(v)) if v else None,
              std=float(np.std(v, ddof=1)) if len(v) > 1 else (
                  0.0 if v else None), n=len(v))


def _pm(s: dict) -> str:
  if s["mean"] is None:
    return "diverged"
  return f"{s['mean']:.4f} +- {s['std']:.4f}"


def _run_history(history: list[dict], k: int) -> list[dict]:
  r"""Run ``k``'s rows in a single run's form, up to its divergence."""
  rows = []
  for h in history:
    if h.get("diverged") and h["diverged"][k] is not None:
      break
    row = {name: (v[k] if isinstance(v, list) and name != "diverged" else v)
           for name, v in h.items() if name != "diverged"}
    rows.append(row)
  return rows


def _final(history, field, k):
  rows = _run_history(history, k)
  return rows[-1].get(field) if rows else None


def _finish(r, config, model, dataset, states, meta, history) -> int:
  r"""The outputs of finished runs; ``states``: the last epoch's (as in the
  checkpoint: diverged runs hold their last good state)."""
  info = meta["many"]
  runs, kind = info["runs"], info["kind"]
  diverged = history[-1].get("diverged") or [None] * len(runs)
  if kind == "seeds":
    code = _finish_seeds(r, config, model, dataset, states, meta, history,
                         diverged)
  else:
    code = _finish_sweep(r, config, meta, history, diverged)
  return code


def _seed_config(config: dict, run: dict) -> dict:
  return dict(config, seed=run["seed"], **{k: run[k] for k in GRID})


def _finish_seeds(r, config, model, dataset, states, meta, history,
                  diverged) -> int:
  runs = meta["many"]["runs"]
  n = len(dataset.x)
  per_seed = []
  for k, x in enumerate(runs):
    sub = os.path.join(r.out, f"seed-{x['seed']}")
    _fs.prepare_dir(sub)
    rows = _run_history(history, k)
    cfg_k = _seed_config(config, x)
    meta_k = dict(meta, epoch=rows[-1]["epoch"] if rows else 0, history=rows)
    meta_k.pop("many")
    one = many.unstack(states, k)
    sr = run_lib._Run(sub, None, True)
    sr.save(one, cfg_k, meta_k, rows)
    if rows:
      run_lib._finish(sr, cfg_k, model, rows, meta_k, n, missing_only=False)
    per_seed.append(dict(seed=x["seed"], diverged_epoch=diverged[k],
                         test_accuracy=_final(history, "test_accuracy", k),
                         val_accuracy=_final(history, "val_accuracy", k),
                         final_train_loss=_final(history, "train_loss", k)))
  last = history[-1]
  seconds = sum(h.get("seconds") or 0.0 for h in history)
  steps = sum(int(_final(history, "step", k) or 0) for k in range(len(runs)))
  summary = dict(
      kind="seeds", dataset=config["dataset"], arch=config["arch"],
      model=run_lib.model_record(model), config=config,
      seeds=[x["seed"] for x in runs], per_seed=per_seed,
      test_accuracy=_stats([p["test_accuracy"] for p in per_seed]),
      val_accuracy=_stats([p["val_accuracy"] for p in per_seed]),
      final_train_loss=_stats([p["final_train_loss"] for p in per_seed]),
      val_fraction=config["val_fraction"], epochs=int(last["epoch"]),
      wall_seconds=seconds,
      model_steps_per_second=steps / seconds if seconds > 0 else None,
      data_fingerprint=meta.get("data"), resumed=meta.get("resumed", []),
      provenance=run_lib.provenance(meta.get("started") or run_lib._now()))
  if config["dp_clip"]:
    summary["dp"] = run_lib._dp_summary(config, n, int(last["step"]))
  text = run_lib._dumps(summary, indent=2)
  _fs.atomic_write_bytes(os.path.join(r.out, run_lib.SUMMARY),
                         lambda f: f.write(text.encode()))
  plot_band(os.path.join(r.out, run_lib.CURVES), history,
            f"{config['dataset']}: {run_lib._model_line(config, model)}, "
            f"{len(runs)} seeds")
  acc = summary["test_accuracy"]
  print(f"test accuracy {_pm(acc)} over {_plural(acc['n'], 'seed')} "
        f"({', '.join(run_lib._fmt(p['test_accuracy']) for p in per_seed)}); "
        f"{steps} model-steps in {seconds:.1f} s "
        f"({summary['model_steps_per_second'] or 0:.0f}/s) -> {r.out}")
  gone = [p["seed"] for p in per_seed if p["diverged_epoch"] is not None]
  if gone:
    print(f"fnn train: seed{'s' if len(gone) > 1 else ''} "
          f"{', '.join(map(str, gone))} diverged (loss NaN or infinite); "
          f"their directories keep the last good state; try a smaller --lr",
          file=sys.stderr)
    return 3
  return 0


def plot_band(path: str, history: list[dict], title: str = "") -> None:
  r"""Mean and +- one standard deviation over the runs of the train loss
  and the test (and validation) accuracy, atomically as PNG."""
  plt = run_lib._pyplot()
  epochs = np.array([h["epoch"] for h in history])
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, field, label, log in (
      (axes[0], "train_loss", "train loss", True),
      (axes[1], "test_accuracy", "test accuracy", False),
      (axes[1], "val_accuracy", "validation accuracy", False)):
    if field not in history[0]:
      continue
    v = np.array([[np.nan if x is None else x for x in h[field]]
                  for h in history], np.float64)
    ok = np.isfinite(v).any(axis=1)
    with np.errstate(all="ignore"):
      mean = np.where(ok, np.nanmean(np.where(ok[:, None], v, 0.0), 1),
                      np.nan)
      std = np.where(ok, np.nanstd(np.where(ok[:, None], v, 0.0), 1), np.nan)
    low = run_lib._finite_or_gap(mean - std, log)
    mean = run_lib._finite_or_gap(mean, log)
    ax.plot(epochs, mean, label=f"{label} (mean of {v.shape[1]})")
    ax.fill_between(epochs, np.where(np.isnan(low), mean, low), mean + std,
                    alpha=0.25)
    ax.set_xlabel("epoch")
    if log and np.isfinite(mean).any():  # all diverged: a linear empty axis
      ax.set_yscale("log")
    ax.legend()
  axes[0].set_title("train loss")
  axes[1].set_title("accuracy")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  run_lib._save_figure(path, fig)


def select(configs: list[dict]) -> int | None:
  r"""The index of the configuration with the highest mean validation
  accuracy (ties: the lower mean validation loss, then the first); reads
  nothing else. None when every configuration diverged."""
  best, key = None, None
  for i, c in enumerate(configs):
    acc, loss = c["val_accuracy"]["mean"], c["val_loss"]["mean"]
    if acc is None:
      continue
    k = (acc, -(loss if loss is not None else math.inf))
    if key is None or k > key:
      best, key = i, k
  return best


def _finish_sweep(r, config, meta, history, diverged) -> int:
  info = meta["many"]
  runs, grid = info["runs"], info["grid"]
  seeds = sorted({x["seed"] for x in runs}, key=[x["seed"] for x in runs].index)
  varied = [k for k in GRID if k in grid]
  configs = []
  for i in range(0, len(runs), len(seeds)):
    ks = range(i, i + len(seeds))
    values = {g: runs[i][g] for g in GRID}
    bad = [runs[k]["seed"] for k in ks if diverged[k] is not None]
    configs.append(dict(
        values=values, diverged_seeds=bad,
        val_accuracy=_stats([None if bad else _final(history, "val_accuracy",
                                                     k) for k in ks]),
        val_loss=_stats([None if bad else _final(history, "val_loss", k)
                         for k in ks]),
        test_accuracy=_stats([None if bad else _final(
            history, "test_accuracy", k) for k in ks])))
  chosen = select(configs)
  seconds = sum(h.get("seconds") or 0.0 for h in history)
  report = dict(
      kind="sweep", dataset=config["dataset"], config=config, grid=grid,
      seeds=seeds, val_fraction=config["val_fraction"],
      selection="highest mean validation accuracy at the last epoch (ties: "
                "lower mean validation loss); test metrics are not read",
      configs=configs, selected=chosen,
      selected_values=None if chosen is None else configs[chosen]["values"],
      selected_test_accuracy=None if chosen is None
      else configs[chosen]["test_accuracy"],
      epochs=int(history[-1]["epoch"]), runs=len(runs), wall_seconds=seconds,
      provenance=run_lib.provenance(meta.get("started") or run_lib._now()))
  text = run_lib._dumps(report, indent=2)
  _fs.atomic_write_bytes(os.path.join(r.out, SWEEP_JSON),
                         lambda f: f.write(text.encode()))
  table = sweep_markdown(report, varied)
  _fs.atomic_write_bytes(os.path.join(r.out, SWEEP_MD),
                         lambda f: f.write(table.encode()))
  if not r.quiet:
    print(table, end="")
  if chosen is None:
    print(f"fnn sweep: every configuration diverged; nothing selected -> "
          f"{r.out}", file=sys.stderr)
    return 3
  c = configs[chosen]
  print(f"selected {_values_text(c['values'], varied)} by validation "
        f"accuracy {_pm(c['val_accuracy'])}: test accuracy "
        f"{_pm(c['test_accuracy'])} over {_plural(len(seeds), 'seed')} "
        f"({len(runs)} runs in {seconds:.1f}"
        f" s) -> {r.out}")
  return 0


_LABEL = dict(lr="lr", weight_decay="weight decay", dropout="dropout",
              dp_clip="dp clip", dp_noise="dp noise")


def _values_text(values: dict, varied: list[str]) -> str:
  return ", ".join(f"{_LABEL[k]} {values[k]:g}" for k in (varied or ["lr"]))


def sweep_markdown(report: dict, varied: list[str]) -> str:
  r"""``sweep.md``: one row per configuration, the selected one marked."""
  cols = varied or ["lr"]
  head = ([_LABEL[k] for k in cols] + ["val accuracy", "test accuracy",
                                       "selected"])
  lines = [f"# fnn sweep: {report['dataset']}, "
           f"{_plural(len(report['seeds']), 'seed')}, "
           f"validation fraction {report['val_fraction']:g}", "",
           "| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  for i, c in enumerate(report["configs"]):
    cells = [f"{c['values'][k]:g}" for k in cols] + [
        _pm(c["val_accuracy"]), _pm(c["test_accuracy"]),
        "**yes**" if i == report["selected"] else ""]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"Selected by {report['selection']}.", ""]
  return "\n".join(lines)

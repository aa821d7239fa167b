r"""A training run on disk: configuration, outputs, resume, divergence, faults.

Used by ``fnn train``. A run directory holds ``checkpoint.npz`` (atomic and
fsync'ed; written after the first, the last and an interrupted epoch, and in
between as often as costs at most 5% of the run, see :meth:`_Run.save`),
``metrics.jsonl`` (one JSON object per epoch), ``summary.json`` and
``curves.png`` (and ``grad_stats.png`` with ``--log-grad-stats``).

What protects a run directory:

- the checkpoint is the source of truth: its header (covered by its SHA-256,
  see :mod:`fnn.checkpoint`) holds the configuration, the epoch, a
  fingerprint of the data and every epoch's metrics; ``metrics.jsonl`` is
  rewritten from it, atomically, after each checkpoint, so the two never
  disagree for long and a crash between them is repaired by ``--resume``;
- the directory is locked while a run writes to it (a second ``fnn train``
  into it, or a ``--resume`` of a running run, is refused);
- a new run never writes into a directory that holds another run's files;
- ``--resume`` validates the stored configuration, refuses different data
  and options that cannot change (:data:`fnn.config.RESUME_SAFE` can), and
  completes the outputs of a finished run that lacks them;
- SIGINT or SIGTERM (through :mod:`fnn._interrupt`) stop after the current
  epoch's checkpoint; every write is atomic, so a second signal or
  ``kill -9`` leaves whole files (and temporary files that the next run in
  the directory removes).

Exit codes: 0 done, 2 bad usage, data or output location (a ``ValueError``),
3 divergence, 130 (SIGINT) or 143 (SIGTERM) interrupted.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import (_checks, _fs, _resources, arch as arch_lib, checkpoint,
                 data as data_lib, stats, train)
from fnn.config import (BASE, DEFAULTS, DTYPES, RESUME_SAFE, family,  # noqa: F401 (re-exported)
                        option, parse_hidden, parse_ints, resolve_config,
                        resume_config, upgrade_config, validate_config)

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"
GRAD_STATS = "grad_stats.png"
OUTPUTS = (CHECKPOINT, METRICS, SUMMARY, CURVES, GRAD_STATS)
# What many runs add (fnn.run_many): fnn sweep's table, a seed's directory.
SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
SEED_DIR = re.compile(r"^seed-\d+$")


def _another_runs(out: str) -> list[str]:
  r"""The names in ``out`` that a run of fnn writes (any kind of run)."""
  names = set(os.listdir(out))
  return [n for n in OUTPUTS if n in names] + sorted(
      n for n in names - set(OUTPUTS)
      if n in (SWEEP_JSON, SWEEP_MD) or SEED_DIR.match(n))


def _mesh(devices, batch_size: int):
  r"""Data parallel over ``devices`` (default: every device when several)."""
  from fnn import parallel
  if devices is None and jax.device_count() == 1:
    return None
  mesh = parallel.make_mesh(devices)
  if mesh.size == 1:
    return None
  parallel.check_divisible(mesh, batch_size, "--batch-size")
  return mesh


def _optimizer_slots(name: str) -> int:
  return {"sgd": 0, "momentum": 1}.get(name, 2)


def build(config: dict, dataset: data_lib.Dataset):
  r"""Model, optimizer and step config for ``config`` on ``dataset``."""
  validate_config(config)
  n = len(dataset.x)
  if not 1 <= config["batch_size"] <= n:
    raise ValueError(f"--batch-size must be in [1, {n}] (the training set), "
                     f"got {config['batch_size']}")
  n_out = dataset.num_classes
  if config["output"] == "sigmoid" and n_out == 2 and config["loss"] == (
      "binary_cross_entropy"):
    n_out = 1
  model = build_model(config, dataset.x.shape[1], n_out)
  _check_fits(model, config, dataset)
  steps_per_epoch = n // config["batch_size"]
  decoupled = config["optimizer"] == "adamw"
  opt = train.make_optimizer(
      config["optimizer"], config["lr"], schedule=config["schedule"],
      total_steps=steps_per_epoch * config["epochs"],
      weight_decay=config["weight_decay"] if decoupled else 0.0)
  cfg = train.StepConfig(grads=config["grads"],
                         weight_decay=0.0 if decoupled else config["weight_decay"],
                         dropout=config["dropout"], dp_clip=config["dp_clip"],
                         dp_noise=config["dp_noise"],
                         dp_sampling=config["dp_sampling"],
                         compute_dtype="bfloat16" if config["dtype"] == (
                             "bfloat16") else None,
                         mesh=_mesh(config["devices"], config["batch_size"]))
  if cfg.dp_noise and not cfg.dp_clip:
    raise ValueError(f"--dp-noise {cfg.dp_noise} needs --dp-clip C > 0")
  if config["log_grad_stats"] and config["batch_size"] < 2:
    raise ValueError("--log-grad-stats needs --batch-size of at least 2")
  train.check_config(cfg)
  # Labels must fit the loss: check them once, concretely, before training.
  _checks.check_y(model, dataset.y, (n,), jnp.float32)
  _checks.check_y(model, dataset.y_test, (len(dataset.y_test),), jnp.float32)
  return model, opt, cfg


def build_model(config: dict, n_in: int, n_out: int):
  r"""The network of ``config["arch"]`` (:func:`fnn.arch.build`): an
  :class:`fnn.MLP` from ``hidden`` and ``activation`` for ``mlp``, else a
  :class:`fnn.Sequential` whose Dense and Conv1d layers use ``init``.
  Nothing is allocated.

  Raises:
    ValueError: shapes that do not chain for ``n_in`` inputs, a last dense
      layer that is not ``n_out`` wide, a bad activation or loss.
  """
  if config["arch"] == "mlp":
    return arch_lib.build("mlp", n_in, n_out,
                          hidden=parse_hidden(config["hidden"]),
                          activation=config["activation"],
                          output=config["output"], loss=config["loss"])
  return arch_lib.build(config["arch"], n_in, n_out, output=config["output"],
                        loss=config["loss"], init=config["init"])


def _check_fits(model, config, dataset) -> None:
  r"""Refuses, before any allocation, a model that cannot fit in memory."""
  _resources.check_fits(
      model, batch_size=config["batch_size"],
      dtype_bytes=8 if config["dtype"] == "float64" else 4,
      optimizer_slots=_optimizer_slots(config["optimizer"]),
      n_train=len(dataset.x), n_test=len(dataset.x_test),
      detail=f"{config['dtype']}, {config['optimizer']}")


# ---------------------------------------------------------------- progress


class _View:
  r"""Progress of a run: a tqdm bar on a terminal, else a line per tenth.

  The bar goes to stderr and fits the terminal (80 columns included): epoch
  count, elapsed time, time left and rate, and the last epoch's loss and
  test accuracy. Without a terminal, lines go to stdout every tenth of the
  run. ``--quiet``: nothing.
  """

  def __init__(self, total: int, start: int, quiet: bool,
               runs: int | None = None):
    self.total, self.start, self.quiet = total, start, quiet
    self.runs = f"{runs} runs, " if runs else ""
    self.bar = None
    self.t0 = time.perf_counter()
    if quiet or not sys.stderr.isatty():
      return
    from tqdm import tqdm
    cols = min(shutil.get_terminal_size((80, 24)).columns, 100) - 1
    self.bar = tqdm(total=total, initial=start, unit="ep", file=sys.stderr,
                    ncols=max(cols, 40), desc="compiling", leave=True,
                    bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| "
                    "{elapsed}<{remaining}, {rate_fmt}{postfix}")

  def update(self, metrics: dict) -> None:
    if self.quiet:
      return
    epoch = metrics["epoch"]
    if self.bar is not None:
      self.bar.set_description_str(f"{self.runs}epoch", refresh=False)
      self.bar.set_postfix_str(
          f"loss {_fmt(metrics['train_loss'])} "
          f"{'val ' if metrics.get('split') == 'val' else ''}acc "
          f"{_fmt(metrics['test_accuracy'])}", refresh=False)
      self.bar.update(epoch - self.bar.n)
      return
    if epoch % max(1, self.total // 10) == 0 or epoch == self.total:
      done = epoch - self.start
      elapsed = time.perf_counter() - self.t0
      eta = elapsed / done * (self.total - epoch) if done else 0.0
      split = metrics.get("split", "test")
      print(f"{self.runs}epoch {epoch:4d}/{self.total}  train loss "
            f"{_fmt(metrics['train_loss'])}  {split} loss "
            f"{_fmt(metrics['test_loss'])}  {split} acc "
            f"{_fmt(metrics['test_accuracy'])}  {elapsed:.1f} s, ETA "
            f"{eta:.0f} s", flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def _fmt(v) -> str:
  return "nan" if v is None else f"{v:.4f}"


def _progress(metrics, view) -> None:
  view.update(metrics)


# ---------------------------------------------------------------- figures


def _finite_or_gap(values, positive: bool = False) -> np.ndarray:
  r"""Floats with undefined entries (None, NaN, inf, or <= 0 on a log axis)
  as NaN, which matplotlib draws as a gap."""
  v = np.array([np.nan if x is None else x for x in values], np.float64)
  bad = ~np.isfinite(v) | ((v <= 0) if positive else False)
  return np.where(bad, np.nan, v)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save_figure(path: str, fig) -> None:
  r"""Writes ``fig`` as PNG atomically and closes it, whatever happens."""
  try:
    _fs.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
  finally:
    _pyplot().close(fig)


def plot_curves(path: str, history: list[dict], title: str = "") -> None:
  r"""Loss and accuracy against epoch, written atomically as PNG."""
  _save_figure(path, curves_figure(history, title))


def curves_figure(history: list[dict], title: str = ""):
  r"""The figure of :func:`plot_curves` (train/test loss, test accuracy)."""
  plt = _pyplot()
  epochs = [h["epoch"] for h in history]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.plot(epochs, _finite_or_gap([h["train_loss"] for h in history], True),
           label="train (mean over the epoch's batches)")
  ax1.plot(epochs, _finite_or_gap([h["test_loss"] for h in history], True),
           label="test (after the epoch)")
  ax1.set_xlabel("epoch")
  ax1.set_ylabel("mean loss (log scale)")
  ax1.set_yscale("log")
  ax1.set_title("loss")
  ax1.legend()
  ax2.plot(epochs, _finite_or_gap([h["test_accuracy"] for h in history]))
  ax2.set_xlabel("epoch")
  ax2.set_ylabel("test accuracy")
  ax2.set_title("test accuracy")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def plot_grad_stats(path: str, history: list[dict], title: str = "") -> None:
  r"""Per-epoch gradient statistics (``--log-grad-stats``), atomically.

  An undefined value (a noise scale whose estimated ``|G|^2`` is not
  positive, say) is drawn as a gap, not as a plunge off the log axis.
  """
  if any("noise_scale" in h for h in history):
    _save_figure(path, grad_stats_figure(history, title))


def grad_stats_figure(history: list[dict], title: str = ""):
  r"""The figure of :func:`plot_grad_stats`."""
  plt = _pyplot()
  rows = [h for h in history if "noise_scale" in h]
  epochs = [h["epoch"] for h in rows]
  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
  ax1.plot(epochs, _finite_or_gap([h["noise_scale"] for h in rows], True))
  ax1.set_ylabel("B_simple = tr(Sigma) / |G|^2")
  ax1.set_title("gradient noise scale")
  ax2.plot(epochs, _finite_or_gap([h["grad_norm_mean"] for h in rows], True))
  ax2.set_ylabel("mean per-example gradient norm")
  ax2.set_title("per-example gradient norm")
  variances = np.array([[np.nan if v is None else v
                         for v in h["variance_per_layer"]] for h in rows],
                       np.float64)
  for l in range(variances.shape[1]):
    ax3.plot(epochs, _finite_or_gap(variances[:, l], True),
             label=f"layer {l + 1}")
  ax3.set_ylabel("summed per-example gradient variance")
  ax3.set_title("gradient variance per layer")
  ax3.legend()
  for ax in (ax1, ax2, ax3):
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


# ---------------------------------------------------------------- records


def _json_safe(v):
  r"""NaN and infinities as ``null`` (JSON has no such numbers)."""
  if isinstance(v, float):
    return v if math.isfinite(v) else None
  if isinstance(v, dict):
    return {k: _json_safe(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_json_safe(x) for x in v]
  return v


def _dumps(v, **kw) -> str:
  return json.dumps(_json_safe(v), allow_nan=False, **kw)


def _dp_summary(config: dict, n: int, steps: int) -> dict:
  r"""DP-SGD's settings and the run's privacy (RDP and PLD accountants)."""
  q = config["batch_size"] / n
  out = dict(clip=config["dp_clip"], noise_multiplier=config["dp_noise"],
             sampling=config["dp_sampling"], sample_rate=q, steps=steps,
             delta=config["dp_delta"], epsilon=None, epsilon_pld=None,
             accountant="dp-accounting RDP (Poisson-sampled Gaussian)")
  if config["dp_noise"] > 0:
    out["epsilon"] = stats.dp_epsilon(noise=config["dp_noise"],
                                      sample_rate=q, steps=steps,
                                      delta=config["dp_delta"])
    out["epsilon_pld"] = stats.dp_epsilon(
        noise=config["dp_noise"], sample_rate=q, steps=steps,
        delta=config["dp_delta"], accountant="pld")
  if config["dp_sampling"] == "shuffle":
    out["note"] = ("batches were shuffled, not Poisson-sampled: epsilon is "
                   "computed as if Poisson-sampled with the same rate, a "
                   "common approximation that can understate the privacy "
                   "loss")
  return out


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


def _git_commit() -> str | None:
  r"""The commit of the clone fnn runs from (``+dirty`` if modified)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(fnn.__file__)))
  if not os.path.isdir(os.path.join(root, ".git")):
    return None
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"],
                          capture_output=True, text=True, timeout=5)
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True,
                           text=True, timeout=5)
  except (OSError, subprocess.SubprocessError):
    return None
  if head.returncode:
    return None
  return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(started: str) -> dict:
  r"""What produced a run: versions, devices, command, times, git commit."""
  import platform
  import jaxlib
  import optax
  devices = jax.devices()
  return dict(
      fnn=fnn.__version__, jax=jax.__version__, jaxlib=jaxlib.__version__,
      optax=optax.__version__, numpy=np.__version__,
      python=platform.python_version(), platform=platform.platform(),
      backend=jax.default_backend(),
      devices=[getattr(d, "device_kind", str(d)) for d in devices],
      command=shlex.join(["fnn", *sys.argv[1:]]) if sys.argv else None,
      started=started, finished=_now(), git_commit=_git_commit())


def _summary(config, model, history, meta, n_train) -> dict:
  last = history[-1]
  seconds = sum(h.get("seconds") or 0.0 for h in history)
  steps = int(last["step"])
  summary = dict(
      dataset=config["dataset"], arch=config["arch"],
      model=model_record(model), config=config,
      test_accuracy=last["test_accuracy"], final_train_loss=last["train_loss"], epochs=int(last["epoch"]),
      steps=steps, wall_seconds=seconds,
      steps_per_second=steps / seconds if seconds > 0 else None,
      seed=config["seed"], fnn_version=fnn.__version__,
      data_fingerprint=meta.get("data"), resumed=meta.get("resumed", []),
      provenance=provenance(meta.get("started") or _now()))
  if config["dp_clip"]:
    summary["dp"] = _dp_summary(config, n_train, steps)
  return summary


def model_record(model) -> dict:
  r"""The summary's ``model``: what was trained, as JSON.

  Every network: ``description`` (:func:`fnn.arch.describe`: ``MLP
  40-512-10``, or a Sequential's layers as the spec that builds them),
  ``parameters``, ``output`` and ``loss``. An MLP adds ``sizes`` and
  ``activation`` (one name per hidden layer); a Sequential ``layers`` (one
  spec token per top-level layer), ``in_shape`` and ``shapes`` (one
  example's shape before every layer, then the output's).
  """
  out = dict(description=arch_lib.describe(model),
             parameters=_resources.footprint(model).parameters,
             output=model.output.name, loss=model.loss.name)
  if hasattr(model, "sizes"):
    out.update(sizes=list(model.sizes),
               activation=[a.name for a in model.activation])
  else:
    out.update(layers=[arch_lib.spec([l]) for l in model.layers],
               in_shape=list(model.in_shape),
               shapes=[list(s) for s in model.shapes])
  return out


def _read_metrics(path: str, upto: int) -> list[dict]:
  r"""``metrics.jsonl`` rows of epochs ``1..upto`` (runs of older fnn).

  A last line cut short by a crash is ignored; any other line that is not
  a metrics record is refused with its line number.
  """
  if not os.path.lexists(path):
    return []
  _fs.check_regular_file(path, "metrics file")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"cannot read {path}: {e}") from None
  lines = text.split("\n")
  rows = {}
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines):  # no newline after it: a write cut short
        continue
      raise ValueError(f"{path} line {i} is not JSON; the file was edited "
                       f"or damaged") from None
    if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
      raise ValueError(f"{path} line {i} is not a metrics record (needs an "
                       f"integer 'epoch')")
    if 1 <= row["epoch"] <= upto:
      rows[row["epoch"]] = row
  return [rows[e] for e in sorted(rows)]


def _write_metrics(path: str, history: list[dict]) -> None:
  text = "".join(_dumps(h) + "\n" for h in history)
  _fs.atomic_write_bytes(path, lambda f: f.write(text.encode()))


# ---------------------------------------------------------------- the run


# Checkpoints are written at most every SAVE_PACE times their own cost: at
# most 1/SAVE_PACE = 5% of a run goes to them (see _Run.save).
SAVE_PACE = 20


class _Stop(Exception):
  r"""Raised from the epoch callback when an interrupt was requested."""


class _Run:
  r"""One invocation of ``fnn train`` on a locked run directory."""

  def __init__(self, out: str, interrupts, quiet: bool,
               command: str = "fnn train"):
    self.out = out
    self.command = command
    self.ckpt = os.path.join(out, CHECKPOINT)
    self.metrics_path = os.path.join(out, METRICS)
    self.interrupts = interrupts
    self.quiet = quiet
    self.saved_epoch = None  # the epoch of the checkpoint on disk
    self.pending = None  # a save not yet written (see save)
    self.last_write = None  # time.monotonic() after the last write
    self.write_cost = 0.0  # seconds the last write took

  def stopping(self) -> bool:
    return self.interrupts is not None and self.interrupts.requested()

  def kept(self) -> str:
    if self.saved_epoch is None:
      return "no checkpoint was written"
    return (f"the checkpoint of epoch {self.saved_epoch} is kept in "
            f"{self.ckpt} (continue with: {self.command} --resume --out "
            f"{shlex.quote(self.out)})")

  def stopped_now(self) -> int:
    r"""A second Ctrl-C: writes the pending save (a few ms) and stops."""
    self.flush_quietly()
    return self.interrupted()

  def flush_quietly(self) -> None:
    r""":meth:`flush` on the way out: a write that fails (out of memory, a
    full disk, another interrupt) leaves the last written checkpoint, whole;
    :meth:`kept` names it."""
    try:
      self.flush()
    except (Exception, KeyboardInterrupt):  # noqa: BLE001
      pass

  def interrupted(self) -> int:
    code = self.interrupts.exit_code if self.interrupts is not None else 130
    print(f"\n{self.command}: interrupted; {self.kept()}", file=sys.stderr)
    return code

  def save(self, state, config, meta, history, *, force: bool = False
           ) -> None:
    r"""The checkpoint (with the history in its header), then the metrics.

    Paced: an epoch's save is written when ``force`` is set, or when the
    time since the last write is at least :data:`SAVE_PACE` times what that
    write took; otherwise it is kept in memory and :meth:`flush` (or the
    next write) writes it. So checkpoints take at most ``1 / SAVE_PACE``
    (5%) of a run, each one is whole, verified and durable (atomic, fsync'ed),
    and a ``kill -9`` loses at most the epochs of the last ``SAVE_PACE``
    save-times (a fraction of a second); the resumed run continues from that
    epoch bit for bit. Callers force the first, the last and an interrupted
    epoch's save, and flush before they stop for any other reason.
    """
    self.pending = (state, config, dict(meta), list(history))
    now = time.monotonic()
    if force or self.last_write is None or (
        now - self.last_write >= SAVE_PACE * self.write_cost):
      self.flush()

  def flush(self) -> None:
    r"""Writes the pending save, if any (see :meth:`save`)."""
    if self.pending is None:
      return
    state, config, meta, history = self.pending
    start = time.monotonic()
    try:
      checkpoint.save(self.ckpt, state, config, meta)
    except ValueError as e:
      raise ValueError(f"{e}; {self.kept()}") from None
    self.saved_epoch = meta["epoch"]
    self.pending = None
    _write_metrics(self.metrics_path, history)
    self.last_write = time.monotonic()
    self.write_cost = self.last_write - start


def _model_line(config, model) -> str:
  r"""``MLP 40-512-512-10 relu/softmax``, ``cnn (5,210 parameters)/softmax``
  or ``dense:64,tanh,dense:2 (322 parameters)/softmax``."""
  if hasattr(model, "sizes"):
    return (f"MLP {'-'.join(map(str, model.sizes))} "
            f"{model.activation[0].name if model.activation else ''}"
            f"/{model.output.name}")
  name = (config["arch"] if config["arch"] in arch_lib.NAMED
          else arch_lib.describe(model))
  return (f"{name} ({_resources.footprint(model).parameters:,} parameters)"
          f"/{model.output.name}")


def _title(config, model) -> str:
  return (f"{config['dataset']}: {_model_line(config, model)}, "
          f"{config['optimizer']} lr {config['lr']:g}, seed {config['seed']}")


def _finish(r: _Run, config, model, history, meta, n_train, missing_only
            ) -> tuple[list[str], dict | None]:
  r"""Writes summary.json, curves.png (and grad_stats.png).

  Returns:
    The names written and the summary (None if it was not rewritten).
  """
  written, summary = [], None
  title = _title(config, model)
  summary_path = os.path.join(r.out, SUMMARY)
  if not (missing_only and os.path.lexists(summary_path)):
    summary = _summary(config, model, history, meta, n_train)
    text = _dumps(summary, indent=2)
    _fs.atomic_write_bytes(summary_path, lambda f: f.write(text.encode()))
    written.append(SUMMARY)
  curves = os.path.join(r.out, CURVES)
  if not (missing_only and os.path.lexists(curves)):
    plot_curves(curves, history, title)
    written.append(CURVES)
  grad = os.path.join(r.out, GRAD_STATS)
  if any("noise_scale" in h for h in history) and not (
      missing_only and os.path.lexists(grad)):
    plot_grad_stats(grad, history, title)
    written.append(GRAD_STATS)
  return written, summary


def run(args: dict, out: str | None, resume: bool, quiet: bool, *,
        interrupts=None) -> int:
  r"""Runs (or resumes) a training run; returns the process exit code.

  Args:
    args: the command line's options (None: not given).
    out: the run directory (default ``runs/<dataset>-<time>``).
    resume: continue the run in ``out``.
    quiet: print only the final summary.
    interrupts: a :class:`fnn._interrupt.Interrupts` recorder; the run
      stops after the epoch in which a signal arrived.

  Raises:
    ValueError: bad options, data, checkpoint or output location (one line
      naming the value or path).
  """
  started = _now()
  if resume:
    if not out:
      raise ValueError("--resume needs --out, the run directory to continue")
    ckpt = os.path.join(out, CHECKPOINT)
    if not os.path.lexists(ckpt):
      raise ValueError(f"checkpoint {ckpt} does not exist; there is no run "
                       f"to resume in {out}")
    with _fs.RunLock(out):
      return _resume(_Run(out, interrupts, quiet), args, started)
  config = validate_config(resolve_config(args))
  return new_run(out or default_out(config), interrupts, quiet, "fnn train",
                 lambda r: _new(r, config, started))


def default_out(config: dict, suffix: str = "") -> str:
  r"""``runs/<dataset family>-<time><suffix>``."""
  return os.path.join("runs", f"{family(config['dataset'])}-"
                      f"{time.strftime('%Y%m%d-%H%M%S')}{suffix}")


def new_run(out: str, interrupts, quiet: bool, command: str, start) -> int:
  r"""Returns ``start(r)`` for a new run in ``out``, a :class:`_Run` on the
  locked directory (``fnn train``, ``--seeds`` and ``fnn sweep`` alike).

  The directory is created if needed; one that holds another run's files
  (any name :func:`_another_runs` knows) is refused before and after the
  lock is taken; stale temporary files are removed. A directory created
  here and left empty (an interrupt or a refusal before anything was
  written) is removed again.
  """
  created = not os.path.lexists(out)
  if os.path.lexists(os.path.join(out, CHECKPOINT)):
    raise ValueError(f"{out} already holds a run; continue it with --resume "
                     f"or choose another --out")
  _fs.prepare_dir(out)
  try:
    with _fs.RunLock(out):
      present = _another_runs(out)
      if CHECKPOINT in present:
        raise ValueError(f"{out} already holds a run; continue it with "
                         f"--resume or choose another --out")
      if present:
        raise ValueError(f"{out} holds {', '.join(present)} of another run "
                         f"but no checkpoint; fnn never writes into another "
                         f"run's files: choose another --out or remove them")
      _fs.remove_stale_temps(out)
      return start(_Run(out, interrupts, quiet, command))
  finally:
    if created and os.path.isdir(out) and not os.listdir(out):
      os.rmdir(out)  # interrupted or refused before writing anything


def _load_data(config):
  r"""The run's data; with ``val_fraction``, its stratified validation split
  (:func:`fnn.data.split_validation`, seed 0 whatever the run's seed, so
  that every run and sweep on a dataset validates on the same examples)."""
  from fnn import _cache
  dataset = data_lib.load(config["dataset"], key=jax.random.key(
      config["seed"] + 1), cache_dir=_cache.data_directory())
  if config.get("val_fraction"):
    dataset = data_lib.split_validation(dataset, config["val_fraction"],
                                        seed=0)
  return dataset


def _fingerprint(dataset) -> str | None:
  fp = getattr(data_lib, "fingerprint", None)
  return fp(dataset) if fp is not None else None


def _new(r: _Run, config, started) -> int:
  if not r.quiet:
    print(f"fnn train: loading {config['dataset']} ...", flush=True)
  dataset = _load_data(config)
  if r.stopping():
    return r.interrupted()
  model, opt, cfg, state = _setup(config, dataset)
  spe = len(dataset.x) // config["batch_size"]
  meta = dict(epoch=0, data=_fingerprint(dataset), steps_per_epoch=spe,
              started=started, resumed=[], history=[])
  history = []
  # Epoch 0: a run always has a last good state to go back to.
  r.save(state, config, meta, history)
  return _train(r, config, dataset, model, opt, cfg, state, meta, history, 0)


def _setup(config, dataset):
  model, opt, cfg = build(config, dataset)
  if config["dtype"] == "float64":
    jax.config.update("jax_enable_x64", True)
  dtype = jnp.dtype("float32" if config["dtype"] == "bfloat16"
                    else config["dtype"])  # the master params' dtype
  scheme = config["init"] if config["arch"] == "mlp" else None  # in layers
  state = train.init_state(model, opt, jax.random.key(config["seed"]), dtype,
                           scheme)
  return model, opt, cfg, state


def _resume(r: _Run, args, started) -> int:
  header = checkpoint.read_header(r.ckpt)
  stored = validate_config(upgrade_config(header["config"]),
                           where=f"checkpoint {r.ckpt}")
  meta = dict(header.get("meta") or {})
  config, changes = resume_config(stored, args)
  _fs.remove_stale_temps(r.out)
  dataset = _load_data(config)
  if r.stopping():
    r.saved_epoch = meta.get("epoch")
    return r.interrupted()
  fp = _fingerprint(dataset)
  if meta.get("data") and fp and meta["data"] != fp:
    raise ValueError(
        f"the data of {config['dataset']} differ from the data this run was "
        f"trained on (fingerprint {fp[:12]} vs the checkpoint's "
        f"{meta['data'][:12]}); --resume refuses to continue on other data")
  if "many" in meta:  # fnn train --seeds, fnn sweep
    from fnn import run_many
    fixed = sorted(set(changes) - {"epochs"})
    if fixed:
      raise ValueError(f"--resume of many runs may change only --epochs, not "
                       f"{option(fixed[0])} (each run's settings are stored)")
    if "epochs" in changes and config["epochs"] < meta.get("epoch", 0):
      raise ValueError(f"--epochs {config['epochs']} is below the "
                       f"checkpoint's epoch {meta['epoch']}")
    if changes:
      meta["resumed"] = list(meta.get("resumed", [])) + [dict(
          epoch=meta.get("epoch"), time=_now(), changes=changes)]
    return run_many.resume(r, config, meta, dataset, started)
  model, opt, cfg, state = _setup(config, dataset)
  state, _ = checkpoint.load(r.ckpt, state)
  spe = len(dataset.x) // config["batch_size"]
  step = int(state.step)
  start = meta.get("epoch", step // spe)
  if not isinstance(start, int) or start < 0 or step != start * spe:
    raise ValueError(
        f"checkpoint {r.ckpt} is at step {step}, which does not end epoch "
        f"{start} of {spe} steps ({len(dataset.x)} examples, batch "
        f"{config['batch_size']}); it does not belong to these data")
  r.saved_epoch = start
  if "history" in meta:  # fnn-checkpoint-2: the metrics live in the header
    history = [h for h in meta["history"] if h["epoch"] <= start]
  else:  # older runs: from metrics.jsonl
    history = _read_metrics(r.metrics_path, start)
  meta.update(epoch=start, data=meta.get("data") or fp, steps_per_epoch=spe,
              started=meta.get("started") or started, history=history)
  meta.setdefault("resumed", [])
  if "epochs" in changes and config["epochs"] < start:
    raise ValueError(f"--epochs {config['epochs']} is below the checkpoint's "
                     f"epoch {start}; a run cannot be shortened past what it "
                     f"trained (give --epochs of at least {start})")
  if start >= config["epochs"]:
    written = _finish(r, config, model, history, meta, len(dataset.x),
                      missing_only=True)[0] if history else []
    note = (f"; wrote the missing {', '.join(written)}" if written
            else "; nothing to do")
    print(f"run in {r.out} already finished {start} of {config['epochs']} "
          f"epochs{note}")
    return 0
  if changes:
    meta["resumed"] = meta["resumed"] + [dict(epoch=start, time=_now(),
                                              changes=changes)]
    if not r.quiet:
      print("fnn train: resuming with " + ", ".join(
          f"--{k.replace('_', '-')} {v[1]} (was {v[0]})"
          for k, v in changes.items()))
  # Rewrites the metrics from the checkpoint (drops lines past it) and
  # records the changed configuration.
  r.save(state, config, meta, history)
  return _train(r, config, dataset, model, opt, cfg, state, meta, history,
                start)


def _header(r: _Run, config, dataset, model, cfg) -> None:
  devices = cfg.mesh.size if cfg.mesh is not None else 1
  print(f"fnn train: {config['dataset']} ({len(dataset.x)} train, "
        f"{len(dataset.x_test)} test, {dataset.num_classes} classes) -> "
        f"{r.out}")
  if hasattr(model, "sizes"):  # as before --arch
    what = (f"MLP {'-'.join(map(str, model.sizes))} "
            f"{config['activation']}/{config['output']}")
  else:
    if config["arch"] in arch_lib.NAMED:  # a spec is on the line below
      print(f"  {config['arch']}: {arch_lib.describe(model)}")
    print("  shapes " + " -> ".join("x".join(map(str, shape))
                                    for shape in model.shapes))
    what = _model_line(config, model)
  print(f"  {what}, {config['optimizer']} "
        f"lr {config['lr']:g} ({config['schedule']}), {config['epochs']} "
        f"epochs, batch {config['batch_size']}, seed {config['seed']}, "
        f"{config['dtype']}, {devices} {jax.default_backend()} "
        f"device{'s' if devices > 1 else ''}")
  print("  compiling the training epoch (the first epoch includes it) ...",
        flush=True)


def _train(r: _Run, config, dataset, model, opt, cfg, state, meta, history,
           start) -> int:
  if not r.quiet:
    _header(r, config, dataset, model, cfg)
  view = _View(config["epochs"], start, r.quiet)

  def on_epoch(metrics, new_state):
    metrics = _json_safe(metrics)
    history.append(metrics)
    meta.update(epoch=metrics["epoch"], history=history)
    stop = r.stopping()
    r.save(new_state, config, meta, history,
           force=stop or metrics["epoch"] == config["epochs"])
    _progress(metrics, view)
    if stop:
      raise _Stop

  try:
    try:
      train.fit(model, opt, state, dataset, epochs=config["epochs"],
                batch_size=config["batch_size"], cfg=cfg, start_epoch=start,
                callback=on_epoch, log_grad_stats=config["log_grad_stats"])
    finally:
      view.close()
  except _Stop:
    return r.interrupted()
  except KeyboardInterrupt:
    return r.stopped_now()
  except train.Diverged as e:
    r.flush()  # the last good epoch's save, if it was pending
    print(f"\nfnn train: loss became NaN or infinite in epoch {e.epoch}; kept "
          f"the last good checkpoint (epoch {r.saved_epoch}) in {r.ckpt}; try a "
          f"smaller --lr (fnn train --resume --out {shlex.quote(r.out)} --lr "
          f"{config['lr'] / 10:g})", file=sys.stderr)
    return 3
  except Exception as e:  # out of memory inside XLA: one line, not a trace
    message = _resources.resource_error_message(e)
    if message is None:
      raise
    r.flush_quietly()
    raise ValueError(f"{message}; {r.kept()}") from None
  summary = _finish(r, config, model, history, meta, len(dataset.x),
                    missing_only=False)[1]
  if "dp" in summary and summary["dp"]["epsilon"] is not None:
    print(f"DP-SGD: clip {cfg.dp_clip}, noise {cfg.dp_noise}, "
          f"{cfg.dp_sampling} sampling: epsilon "
          f"{summary['dp']['epsilon']:.3f} at delta {config['dp_delta']:g}")
  rate = summary["steps_per_second"]
  print(f"test accuracy {_fmt(summary['test_accuracy'])}, final train loss "
        f"{_fmt(summary['final_train_loss'])}, {summary['steps']} steps in "
        f"{summary['wall_seconds']:.1f} s ({rate or 0:.0f} steps/s) -> "
        f"{r.out}")
  return 0


r"""A training run on disk: configuration, outputs, resume, divergence.

Used by ``fnn train``. A run directory holds ``checkpoint.npz`` (atomic,
every epoch), ``metrics.jsonl`` (one JSON object per epoch), ``summary.json``
and ``curves.png``.
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import _checks, checkpoint, data as data_lib, stats, train

# Per-dataset defaults; the command line overrides any of them.
BASE = dict(hidden="64", activation="relu", output="softmax",
            loss="categorical_cross_entropy", init="he", optimizer="adam",
            lr=1e-3, schedule="constant", weight_decay=0.0, dropout=0.0,
            batch_size=32, epochs=30, seed=0, grads="hand", dtype="float32",
            dp_clip=0.0, dp_noise=0.0, dp_sampling="poisson", dp_delta=1e-5,
            log_grad_stats=False, devices=None)
DEFAULTS = {
    # MNIST-1D: reaches >= 0.73 test accuracy (MNIST-1D paper's MLP: 0.68).
    "mnist1d": dict(hidden="512,512", optimizer="adamw", lr=1e-3,
                    schedule="cosine", weight_decay=0.05, dropout=0.2,
                    batch_size=100, epochs=200),
    "digits": dict(hidden="64", batch_size=32, epochs=40),
    "xor": dict(hidden="8", activation="tanh", lr=1e-2, epochs=50),
    "moons": dict(hidden="16,16", activation="tanh", lr=1e-2, epochs=50),
    "circles": dict(hidden="16,16", activation="tanh", lr=1e-2, epochs=50),
    "spirals": dict(hidden="64,64", activation="tanh", lr=3e-3, epochs=200),
    "mnist-idx": dict(hidden="100", batch_size=100, epochs=10),
    "npz": dict(hidden="100", batch_size=64, epochs=20),
}


# bfloat16 is mixed precision: float32 master params and optimizer state,
# forward and backward in bfloat16.
DTYPES = ("float32", "float64", "bfloat16")


def resolve_config(args: dict) -> dict:
  r"""Fills the options the user left as None from the dataset's defaults."""
  dataset = args.get("dataset") or "mnist1d"
  family = dataset.split(":", 1)[0] if ":" in dataset else dataset
  if family not in DEFAULTS:
    raise ValueError(f"unknown dataset {dataset!r}; choose from "
                     f"{list(data_lib.DATASETS)}")
  config = dict(BASE, **DEFAULTS[family], dataset=dataset)
  for k, v in args.items():
    if v is not None and k in config:
      config[k] = v
  return config


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


def parse_hidden(text) -> tuple[int, ...]:
  if text in ("", "none", "-"):
    return ()
  return parse_ints(text, "--hidden", "512,512")


def parse_ints(text, what: str, example: str) -> tuple[int, ...]:
  r"""``"4,5,3" -> (4, 5, 3)``; ValueError naming ``what`` otherwise."""
  try:
    values = tuple(int(s) for s in str(text).split(","))
  except ValueError:
    raise ValueError(f"{what} must be comma-separated ints like {example}, "
                     f"got {text!r}") from None
  if any(v < 1 for v in values):
    raise ValueError(f"{what} values must be at least 1, got {text!r}")
  return values


def build(config: dict, dataset: data_lib.Dataset):
  r"""Model, optimizer and step config for ``config`` on ``dataset``."""
  if config["epochs"] < 1:
    raise ValueError(f"--epochs must be at least 1, got {config['epochs']}")
  n = len(dataset.x)
  if not 1 <= config["batch_size"] <= n:
    raise ValueError(f"--batch-size must be in [1, {n}] (the training set), "
                     f"got {config['batch_size']}")
  if config["grads"] not in train.GRADS:
    raise ValueError(f"--grads must be one of {list(train.GRADS)}, got "
                     f"{config['grads']!r}")
  if config["dtype"] not in DTYPES:
    raise ValueError(f"--dtype must be one of {list(DTYPES)}, got "
                     f"{config['dtype']!r}")
  if config["weight_decay"] < 0:
    raise ValueError(f"--weight-decay must be >= 0, got {config['weight_decay']}")
  n_out = dataset.num_classes
  if config["output"] == "sigmoid" and n_out == 2 and config["loss"] == (
      "binary_cross_entropy"):
    n_out = 1
  model = fnn.MLP((dataset.x.shape[1], *parse_hidden(config["hidden"]), n_out),
                  activation=config["activation"], output=config["output"],
                  loss=config["loss"])
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
  if not 0 <= cfg.dropout < 1:
    raise ValueError(f"--dropout must be in [0, 1), got {cfg.dropout}")
  if cfg.dp_clip < 0 or cfg.dp_noise < 0:
    raise ValueError(f"--dp-clip and --dp-noise must be >= 0, got "
                     f"{cfg.dp_clip} and {cfg.dp_noise}")
  if cfg.dp_noise and not cfg.dp_clip:
    raise ValueError(f"--dp-noise {cfg.dp_noise} needs --dp-clip C > 0")
  if not 0 < config["dp_delta"] < 1:
    raise ValueError(f"--dp-delta must be in (0, 1), got {config['dp_delta']}")
  if config["log_grad_stats"] and config["batch_size"] < 2:
    raise ValueError("--log-grad-stats needs --batch-size of at least 2")
  train.check_config(cfg)
  # Labels must fit the loss: check them once, concretely, before training.
  _checks.check_y(model, dataset.y, (n,), jnp.float32)
  _checks.check_y(model, dataset.y_test, (len(dataset.y_test),), jnp.float32)
  return model, opt, cfg


def _progress(metrics, total, quiet, tty):
  if quiet:
    return
  line = (f"epoch {metrics['epoch']:4d}/{total}  train loss "
          f"{metrics['train_loss']:.4f}  test loss {metrics['test_loss']:.4f}  "
          f"test acc {metrics['test_accuracy']:.4f}")
  if tty:
    bar = int(30 * metrics["epoch"] / total)
    sys.stdout.write(f"\r[{'#' * bar}{'.' * (30 - bar)}] {line}")
    if metrics["epoch"] == total:
      sys.stdout.write("\n")
    sys.stdout.flush()
  elif metrics["epoch"] % max(1, total // 10) == 0 or metrics["epoch"] == total:
    print(line, flush=True)


def plot_curves(path: str, history: list[dict]) -> None:
  r"""Loss and accuracy against epoch, written atomically as PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  epochs = [h["epoch"] for h in history]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
  ax1.plot(epochs, [h["test_loss"] for h in history], label="test")
  ax1.set_xlabel("epoch")
  ax1.set_ylabel("loss")
  ax1.set_yscale("log")
  ax1.legend()
  ax2.plot(epochs, [h["test_accuracy"] for h in history])
  ax2.set_xlabel("epoch")
  ax2.set_ylabel("test accuracy")
  fig.tight_layout()
  checkpoint.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
  plt.close(fig)


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


def plot_grad_stats(path: str, history: list[dict]) -> None:
  r"""Per-epoch gradient statistics (``--log-grad-stats``), atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  epochs = [h["epoch"] for h in history if "noise_scale" in h]
  rows = [h for h in history if "noise_scale" in h]
  if not rows:
    return
  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
  ax1.plot(epochs, [h["noise_scale"] for h in rows])
  ax1.set_ylabel("gradient noise scale B_simple")
  ax2.plot(epochs, [h["grad_norm_mean"] for h in rows])
  ax2.set_ylabel("mean per-example gradient norm")
  variances = np.array([h["variance_per_layer"] for h in rows])
  for l in range(variances.shape[1]):
    ax3.plot(epochs, variances[:, l], label=f"layer {l}")
  ax3.set_ylabel("summed gradient variance")
  ax3.legend()
  for ax in (ax1, ax2, ax3):
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
  fig.tight_layout()
  checkpoint.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
  plt.close(fig)


def _read_metrics(path: str, upto: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["epoch"] <= upto]


def run(args: dict, out: str | None, resume: bool, quiet: bool) -> int:
  r"""Runs (or resumes) a training run; returns the process exit code."""
  ckpt = os.path.join(out, "checkpoint.npz") if out else None
  if resume:
    if not out:
      raise ValueError("--resume needs --out, the run directory to continue")
    config = checkpoint.read_config(ckpt)
    if args.get("epochs") is not None:
      config["epochs"] = args["epochs"]
  else:
    config = resolve_config(args)
    if out is None:
      family = config["dataset"].split(":", 1)[0]
      out = os.path.join("runs", f"{family}-{time.strftime('%Y%m%d-%H%M%S')}")
      ckpt = os.path.join(out, "checkpoint.npz")
    if os.path.exists(ckpt):
      raise ValueError(f"{out} already holds a run; continue it with --resume "
                       f"or choose another --out")
  dataset = data_lib.load(config["dataset"],
                          key=jax.random.key(config["seed"] + 1))
  model, opt, cfg = build(config, dataset)
  if config["dtype"] == "float64":
    jax.config.update("jax_enable_x64", True)
  dtype = jnp.dtype("float32" if config["dtype"] == "bfloat16"
                    else config["dtype"])  # the master params' dtype
  state = train.init_state(model, opt, jax.random.key(config["seed"]), dtype,
                           config["init"])
  start = 0
  metrics_path = os.path.join(out, "metrics.jsonl")
  history = []
  if resume:
    state, _ = checkpoint.load(ckpt, state)
    start = int(state.step) // (len(dataset.x) // config["batch_size"])
    history = _read_metrics(metrics_path, start)
    if start >= config["epochs"]:
      print(f"run in {out} already finished {start} of {config['epochs']} "
            f"epochs; nothing to do")
      return 0
    # Drop metric lines past the checkpoint (a crash between the two writes).
    checkpoint.atomic_write_bytes(metrics_path, lambda f: f.write(
        "".join(json.dumps(h) + "\n" for h in history).encode()))
  os.makedirs(out, exist_ok=True)
  if not resume:  # epoch 0: a run always has a last good state to go back to
    checkpoint.save(ckpt, state, config)
  tty = sys.stdout.isatty()
  if not quiet:
    print(f"{model}  {config['optimizer']} lr {config['lr']} "
          f"({config['schedule']}), {config['grads']} gradients -> {out}")

  def on_epoch(metrics, new_state):
    with open(metrics_path, "a") as f:
      f.write(json.dumps(metrics) + "\n")
    checkpoint.save(ckpt, new_state, config)
    history.append(metrics)
    _progress(metrics, config["epochs"], quiet, tty)

  t0 = time.perf_counter()
  try:
    state, _ = train.fit(model, opt, state, dataset, epochs=config["epochs"],
                         batch_size=config["batch_size"], cfg=cfg,
                         start_epoch=start, callback=on_epoch,
                         log_grad_stats=config["log_grad_stats"])
  except train.Diverged as e:
    print(f"\nfnn train: loss became NaN or infinite in epoch {e.epoch}; kept "
          f"the last good checkpoint (epoch {e.epoch - 1}) in {ckpt}; try a "
          f"smaller --lr", file=sys.stderr)
    return 3
  wall = time.perf_counter() - t0
  steps = int(state.step)
  summary = dict(
      dataset=config["dataset"], model=dict(
          sizes=list(model.sizes), activation=[a.name for a in model.activation],
          output=model.output.name, loss=model.loss.name),
      config=config, test_accuracy=history[-1]["test_accuracy"],
      final_train_loss=history[-1]["train_loss"], epochs=config["epochs"],
      steps=steps, wall_seconds=wall,
      steps_per_second=(steps - start * (len(dataset.x) // config["batch_size"]))
      / wall, seed=config["seed"], fnn_version=fnn.__version__)
  if cfg.dp_clip:
    summary["dp"] = _dp_summary(config, len(dataset.x), steps)
  checkpoint.atomic_write_bytes(
      os.path.join(out, "summary.json"),
      lambda f: f.write(json.dumps(summary, indent=2).encode()))
  plot_curves(os.path.join(out, "curves.png"), history)
  if config["log_grad_stats"]:
    plot_grad_stats(os.path.join(out, "grad_stats.png"), history)
  if "dp" in summary and summary["dp"]["epsilon"] is not None:
    print(f"DP-SGD: clip {cfg.dp_clip}, noise {cfg.dp_noise}, "
          f"{cfg.dp_sampling} sampling: epsilon "
          f"{summary['dp']['epsilon']:.3f} at delta {config['dp_delta']:g}")
  print(f"test accuracy {summary['test_accuracy']:.4f}, final train loss "
        f"{summary['final_train_loss']:.4f}, {steps} steps in {wall:.1f} s "
        f"({summary['steps_per_second']:.0f} steps/s) -> {out}")
  return 0

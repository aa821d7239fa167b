r"""A run's configuration: per-dataset defaults, validation, and resume rules.

A configuration is a flat JSON-able dict with exactly the keys of
:data:`BASE` plus ``dataset``. It is validated before anything is built from
it, whether it comes from the command line or from a checkpoint's header
(which a user may have edited): every value must have its type and range.

``--resume`` continues a run with its stored configuration. An option given
again on resume is either *safe to change* (:data:`RESUME_SAFE`: it changes
neither the state's shapes nor what the data and the randomness are) and is
applied, or refused with an error naming it; it is never silently ignored.
"""
from __future__ import annotations

import math
import numbers

# Per-dataset defaults; the command line overrides any of them.
BASE = dict(arch="mlp", hidden="64", activation="relu", output="softmax",
            loss="categorical_cross_entropy", init="he", optimizer="adam",
            lr=1e-3, schedule="constant", weight_decay=0.0, dropout=0.0,
            batch_size=32, epochs=30, seed=0, grads="hand", dtype="float32",
            dp_clip=0.0, dp_noise=0.0, dp_sampling="poisson", dp_delta=1e-5,
            log_grad_stats=False, devices=None, val_fraction=0.0)
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

# Seeds are 32-bit: with JAX's default (64-bit types off) a key made from a
# larger int keeps its low 32 bits only, so 0 and 2^32 would be the same run.
SEED_MAX = 2**32 - 1

# Options that --resume may change: the state's shapes, the data, the batches
# and the privacy accounting do not depend on them. ``epochs`` extends (or
# shortens) the run; with a cosine schedule it also stretches the schedule.
RESUME_SAFE = ("epochs", "lr", "weight_decay", "dropout", "grads", "devices",
               "log_grad_stats")

_CLI = {k: "--" + k.replace("_", "-") for k in (*BASE, "dataset")}

# Options that describe ``--arch mlp`` only: another architecture names its
# own layers and activations, and records None for them.
MLP_ONLY = ("hidden", "activation")

# ``--init`` when it is not given: MNIST-1D's models use PyTorch's default
# initialization (the reference runs); every other architecture the dataset's
# default.
ARCH_INIT = {"resmlp": "pytorch", "cnn": "pytorch"}


def option(name: str) -> str:
  r"""The command-line spelling of a configuration key (``--batch-size``)."""
  return _CLI.get(name, name)


def family(dataset: str) -> str:
  r"""``"npz:/a/b.npz" -> "npz"``; plain names are their own family."""
  return dataset.split(":", 1)[0] if ":" in dataset else dataset


def resolve_config(args: dict) -> dict:
  r"""Fills the options the user left as None from the dataset's defaults."""
  dataset = args.get("dataset") or "mnist1d"
  if not isinstance(dataset, str) or family(dataset) not in DEFAULTS:
    from fnn import data as data_lib
    raise ValueError(f"unknown dataset {dataset!r}; choose from "
                     f"{list(data_lib.DATASETS)}")
  config = dict(BASE, **DEFAULTS[family(dataset)], dataset=dataset)
  for k, v in args.items():
    if v is not None and k in config:
      config[k] = v
  if config["arch"] != "mlp":
    if isinstance(config["arch"], str):
      check_arch(config["arch"])  # a bad spec first, then what goes with it
    _check_mlp_only(config["arch"], args)
    config.update(dict.fromkeys(MLP_ONLY))
    if args.get("init") is None and config["arch"] in ARCH_INIT:
      config["init"] = ARCH_INIT[config["arch"]]
  return config


def _check_mlp_only(arch, values) -> None:
  r"""Refuses ``--hidden``/``--activation`` with another ``--arch``."""
  given = [k for k in MLP_ONLY if values.get(k) is not None]
  if given:
    raise ValueError(
        f"{' and '.join(option(k) for k in given)} "
        f"describe{'s' if len(given) == 1 else ''} --arch mlp only; "
        f"--arch {arch} names its own layers and activations (drop "
        f"{' and '.join(option(k) for k in given)}, or write the layers as a "
        f"spec, e.g. --arch dense:64,tanh,dense:64,tanh)")


def upgrade_config(config):
  r"""A stored configuration of an older fnn in today's form.

  Runs from before ``--arch`` had no ``arch`` key: they are ``mlp`` runs;
  runs from before ``--val-fraction`` had no validation split.
  Anything else is returned as is (:func:`validate_config` judges it).
  """
  if isinstance(config, dict) and "arch" not in config:
    config = dict(config, arch="mlp")
  if isinstance(config, dict) and "val_fraction" not in config:
    config = dict(config, val_fraction=0.0)  # before --val-fraction
  return config


def _number(config, key, *, low=None, high=None, integer=False):
  v = config[key]
  kind = "an integer" if integer else "a number"
  ok = isinstance(v, numbers.Integral if integer else numbers.Real) and (
      not isinstance(v, bool))
  if not ok:
    raise ValueError(f"{option(key)} must be {kind}, got {v!r}")
  if not integer and not math.isfinite(v):
    raise ValueError(f"{option(key)} must be a finite number, got {v!r}")
  if low is not None and v < low:
    raise ValueError(f"{option(key)} must be >= {low}, got {v!r}")
  if high is not None and v > high:
    raise ValueError(f"{option(key)} must be <= {high}, got {v!r}")


def _choice(config, key, choices):
  v = config[key]
  if not isinstance(v, str) or v not in choices:
    raise ValueError(f"{option(key)} must be one of {list(choices)}, got "
                     f"{v!r}")


def validate_config(config: dict, *, where: str = "") -> dict:
  r"""Checks every key, type and range of a run configuration.

  Registry names (activations, losses, init schemes, optimizers) are checked
  where the model and optimizer are built, with the registries' own errors;
  here they must at least be strings.

  Args:
    config: the configuration.
    where: a prefix for the error message (e.g. the checkpoint's path).

  Returns:
    ``config`` itself.

  Raises:
    ValueError: a missing or unknown key, a wrong type, a non-finite number
      or a value out of range, naming the option and the value.
  """
  pre = f"{where}: " if where else ""
  if not isinstance(config, dict):
    raise ValueError(f"{pre}the run configuration must be a JSON object, got "
                     f"{type(config).__name__}")
  want = set(BASE) | {"dataset"}
  missing, extra = sorted(want - set(config)), sorted(set(config) - want)
  if missing or extra:
    raise ValueError(f"{pre}the run configuration "
                     + (f"lacks {missing}" if missing else "")
                     + (" and " if missing and extra else "")
                     + (f"has unknown keys {extra}" if extra else ""))
  try:
    for key in ("dataset", "arch", "output", "loss", "init", "optimizer",
                "schedule"):
      if not isinstance(config[key], str):
        raise ValueError(f"{option(key)} must be a string, got "
                         f"{config[key]!r}")
    if family(config["dataset"]) not in DEFAULTS:
      raise ValueError(f"unknown dataset {config['dataset']!r}")
    check_arch(config["arch"])
    if config["arch"] == "mlp":
      for key in MLP_ONLY:
        if not isinstance(config[key], str):
          raise ValueError(f"{option(key)} must be a string, got "
                           f"{config[key]!r}")
      parse_hidden(config["hidden"])
    else:
      _check_mlp_only(config["arch"], config)
    _number(config, "lr")
    if not config["lr"] > 0:
      raise ValueError(f"--lr: learning rate must be > 0, got {config['lr']}")
    _number(config, "weight_decay", low=0)
    _number(config, "dropout")
    if not 0 <= config["dropout"] < 1:
      raise ValueError(f"--dropout must be in [0, 1), got {config['dropout']}")
    _number(config, "batch_size", integer=True)  # range: build (needs n)
    _number(config, "epochs", integer=True)
    if config["epochs"] < 1:
      raise ValueError(f"--epochs must be at least 1, got {config['epochs']}")
    _number(config, "seed", low=0, high=SEED_MAX, integer=True)
    _choice(config, "grads", ("hand", "autodiff"))
    _choice(config, "dtype", DTYPES)
    _number(config, "dp_clip")
    _number(config, "dp_noise")
    if config["dp_clip"] < 0 or config["dp_noise"] < 0:
      raise ValueError(f"--dp-clip and --dp-noise must be >= 0, got "
                       f"{config['dp_clip']} and {config['dp_noise']}")
    _choice(config, "dp_sampling", ("poisson", "shuffle"))
    _number(config, "dp_delta")
    if not 0 < config["dp_delta"] < 1:
      raise ValueError(f"--dp-delta must be in (0, 1), got "
                       f"{config['dp_delta']}")
    if not isinstance(config["log_grad_stats"], bool):
      raise ValueError(f"--log-grad-stats must be true or false, got "
                       f"{config['log_grad_stats']!r}")
    if config["devices"] is not None:
      _number(config, "devices", low=1, integer=True)
    _number(config, "val_fraction")
    if not 0 <= config["val_fraction"] < 1:
      raise ValueError(f"--val-fraction must be in (0, 1) (0: no validation "
                       f"split), got {config['val_fraction']}")
  except ValueError as e:
    raise ValueError(f"{pre}{e}") from None
  return config


def resume_config(stored: dict, args: dict) -> tuple[dict, dict]:
  r"""The configuration to resume with, and the changes made to it.

  Args:
    stored: the checkpoint's (validated) configuration.
    args: the options given on the command line (None: not given).

  Returns:
    ``(config, changes)``: the stored configuration with the safe options
    applied, and ``{key: [old, new]}`` for each option that changed.

  Raises:
    ValueError: an option that cannot change on resume differs from the
      stored one (the error names it, both values and what may change).
  """
  config, changes = dict(stored), {}
  if stored["arch"] != "mlp" and args.get("arch") in (None, stored["arch"]):
    _check_mlp_only(stored["arch"], args)
  for key, new in args.items():
    if new is None or key not in config or new == stored[key]:
      continue
    if key not in RESUME_SAFE:
      safe = ", ".join(option(k) for k in RESUME_SAFE)
      raise ValueError(
          f"{option(key)} {new!r} differs from the run's {stored[key]!r}, and "
          f"--resume cannot change it (it would change the model, the data, "
          f"the batches or the privacy accounting); start a new run with "
          f"another --out, or resume changing only {safe}")
    config[key] = new
    changes[key] = [stored[key], new]
  return validate_config(config), changes


def check_arch(arch: str) -> None:
  r"""An architecture name of :data:`fnn.arch.NAMED` or a spec that parses.

  Whether its shapes chain is known only with the data (``n_in``); the run
  checks that when it builds the model.

  Raises:
    ValueError: an unknown name or layer, bad arguments, unbalanced
      parentheses, naming the token.
  """
  from fnn import arch as arch_lib  # JAX: only when a config is validated
  if arch in arch_lib.NAMED:
    return
  try:
    arch_lib.parse_layers(arch)
  except ValueError as e:
    raise ValueError(f"--arch {arch!r}: {e}") from None


def parse_hidden(text) -> tuple[int, ...]:
  r"""``"512,512" -> (512, 512)``; ``"none"``, ``"-"`` or ``""``: no hidden."""
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

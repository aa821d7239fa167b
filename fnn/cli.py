r"""The ``fnn`` command line: ``fnn info``, ``fnn train``, ``fnn sweep``,
``fnn gradcheck``.

Exit codes: 0 done (gradcheck: every row passes); 1 a gradcheck row fails, or
a module named by ``--import`` raised (its traceback is printed); 2 bad
usage, a bad value, an OS error or exhausted resources, as one line on stderr
and never a traceback; 3 training diverged; 130 (SIGINT) or 143 (SIGTERM)
interrupted. A reader that goes away (``fnn info | head -1``) ends the
command quietly with exit code 0.

Start-up is light: ``import fnn`` is lazy, and the interrupt handler of
:mod:`fnn._interrupt` is installed before JAX is imported, so a Ctrl-C while
JAX loads stops cleanly too. No module is imported from the working
directory unless ``--import`` names it.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import shutil
import sys
import time
import traceback

from fnn import _cache, _interrupt

# What the first Ctrl-C does, per command (the second one stops at once).
INTERRUPT_MESSAGES = {
    "train": "interrupt: stopping after this epoch (press Ctrl-C again to "
             "stop now)",
    "gradcheck": "interrupt: stopping after this configuration (Ctrl-C again "
                 "to stop now)",
    "sweep": "interrupt: stopping after this epoch (press Ctrl-C again to "
             "stop now)",
}
COMMANDS = ("info", "train", "sweep", "gradcheck")
SUMMARIES = dict(
    info="versions, devices and registered names",
    train="train a network: an MLP, MNIST-1D's residual MLP or CNN, or any "
          "stack of layers (no arguments: an MLP on MNIST-1D)",
    sweep="train a grid of learning rates, weight decays, dropout rates and "
          "DP settings times seeds in one program; select by validation "
          "accuracy",
    gradcheck="check hand-derived gradients against jax.grad and finite "
              "differences")


class _Parser(argparse.ArgumentParser):
  r"""argparse with one-line usage errors (exit 2), no prefix abbreviations,
  and the nearest option or choice suggested."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("allow_abbrev", False)
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)
    self.subcommands = {}  # name -> _Parser, filled by build_parser
    # argparse takes "-inf", "-nan" and "-1e5" for options; they are values
    # (so are grids that start with one: fnn sweep --lr -1,2).
    self._negative_number_matcher = re.compile(
        r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,[^,]*)*$|"
        r"^-(inf|infinity|nan)(,[^,]*)*$",
        re.IGNORECASE)

  def error(self, message):
    message = " ".join(str(message).split())  # one line, whatever argparse says
    self.exit(2, f"{self.prog}: error: {message}\n")

  def option_strings(self) -> list[str]:
    return [s for a in self._actions for s in a.option_strings]

  def _check_value(self, action, value):
    if action.choices is None or value in action.choices:
      return
    choices = [str(c) for c in action.choices]
    hint = _did_you_mean(str(value), choices, quote=True)
    raise argparse.ArgumentError(
        action, f"invalid choice: {value!r} (choose from "
        f"{', '.join(map(repr, choices))}){hint}")

  def unrecognized(self, extras: list[str]) -> None:
    r"""The usage error for ``extras``, with the nearest options."""
    unknown = [a.split("=", 1)[0] for a in extras if a.startswith("-")]
    close = {a: _closest(a, self.option_strings()) for a in unknown}
    close = {a: c for a, c in close.items() if c}
    if len(unknown) == 1 and close:
      hint = f" (did you mean {' or '.join(close[unknown[0]])}?)"
    elif close:
      hint = " (did you mean " + ", ".join(
          f"{' or '.join(c)} for {a}" for a, c in close.items()) + "?)"
    else:
      hint = ""
    self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def _closest(word: str, candidates) -> list[str]:
  r"""Up to 3 close candidates, best first: difflib's default cutoff (0.6;
  --epoch finds --epochs, --lrr finds --lr), and within 80% of the best
  match's ratio, so that --epochs (0.93) does not bring --arch (0.62)."""
  close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
  ratio = lambda c: difflib.SequenceMatcher(None, word, c).ratio()
  best = ratio(close[0]) if close else 0.0
  return [c for c in close if ratio(c) >= 0.8 * best]


def _did_you_mean(word: str, candidates, quote: bool = False) -> str:
  close = _closest(word, candidates)
  if not close:
    return ""
  names = " or ".join(repr(c) if quote else c for c in close)
  return f" (did you mean {names}?)"


# ----------------------------------------------------------- value types


def finite_float(text: str) -> float:
  r"""An argparse type: a finite float (``nan``, ``inf`` are refused)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(
        f"must be a finite number, got {text!r}")
  return value


def positive_int(text: str) -> int:
  r"""An argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"must be a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(
        f"must be a positive integer, got {text!r}")
  return value


# Directions per leaf: each costs two loss evaluations of the whole batch;
# 10,000 already takes minutes on a small net and adds nothing a full check
# would not give.
MAX_DIRECTIONS = 10_000


# The sweep's deepest net: 32 dense layers of widths up to 9 already take
# seconds per configuration op by op.
MAX_SWEEP_DEPTH = 32


def directions(text: str) -> int:
  r"""An argparse type: directions per leaf, ``1..MAX_DIRECTIONS``."""
  value = positive_int(text)
  if value > MAX_DIRECTIONS:
    raise argparse.ArgumentTypeError(
        f"must be at most {MAX_DIRECTIONS:,} (use --mode full to perturb "
        f"every parameter), got {text!r}")
  return value


def seed(text: str) -> int:
  r"""An argparse type: a seed in ``[0, SEED_MAX]``.

  ``jax.random.key`` accepts any int64 but, with JAX's default 32-bit types,
  keeps only the low 32 bits (2**32 would repeat the run of seed 0), and
  raises ``OverflowError`` from 2**63 on; so seeds are 32-bit.
  """
  from fnn.config import SEED_MAX
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or not 0 <= value <= SEED_MAX:
    raise argparse.ArgumentTypeError(
        f"must be an integer in [0, {SEED_MAX}], got {text!r}")
  return value


def dataset(text: str) -> str:
  r"""An argparse type: a dataset name, or ``npz:PATH``/``mnist-idx:DIR``."""
  from fnn.config import DEFAULTS, family
  if family(text) not in DEFAULTS:
    from fnn.data import DATASETS
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}; choose from {', '.join(DATASETS)}"
        f"{_did_you_mean(text, list(DEFAULTS), quote=True)}")
  return text


# ----------------------------------------------------------- fnn info


def _info(args, interrupts) -> int:
  del args, interrupts
  import jax
  import fnn
  from fnn import activations
  print(f"fnn {fnn.__version__}, jax {jax.__version__}, "
        f"devices {[str(d) for d in jax.devices()]}")
  print(f"hidden activations: {', '.join(activations.hidden_activations())}")
  print(f"output activations: {', '.join(activations.output_activations())}")
  print(f"init schemes: {', '.join(fnn.INIT_SCHEMES)}")
  print("valid (output, loss) pairs:")
  for out, loss in fnn.valid_pairs():
    print(f"  {out:>10}  {loss}")
  return 0


# ----------------------------------------------------------- --import


class _UserModuleError(Exception):
  r"""A module named by ``--import`` raised: the user's bug, not usage."""

  def __init__(self, module: str):
    super().__init__(module)
    self.module = module


def _import_modules(modules: list[str]) -> None:
  r"""Imports the ``--import`` modules, the working directory on sys.path.

  The working directory is on ``sys.path`` only while these modules are
  imported; fnn and JAX are imported before, so a file in it cannot stand in
  for them.

  Raises:
    ValueError: a module that does not exist.
    _UserModuleError: a module that raised while it was imported.
  """
  if not modules:
    return
  import importlib
  from fnn import activations, losses  # noqa: F401 (JAX, before the cwd)
  cwd = os.getcwd()
  added = cwd not in sys.path
  if added:
    sys.path.insert(0, cwd)
  try:
    for module in modules:
      try:
        importlib.import_module(module)
      except ModuleNotFoundError as e:
        if e.name is not None and (module + ".").startswith(e.name + "."):
          raise ValueError(f"--import {module}: no module named {e.name!r} in "
                           f"the working directory or on sys.path") from None
        raise _UserModuleError(module) from e
      except Exception as e:  # noqa: BLE001 (any error is the module's)
        raise _UserModuleError(module) from e
  finally:
    if added:
      sys.path.remove(cwd)


def _print_user_traceback(exc: BaseException) -> None:
  r"""The traceback of ``exc`` without importlib's and this file's frames."""
  import importlib
  machinery = ("<frozen importlib", os.path.dirname(importlib.__file__))
  tb = traceback.TracebackException.from_exception(exc)
  tb.stack = traceback.StackSummary.from_list(
      [f for f in tb.stack if f.filename != __file__
       and not f.filename.startswith(machinery)])
  sys.stderr.write("".join(tb.format()))


# ----------------------------------------------------------- fnn train


def _run_settings():
  from fnn import config
  return config


def _defaults_table() -> str:
  r"""The per-dataset defaults as flags, generated from ``fnn.config``."""
  import textwrap
  config = _run_settings()
  keys = [k for k in config.BASE
          if any(k in d for d in config.DEFAULTS.values())]
  width = max(map(len, config.DEFAULTS)) + 2
  lines = ["defaults that depend on --dataset (the others are the same for "
           "every dataset):"]
  for name, overrides in config.DEFAULTS.items():
    values = dict(config.BASE, **overrides)
    # "\0" holds each flag to its value while the line is wrapped.
    flags = " ".join(f"{config.option(k)}\0{_show(values[k])}" for k in keys)
    lines += [line.replace("\0", " ") for line in textwrap.wrap(
        flags, 79, initial_indent=f"  {name:<{width}}",
        subsequent_indent=" " * (width + 2), break_on_hyphens=False)]
  return "\n".join(lines)


def _show(value) -> str:
  if value is None:
    return "all"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def _default(key: str) -> str:
  r"""``(default: ...)`` for a train option, per dataset when it varies."""
  config = _run_settings()
  per = {d: o[key] for d, o in config.DEFAULTS.items() if key in o}
  if per:
    first = next(iter(config.DEFAULTS))
    value = dict(config.BASE, **config.DEFAULTS[first])[key]
    return f"(default: {_show(value)} for {first}; per dataset, see below)"
  return f"(default: {_show(config.BASE[key])})"


TRAIN_OPTIONS = (
    "dataset", "arch", "hidden", "activation", "output", "loss", "init",
    "optimizer", "lr", "schedule", "weight_decay", "dropout", "batch_size",
    "epochs", "seed", "grads", "dtype", "dp_clip", "dp_noise", "dp_sampling",
    "dp_delta", "log_grad_stats", "devices", "val_fraction")


def _started(args, interrupts) -> bool:
  r"""Imports ``--import`` modules; False if interrupted meanwhile."""
  _import_modules(args.imports)
  if interrupts is not None and interrupts.requested():
    print(f"fnn {args.command}: interrupted before training started; nothing "
          f"was written", file=sys.stderr)
    return False
  return True


def _train(args, interrupts) -> int:
  from fnn import run
  if not _started(args, interrupts):
    return interrupts.exit_code
  options = {k: getattr(args, k) for k in TRAIN_OPTIONS}
  if args.seeds is not None and not args.resume:
    from fnn import run_many
    return run_many.run(options, args.out, False, args.quiet, kind="seeds",
                        seeds=args.seeds, interrupts=interrupts)
  return run.run(options, args.out, args.resume, args.quiet,
                 interrupts=interrupts)


def _sweep_runs(args, interrupts) -> int:
  from fnn import run_many
  if not _started(args, interrupts):
    return interrupts.exit_code
  options = {k: getattr(args, k) for k in TRAIN_OPTIONS}
  grid = {}
  for k in run_many.GRID:
    if options[k] is not None:
      grid[k] = run_many.parse_grid(options[k], "--" + k.replace("_", "-"))
      options[k] = None  # the grid, not one value
  if args.resume and (grid or args.seeds is not None):
    raise ValueError("--resume continues the stored grid and seeds; give "
                     "only --out (and --epochs)")
  return run_many.run(options, args.out, args.resume, args.quiet,
                      kind="sweep", seeds=args.seeds, grid=grid,
                      interrupts=interrupts)


def _one_shape(kind, option: str):
  r"""An argparse type for ``fnn sweep``'s single-valued shape options."""
  def parse(text: str):
    if "," in text:
      raise argparse.ArgumentTypeError(
          f"{text!r}: {option} changes the program's shapes, so a sweep takes "
          f"one value (run one sweep per {option})")
    return kind(text)
  parse.__name__ = kind.__name__
  return parse


def _arch_help(default: str) -> str:
  r"""``--arch``'s help, from :mod:`fnn.arch` (names and spec grammar)."""
  from fnn import arch
  return (f"{', '.join(arch.NAMED)} or a spec. mlp: --hidden and "
          f"--activation; resmlp: MNIST-1D's MLPBase (in -> 100 ReLU -> "
          f"residual [100 -> 100 ReLU] -> out); cnn: its ConvBase (three "
          f"strided Conv1d of 25 channels, ReLU, flatten, dense). A spec is "
          f"{arch.SPEC_HELP}; Dense and Conv1d layers take --init (default "
          f"pytorch for resmlp and cnn) {default}")


def _add_train(sub, name: str = "train") -> None:
  from fnn import activations, losses, model, train
  config = _run_settings()
  swept = name == "sweep"
  p = sub.add_parser(
      name, help=SUMMARIES[name],
      description=(
          "Train one network per configuration of the grid (--lr, "
          "--weight-decay, --dropout,\n--dp-clip, --dp-noise: values "
          "separated by commas) and seed, all in one\nprogram; select the "
          "configuration by validation accuracy and report its test\n"
          "accuracy. Writes sweep.md and sweep.json. Every option left out "
          "takes the\ndataset's default." if swept else
          "Train a network with hand-derived gradients. Every option "
          "left out takes\nthe dataset's default."),
      epilog=_defaults_table())
  d = _default
  grid = (lambda text: text) if swept else finite_float
  g = ((lambda key: f"(comma-separated grid) {_default(key)}") if swept
       else _default)
  p.add_argument("--dataset", type=dataset, metavar="NAME",
                 help=f"one of {', '.join(config.DEFAULTS)} (mnist-idx:DIR, "
                 f"npz:PATH) (default: mnist1d)")
  p.add_argument("--arch", metavar="ARCH", help=_arch_help(d("arch")))
  p.add_argument("--hidden", help="--arch mlp's hidden sizes, e.g. 512,512 "
                 f"('none': no hidden layer) {d('hidden')}")
  p.add_argument("--activation", metavar="NAME", help="--arch mlp's hidden "
                 f"activation: {', '.join(activations.hidden_activations())}, "
                 f"or one registered by --import {d('activation')}")
  p.add_argument("--output", metavar="NAME", help="output activation: "
                 f"{', '.join(activations.output_activations())}, or one "
                 f"registered by --import {d('output')}")
  p.add_argument("--loss", metavar="NAME", help="per-example loss: "
                 f"{', '.join(losses.LOSSES)}, or one registered by --import "
                 f"{d('loss')}")
  p.add_argument("--init", choices=list(model.INIT_SCHEMES),
                 help=f"init scheme {d('init')}")
  p.add_argument("--optimizer", choices=train.OPTIMIZERS,
                 help=f"adamw: decoupled weight decay {d('optimizer')}")
  p.add_argument("--lr", type=grid, help=f"learning rate {g('lr')}")
  p.add_argument("--schedule", choices=train.SCHEDULES,
                 help=f"learning-rate schedule {d('schedule')}")
  p.add_argument("--weight-decay", type=grid, help="L2 coefficient "
                 f"(adamw: decoupled decay); weights only {g('weight_decay')}")
  p.add_argument("--dropout", type=grid,
                 help=f"dropout rate on hidden layers {g('dropout')}")
  p.add_argument("--batch-size", type=_one_shape(positive_int, "--batch-size")
                 if swept else positive_int, metavar="N",
                 help=_default("batch_size"))
  p.add_argument("--epochs", type=positive_int, metavar="N",
                 help=f"the run's total epochs {_default('epochs')}")
  p.add_argument("--seed", type=seed, help=f"PRNG seed, 0 to "
                 f"{config.SEED_MAX} (with --seeds N: the first) "
                 f"{_default('seed')}")
  p.add_argument("--seeds", metavar="SEEDS",
                 help="train several seeds in one program: N (N seeds from "
                 "--seed), A-B or a,b,c; " + (
                     "each configuration runs every seed (default: 1, "
                     "--seed)" if swept else "writes seed-<s>/ per seed, "
                     "summary.json (mean +- std) and curves.png with a band "
                     "(default: none, one run of --seed)"))
  p.add_argument("--val-fraction", type=finite_float, metavar="F",
                 help="hold out a stratified validation split of the training "
                 "set (seed 0), reported as val_loss and val_accuracy "
                 + (f"(default: {_show(0.1)} in fnn sweep)" if swept
                    else "(default: 0, none)"))
  p.add_argument("--grads", choices=train.GRADS,
                 help=f"hand-derived or jax.grad {d('grads')}")
  p.add_argument("--dtype", choices=config.DTYPES,
                 help="bfloat16: mixed precision, float32 master params "
                 f"{d('dtype')}")
  p.add_argument("--devices", type=positive_int, metavar="N",
                 help="data parallel over the first N devices (default: all "
                 "devices when there are several)")
  p.add_argument("--dp-clip", type=grid, metavar="C",
                 help=f"DP-SGD: clip each example's gradient to norm C "
                 f"{g('dp_clip')}")
  p.add_argument("--dp-noise", type=grid, metavar="SIGMA",
                 help=f"DP-SGD: Gaussian noise multiplier (std SIGMA * C) "
                 f"{g('dp_noise')}")
  p.add_argument("--dp-sampling", choices=["poisson", "shuffle"],
                 help="DP-SGD batches; poisson is what the accountant assumes "
                 f"{d('dp_sampling')}")
  p.add_argument("--dp-delta", type=finite_float,
                 help=f"delta of the reported epsilon {d('dp_delta')}")
  p.add_argument("--log-grad-stats", action="store_true", default=None,
                 help="log per-epoch gradient statistics (noise scale, "
                 "per-example norms, per-layer variance) and plot them")
  p.add_argument("--import", dest="imports", action="append", default=[],
                 metavar="MODULE", help="import MODULE first, from the "
                 "working directory or sys.path (it may call "
                 "fnn.register_activation / register_loss); repeatable")
  p.add_argument("--out", help="run directory (default: "
                 f"runs/<dataset>-<time>{'-sweep' if swept else ''})")
  p.add_argument("--resume", action="store_true",
                 help="continue the run in --out up to --epochs")
  p.add_argument("--quiet", action="store_true",
                 help="print only the final summary")
  _cache.add_option(p)
  p.set_defaults(func=_sweep_runs if swept else _train)


# ----------------------------------------------------------- fnn gradcheck


class _Stopped(Exception):
  r"""Raised from the sweep's progress callback after an interrupt."""

  def __init__(self, done: int):
    super().__init__(done)
    self.done = done


class _Progress:
  r"""The sweep's progress on ``stream``: a tqdm bar on a terminal, a plain
  line every tenth otherwise, nothing when ``quiet``."""

  def __init__(self, total: int, stream, quiet: bool):
    self.total, self.stream, self.quiet = total, stream, quiet
    self.bar = None
    self.t0 = time.perf_counter()
    if not quiet and stream.isatty():
      from tqdm import tqdm
      # 79 columns at most: an 80-column terminal never wraps the bar.
      width = min(79, shutil.get_terminal_size((80, 24)).columns - 1)
      self.bar = tqdm(total=total, desc="gradcheck", unit="config",
                      file=stream, ncols=width, leave=True)

  def update(self, i: int) -> None:
    if self.quiet:
      return
    if self.bar is not None:
      self.bar.update(i - self.bar.n)
    elif i % max(1, self.total // 10) == 0 or i == self.total:
      elapsed = time.perf_counter() - self.t0
      left = elapsed / i * (self.total - i)
      print(f"gradcheck: {i}/{self.total} configurations ({elapsed:.0f} s, "
            f"about {left:.0f} s left)", file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _check_plot_path(path: str) -> None:
  r"""The heatmap's directory must exist and be writable, before the sweep."""
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise ValueError(f"--plot {path}: directory {directory} does not exist")
  if not os.access(directory, os.W_OK | os.X_OK):
    raise ValueError(f"--plot {path}: directory {directory} is not writable")


def _sweep(args, interrupts, dtype) -> int:
  import json
  from fnn import config, sweep as sweep_lib
  depths = config.parse_ints(args.depths, "--depths", "1,2,3,4")
  if max(depths) > MAX_SWEEP_DEPTH:
    raise ValueError(f"--depths values must be at most {MAX_SWEEP_DEPTH}, got "
                     f"{args.depths!r}")
  models = sweep_lib.sweep_models(depths)
  total = len(models)
  from fnn import _resources
  widest = max(models, key=lambda m: _resources.parameter_count(m.sizes))
  _resources.check_fits(widest.sizes, batch_size=args.batch, dtype_bytes=8,
                        optimizer_slots=4 + args.batch, n_train=args.batch,
                        n_test=0, what="gradcheck model",
                        detail="float64 references, full mode")
  progress = _Progress(total, sys.stderr, args.quiet)
  stopping = (interrupts.requested if interrupts is not None
              else lambda: False)

  def on_config(i, n, report):
    del n, report
    progress.update(i)
    if stopping():
      raise _Stopped(i)

  try:
    reports = sweep_lib.sweep(dtype, depths=depths, mode=args.mode or "full",
                              batch=args.batch, seed=args.seed,
                              progress=on_config, should_stop=stopping,
                              strict=args.strict)
    done = len(reports)
  except _Stopped as e:
    done = e.done
  finally:
    progress.close()
  if stopping():
    print(f"fnn gradcheck: interrupted after {done} of {total} "
          f"configurations", file=sys.stderr)
    return interrupts.exit_code
  rows = [sweep_lib.summary(r) for r in reports]
  if args.format == "json":
    print(json.dumps(dict(dtype=dtype.name, configurations=len(rows),
                          failed=sum(not r["passed"] for r in rows),
                          suspect=sum(r["status"] == "suspect" for r in rows),
                          strict=args.strict, rows=rows), indent=1))
  else:
    print(sweep_lib.markdown(rows) if args.format == "markdown"
          else sweep_lib.table(rows))
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("pass", "kink", "high", "suspect", "FAIL")}
    print(f"{len(rows)} configurations, {dtype.name}: " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n))
    for r in rows:
      for line in r["failures"]:
        print(f"FAIL {r['sizes']} {r['activation']} {r['output']} "
              f"{r['loss']}: {line}")
      if not args.strict:
        for line in r["suspects"]:
          print(f"SUSPECT {r['sizes']} {r['activation']} {r['output']} "
                f"{r['loss']}: {line} (fails with --strict)")
  if args.plot:
    sweep_lib.heatmap(args.plot, rows)
  return 0 if all(r["passed"] for r in rows) else 1


def _arch_model(args):
  r"""``fnn gradcheck --arch A`` (not ``mlp``): :func:`fnn.arch.build` on
  ``--sizes N_IN,N_OUT`` (default 40,10). Nothing is allocated.

  Raises:
    ValueError: bad sizes, a bad spec, ``--activation`` (the architecture
      names its own), shapes that do not chain.
  """
  from fnn import arch, config
  config.check_arch(args.arch)
  sizes = config.parse_ints(args.sizes or "40,10", "--sizes", "40,10")
  if len(sizes) != 2:
    raise ValueError(f"--sizes with --arch {args.arch} is N_IN,N_OUT (the "
                     f"architecture names its own hidden layers), got "
                     f"{args.sizes!r}")
  if args.activation is not None:
    raise ValueError(f"--activation describes --arch mlp only; --arch "
                     f"{args.arch} names its own activations")
  return arch.build(args.arch, sizes[0], sizes[1], output=args.output,
                    loss=args.loss)


def _problem(model, key, batch: int, dtype):
  r"""``(params, x, y)`` drawn from ``key``: :func:`fnn.sweep.problem` for
  an MLP; for any other network ``x: [batch, *in_shape]`` and targets that
  fit its loss, drawn the same way."""
  import jax
  from fnn import sweep as sweep_lib
  if hasattr(model, "sizes"):
    return sweep_lib.problem(model, key, batch, dtype)
  kp, kx, ky = jax.random.split(key, 3)
  n_out = model.n_out
  with jax.enable_x64(True):
    params = model.init(kp, dtype)
    x = jax.random.normal(kx, (batch, *model.in_shape), dtype)
    if model.loss.name == "categorical_cross_entropy":
      y = jax.random.randint(ky, (batch,), 0, n_out)
    elif model.loss.targets == "probability":
      y = jax.random.uniform(ky, (batch, n_out), dtype)
    else:
      y = jax.random.normal(ky, (batch, n_out), dtype)
  return params, x, y


def _gradcheck(args, interrupts) -> int:
  if args.all and args.arch != "mlp":
    raise ValueError(f"--all sweeps MLPs of every activation and depth; "
                     f"--arch {args.arch} checks one network without --all")
  if args.plot and not args.all:
    raise ValueError("--plot draws the sweep's heatmap; use it with --all")
  if args.quantities:
    _check_quantities_args(args)
  if args.plot:
    _check_plot_path(args.plot)
  import jax
  import jax.numpy as jnp
  jax.config.update("jax_enable_x64", True)  # float64 references and params
  _import_modules(args.imports)
  dtype = jnp.dtype(args.dtype)
  if args.quantities:
    return _quantities(args, interrupts)
  if args.all:
    return _sweep(args, interrupts, dtype)
  import json
  import fnn
  from fnn import _resources, config
  if args.arch == "mlp":
    net = config.parse_ints(args.sizes or "4,5,3", "--sizes", "4,5,3")
  else:
    net = _arch_model(args)
  # Refuse, before allocating, a net the checker cannot hold: float64 params,
  # the hand, jax.grad and low-dtype gradients, and in full mode (the default
  # up to 5,000 parameters) the batch's materialized per-example gradients.
  full = args.mode == "full" or (
      args.mode is None and _resources.footprint(net).parameters <= 5000)
  _resources.check_fits(net, batch_size=args.batch, dtype_bytes=8,
                        optimizer_slots=4 + (args.batch if full else 0),
                        n_train=args.batch, n_test=0, what="gradcheck model",
                        detail=f"float64 references, {args.mode or 'auto'} "
                        f"mode")
  model = net if args.arch != "mlp" else fnn.MLP(
      net, activation=args.activation or "tanh", output=args.output,
      loss=args.loss)
  key = jax.random.key(args.seed)
  params, x, y = _problem(model, key, args.batch, dtype)
  report = fnn.check_grads(model, params, x, y, mode=args.mode,
                           directions=args.directions, eps=args.eps, key=key,
                           strict=args.strict)
  if interrupts is not None and interrupts.requested():
    print("fnn gradcheck: interrupted after 0 of 1 configurations",
          file=sys.stderr)
    return interrupts.exit_code
  if args.format == "json":
    print(json.dumps(report.to_dict(), indent=1))
  elif args.format == "markdown":
    print(report.markdown())
  else:
    print(report.table())
    for line in report.failures():
      print(f"FAIL {line}")
    if not args.strict:
      for line in report.suspects():
        print(f"SUSPECT {line} (fails with --strict)")
  return 0 if report.passed else 1


def _check_quantities_args(args) -> None:
  r"""``--quantities`` compares in float64, exactly: the gradient check's
  dtype, mode and heatmap options do not apply."""
  for flag, given in (("--dtype", args.dtype != "float64"),
                      ("--mode", args.mode is not None),
                      ("--strict", args.strict), ("--plot", args.plot)):
    if given:
      raise ValueError(f"{flag} is for the gradient check; --quantities "
                       f"compares every quantity in float64")


def _quantities(args, interrupts) -> int:
  r"""``fnn gradcheck --quantities``: :func:`fnn.check_quantities` on the
  chosen network, or with ``--all`` on :func:`fnn.quantities.sweep_models`.
  Exit 1 when a row fails."""
  import json
  import jax
  import fnn
  from fnn import config, quantities
  if args.all:
    depths = config.parse_ints(args.depths, "--depths", "1,2,3,4")
    if max(depths) > MAX_SWEEP_DEPTH or min(depths) < 1:
      raise ValueError(f"--depths values must be in 1..{MAX_SWEEP_DEPTH}, "
                       f"got {args.depths!r}")
    models = quantities.sweep_models(depths)
  elif args.arch == "mlp":
    sizes = config.parse_ints(args.sizes or "4,5,3", "--sizes", "4,5,3")
    models = [fnn.MLP(sizes, activation=args.activation or "tanh",
                      output=args.output, loss=args.loss)]
  else:
    models = [_arch_model(args)]
  progress = _Progress(len(models), sys.stderr, args.quiet or not args.all)
  results = []
  try:
    for i, model in enumerate(models):
      if interrupts is not None and interrupts.requested():
        break
      key = jax.random.key(args.seed)  # as for the gradient check
      if args.all:
        key = jax.random.fold_in(key, i)
      params, x, y = _problem(model, key, args.batch, jax.numpy.float64)
      results.append((model, fnn.check_quantities(model, params, x, y,
                                                   key=key)))
      progress.update(i + 1)
  finally:
    progress.close()
  if interrupts is not None and interrupts.requested():
    print(f"fnn gradcheck: interrupted after {len(results)} of "
          f"{len(models)} configurations", file=sys.stderr)
    return interrupts.exit_code
  failed = sum(1 for _, rows in results if quantities.failures(rows))
  if args.format == "json":
    print(json.dumps(dict(configurations=len(results), failed=failed,
                          results=[dict(model=repr(m),
                                        rows=quantities.to_dicts(rows))
                                   for m, rows in results]), indent=1))
    return 1 if failed else 0
  if len(results) == 1:
    model, rows = results[0]
    print(model)
    print(quantities.markdown(rows) if args.format == "markdown"
          else quantities.format(rows))
  else:  # a sweep: one line per configuration, then the failing rows
    for model, rows in results:
      bad = quantities.failures(rows)
      print(f"{'FAIL' if bad else 'ok  '} {len(rows):3d} rows  {model}")
    print(f"{len(results)} configurations: {failed} failed")
  for model, rows in results:
    where = f" in {model}" if len(results) > 1 else ""
    for r in quantities.failures(rows):
      note = f" ({r.note})" if r.note else ""
      print(f"FAIL {r.quantity} at layer {r.layer}{where}: rel err "
            f"{r.rel_err:.3g} > tol {r.tol:.3g}{note}")
  return 1 if failed else 0


def _add_gradcheck(sub) -> None:
  from fnn import activations, arch, losses
  from fnn.config import SEED_MAX
  p = sub.add_parser(
      "gradcheck", help=SUMMARIES["gradcheck"],
      description="Check the hand-derived gradient of one configuration, or "
      "of every\nactivation x (output, loss) x depth with --all. Exit 0: all "
      "pass; 1: a row\nfails; 2: bad usage; 130: interrupted.")
  p.add_argument("--arch", default="mlp", metavar="ARCH",
                 help="the network: mlp (from --sizes and --activation), "
                 "resmlp, cnn (MNIST-1D's residual MLP and CNN, built on "
                 "--sizes N_IN,N_OUT) or a spec as for fnn train: "
                 f"{arch.SPEC_HELP}; not with --all (default: %(default)s)")
  p.add_argument("--sizes", metavar="SIZES",
                 help="layer sizes (default: 4,5,3); with another --arch, "
                 "N_IN,N_OUT (default: 40,10, MNIST-1D's)")
  p.add_argument("--activation", metavar="NAME",
                 help="--arch mlp's hidden activation: "
                 f"{', '.join(activations.hidden_activations())}, or one "
                 "registered by --import (default: tanh)")
  p.add_argument("--output", default="softmax", metavar="NAME",
                 help="output activation: "
                 f"{', '.join(activations.output_activations())}, or one "
                 "registered by --import (default: %(default)s)")
  p.add_argument("--loss", default="categorical_cross_entropy", metavar="NAME",
                 help=f"per-example loss: {', '.join(losses.LOSSES)}, or one "
                 "registered by --import (default: %(default)s)")
  p.add_argument("--batch", type=positive_int, default=6, metavar="N",
                 help="examples (default: %(default)s)")
  p.add_argument("--seed", type=seed, default=0,
                 help=f"PRNG seed, 0 to {SEED_MAX} (default: %(default)s)")
  p.add_argument("--dtype", default="float64",
                 choices=["float64", "float32", "bfloat16"],
                 help="dtype of params and the hand-derived gradient; the "
                 "references are float64 (default: %(default)s)")
  p.add_argument("--mode", choices=["full", "directional"],
                 help="full: every parameter perturbed; directional: random "
                 "directions (default: full up to 5,000 parameters)")
  p.add_argument("--directions", type=directions, default=4, metavar="N",
                 help="random directions per leaf in directional mode "
                 "(default: %(default)s)")
  p.add_argument("--eps", type=finite_float, default=1e-6,
                 help="finite-difference step, float64 (default: %(default)s)")
  p.add_argument("--all", action="store_true",
                 help="sweep every activation x valid (output, loss) x depth")
  p.add_argument("--depths", default="1,2,3,4",
                 help="depths for --all (default: %(default)s)")
  p.add_argument("--format", choices=["table", "json", "markdown"],
                 default="table", help="(default: %(default)s)")
  p.add_argument("--plot", metavar="FILE.png",
                 help="with --all: heatmap of the largest error")
  p.add_argument("--import", dest="imports", action="append", default=[],
                 metavar="MODULE", help="import MODULE first, from the "
                 "working directory or sys.path (it may call "
                 "fnn.register_activation / register_loss); repeatable")
  p.add_argument("--strict", action="store_true",
                 help="float32/bfloat16: a 'suspect' row (worse than jax.grad "
                 "in the same dtype explains, or the hand code run in float64 "
                 "is off at float64's tolerance) fails, exit 1 (see "
                 "docs/gradcheck.md: what each dtype can detect)")
  p.add_argument("--quantities", action="store_true",
                 help="check every quantity fnn derives from the factors "
                 "(GGN diagonal and trace, KFAC, Gram, gradient statistics, "
                 "DP clipping, curvature products), per layer, against float64 "
                 "brute force; with --all every activation, (output, loss) "
                 "pair and layer type (docs/curvature.md)")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  _cache.add_option(p)
  p.set_defaults(func=_gradcheck)


# ----------------------------------------------------------- main


def build_parser(commands=COMMANDS) -> _Parser:
  r"""The ``fnn`` parser.

  Args:
    commands: the subcommands whose options are added; the others are
      listed but empty. ``main`` adds only the one it runs, so ``fnn
      --help`` and ``fnn --version`` import neither JAX nor the registries.
  """
  parser = _Parser(prog="fnn", description="fnn: feedforward networks with a "
                   "hand-derived backward pass, in JAX.")
  parser.add_argument("--version", action="store_true",
                      help="print the version and exit")
  sub = parser.add_subparsers(dest="command", parser_class=_Parser)
  adders = dict(train=_add_train, gradcheck=_add_gradcheck,
                sweep=lambda sub: _add_train(sub, "sweep"))
  for name in COMMANDS:
    if name in commands and name in adders:
      adders[name](sub)
    else:  # info has no options; the others are added when they run
      p = sub.add_parser(name, help=SUMMARIES[name])
      if name == "info":
        p.set_defaults(func=_info)
    parser.subcommands[name] = sub.choices[name]
  return parser


def _parse(parser: _Parser, argv: list[str]) -> argparse.Namespace:
  args, extras = parser.parse_known_args(argv)
  if extras:
    parser.subcommands.get(args.command, parser).unrecognized(extras)
  return args


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _run_command(args, interrupts) -> int:
  prefix = f"fnn {args.command}"
  try:
    return args.func(args, interrupts)
  except _UserModuleError as e:
    _print_user_traceback(e.__cause__)
    print(f"{prefix}: error in --import {e.module} (traceback above)",
          file=sys.stderr)
    return 1
  except (ValueError, TypeError) as e:
    print(f"{prefix}: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except BrokenPipeError:
    raise
  except OSError as e:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2)
                        if f is not None)
    what = e.strerror or _one_line(e)
    print(f"{prefix}: error: {where + ': ' if where else ''}{what}",
          file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 (resources; anything else re-raised)
    from fnn._resources import resource_error_message
    message = resource_error_message(e)
    if message is None:
      raise
    print(f"{prefix}: error: {_one_line(message)}", file=sys.stderr)
    return 2


def _main(argv: list[str], command: str | None, interrupts) -> int:
  parser = build_parser((command,) if command in COMMANDS else ())
  try:
    args = _parse(parser, argv)
  except SystemExit as e:  # --help, or a usage error already printed
    return e.code if isinstance(e.code, int) else 2
  if args.version:
    from fnn import __version__
    print(f"fnn {__version__}")
    return 0
  if args.command is None:
    parser.print_help()
    return 2
  _cache.configure(args)  # commands with --no-compile-cache (_cache.add_option)
  return _run_command(args, interrupts)


def _stdout_gone() -> None:
  r"""Points stdout at /dev/null: the reader left; the exit flush is moot."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
  except (OSError, ValueError, AttributeError):  # no real stdout (a test)
    pass


def main(argv=None) -> int:
  r"""Runs ``fnn``; returns the exit code (see the module docstring)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  command = next((a for a in argv if not a.startswith("-")), None)
  interrupts = None
  if command in INTERRUPT_MESSAGES:  # before JAX is imported
    interrupts = _interrupt.install(f"fnn {command}",
                                    INTERRUPT_MESSAGES[command])
  if command in COMMANDS and command != "info":  # before JAX is imported
    _cache.quiet_old_jaxlib(argv)
  try:
    code = _main(argv, command, interrupts)
    sys.stdout.flush()  # a reader that left shows here, not at exit
    return code
  except BrokenPipeError:
    _stdout_gone()
    return 0
  except KeyboardInterrupt:
    print(f"\nfnn{' ' + command if command in COMMANDS else ''}: "
          f"interrupted", file=sys.stderr)
    return 130
  finally:
    if interrupts is not None:
      interrupts.restore()


if __name__ == "__main__":
  sys.exit(main())

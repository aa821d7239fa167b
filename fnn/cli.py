r"""The ``fnn`` command line.

Bad usage exits with code 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
  r"""argparse, but a usage error is one line and exit code 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _info(args) -> int:
  del args
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


def _train(args) -> int:
  from fnn import run
  options = {k: getattr(args, k) for k in (
      "dataset", "hidden", "activation", "output", "loss", "init", "optimizer",
      "lr", "schedule", "weight_decay", "dropout", "batch_size", "epochs",
      "seed", "grads", "dtype", "dp_clip", "dp_noise", "dp_sampling",
      "dp_delta", "log_grad_stats", "devices")}
  return run.run(options, args.out, args.resume, args.quiet)


def _add_train(sub) -> None:
  from fnn.data import DATASETS
  p = sub.add_parser(
      "train", help="train an MLP (no arguments: MNIST-1D, the default)",
      description="Train an MLP with hand-derived gradients. Every option "
      "left out takes the dataset's default (see README).")
  p.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} "
                 "(default mnist1d)")
  p.add_argument("--hidden", help="hidden sizes, e.g. 512,512 ('none': none)")
  p.add_argument("--activation", help="hidden activation")
  p.add_argument("--output", help="output activation")
  p.add_argument("--loss", help="per-example loss")
  p.add_argument("--init", help="init scheme (glorot, he, lecun, nielsen, "
                 "normal, pytorch)")
  p.add_argument("--optimizer", help="sgd, momentum, adam or adamw")
  p.add_argument("--lr", type=float, help="learning rate")
  p.add_argument("--schedule", help="constant or cosine")
  p.add_argument("--weight-decay", type=float, help="L2 coefficient (adamw: "
                 "decoupled decay); weights only")
  p.add_argument("--dropout", type=float, help="dropout rate on hidden layers")
  p.add_argument("--batch-size", type=int)
  p.add_argument("--epochs", type=int, help="the run's total epochs")
  p.add_argument("--seed", type=int)
  p.add_argument("--grads", choices=["hand", "autodiff"],
                 help="hand-derived (default) or jax.grad")
  p.add_argument("--dtype", help="float32 (default), float64, or bfloat16 "
                 "(mixed precision: float32 master params)")
  p.add_argument("--devices", type=int, metavar="N",
                 help="data parallel over the first N devices (default: all "
                 "devices when there are several)")
  p.add_argument("--dp-clip", type=float, metavar="C",
                 help="DP-SGD: clip each example's gradient to norm C")
  p.add_argument("--dp-noise", type=float, metavar="SIGMA",
                 help="DP-SGD: Gaussian noise multiplier (std SIGMA * C)")
  p.add_argument("--dp-sampling", choices=["poisson", "shuffle"],
                 help="DP-SGD batches: poisson (default; what the accountant "
                 "assumes) or shuffle")
  p.add_argument("--dp-delta", type=float,
                 help="delta of the reported epsilon (default 1e-5)")
  p.add_argument("--log-grad-stats", action="store_true", default=None,
                 help="log per-epoch gradient statistics (noise scale, "
                 "per-example norms, per-layer variance) and plot them")
  p.add_argument("--out", help="run directory (default runs/<dataset>-<time>)")
  p.add_argument("--resume", action="store_true",
                 help="continue the run in --out up to --epochs")
  p.add_argument("--quiet", action="store_true",
                 help="print only the final summary")
  p.set_defaults(func=_train)


def _progress_bar(stream):
  r"""A progress callback for the sweep: a bar on a terminal, else a line
  every tenth."""
  tty = stream.isatty()

  def show(i, n, report):
    del report
    if tty:
      done = int(30 * i / n)
      stream.write(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{n}")
      if i == n:
        stream.write("\n")
      stream.flush()
    elif i % max(1, n // 10) == 0 or i == n:
      print(f"gradcheck: {i}/{n} configurations", file=stream, flush=True)
  return show


def _gradcheck(args) -> int:
  import importlib
  import json
  import os
  import jax
  import jax.numpy as jnp
  jax.config.update("jax_enable_x64", True)  # float64 references and params
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for module in args.imports:
    try:
      importlib.import_module(module)
    except Exception as e:  # the user's module: report, never a traceback
      raise ValueError(f"--import {module}: {type(e).__name__}: {e}") from None
  import fnn
  from fnn import run, sweep as sweep_lib
  dtype = jnp.dtype(args.dtype)
  if args.plot and not args.all:
    raise ValueError("--plot draws the sweep's heatmap; use it with --all")
  if args.directions < 1:
    raise ValueError(f"--directions must be at least 1, got {args.directions}")
  if args.batch < 1:
    raise ValueError(f"--batch must be at least 1, got {args.batch}")
  if args.all:
    depths = run.parse_ints(args.depths, "--depths", "1,2,3,4")
    show = None if args.quiet else _progress_bar(sys.stderr)
    reports = sweep_lib.sweep(dtype, depths=depths, mode=args.mode or "full",
                              batch=args.batch, seed=args.seed, progress=show)
    rows = [sweep_lib.summary(r) for r in reports]
    if args.format == "json":
      print(json.dumps(dict(dtype=dtype.name, configurations=len(rows),
                            failed=sum(r["status"] == "FAIL" for r in rows),
                            rows=rows), indent=1))
    else:
      print(sweep_lib.markdown(rows) if args.format == "markdown"
            else sweep_lib.table(rows))
      counts = {s: sum(r["status"] == s for r in rows)
                for s in ("pass", "kink", "high", "FAIL")}
      print(f"{len(rows)} configurations, {dtype.name}: " + ", ".join(
          f"{n} {s}" for s, n in counts.items() if n))
      for r in rows:
        for line in r["failures"]:
          print(f"FAIL {r['sizes']} {r['activation']} {r['output']} "
                f"{r['loss']}: {line}")
    if args.plot:
      sweep_lib.heatmap(args.plot, rows)
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0
  sizes = run.parse_ints(args.sizes, "--sizes", "4,5,3")
  model = fnn.MLP(sizes, activation=args.activation, output=args.output,
                  loss=args.loss)
  key = jax.random.key(args.seed)
  params, x, y = sweep_lib.problem(model, key, args.batch, dtype)
  report = fnn.check_grads(model, params, x, y, mode=args.mode,
                           directions=args.directions, eps=args.eps, key=key)
  if args.format == "json":
    print(json.dumps(report.to_dict(), indent=1))
  elif args.format == "markdown":
    print(report.markdown())
  else:
    print(report.table())
    for line in report.failures():
      print(f"FAIL {line}")
  return 0 if report.passed else 1


def _add_gradcheck(sub) -> None:
  p = sub.add_parser(
      "gradcheck", help="check hand-derived gradients against jax.grad and "
      "finite differences",
      description="Check the hand-derived gradient of one configuration, or "
      "of every activation x (output, loss) x depth with --all. Exit 0: all "
      "pass; 1: a row fails; 2: bad usage.")
  p.add_argument("--sizes", default="4,5,3", help="layer sizes (default 4,5,3)")
  p.add_argument("--activation", default="tanh", help="hidden activation")
  p.add_argument("--output", default="softmax", help="output activation")
  p.add_argument("--loss", default="categorical_cross_entropy")
  p.add_argument("--batch", type=int, default=6, help="examples (default 6)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default="float64",
                 choices=["float64", "float32", "bfloat16"],
                 help="dtype of params and the hand-derived gradient; the "
                 "references are float64 (default float64)")
  p.add_argument("--mode", choices=["full", "directional"],
                 help="full: every parameter perturbed; directional: random "
                 "directions (default: full up to 5,000 parameters)")
  p.add_argument("--directions", type=int, default=4,
                 help="random directions per leaf in directional mode")
  p.add_argument("--eps", type=float, default=1e-6,
                 help="finite-difference step (float64; default 1e-6)")
  p.add_argument("--all", action="store_true",
                 help="sweep every activation x valid (output, loss) x depth")
  p.add_argument("--depths", default="1,2,3,4", help="depths for --all")
  p.add_argument("--format", choices=["table", "json", "markdown"],
                 default="table")
  p.add_argument("--plot", metavar="FILE.png",
                 help="with --all: heatmap of the largest error")
  p.add_argument("--import", dest="imports", action="append", default=[],
                 metavar="MODULE", help="import MODULE first (it may call "
                 "fnn.register_activation / register_loss); repeatable")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  p.set_defaults(func=_gradcheck)


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="fnn", description=__doc__.splitlines()[0])
  parser.add_argument("--version", action="store_true",
                      help="print the version and exit")
  sub = parser.add_subparsers(dest="command", parser_class=_Parser)
  info = sub.add_parser("info", help="versions, devices and registered names")
  info.set_defaults(func=_info)
  _add_train(sub)
  _add_gradcheck(sub)
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.version:
    import fnn
    print(f"fnn {fnn.__version__}")
    return 0
  if args.command is None:
    parser.print_help()
    return 2
  try:
    return args.func(args)
  except (ValueError, TypeError) as e:
    print(f"fnn {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"\nfnn {args.command}: interrupted; the last epoch's checkpoint is "
          f"kept (continue with --resume)", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())

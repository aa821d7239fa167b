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
  print(f"hidden activations: {', '.join(activations.HIDDEN_ACTIVATIONS)}")
  print(f"output activations: {', '.join(activations.OUTPUT_ACTIVATIONS)}")
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
      "seed", "grads", "dtype")}
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
  p.add_argument("--dtype", help="float32 (default) or float64")
  p.add_argument("--out", help="run directory (default runs/<dataset>-<time>)")
  p.add_argument("--resume", action="store_true",
                 help="continue the run in --out up to --epochs")
  p.add_argument("--quiet", action="store_true",
                 help="print only the final summary")
  p.set_defaults(func=_train)


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="fnn", description=__doc__.splitlines()[0])
  parser.add_argument("--version", action="store_true",
                      help="print the version and exit")
  sub = parser.add_subparsers(dest="command", parser_class=_Parser)
  info = sub.add_parser("info", help="versions, devices and registered names")
  info.set_defaults(func=_info)
  _add_train(sub)
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

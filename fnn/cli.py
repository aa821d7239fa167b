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


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="fnn", description=__doc__.splitlines()[0])
  parser.add_argument("--version", action="store_true",
                      help="print the version and exit")
  sub = parser.add_subparsers(dest="command", parser_class=_Parser)
  info = sub.add_parser("info", help="versions, devices and registered names")
  info.set_defaults(func=_info)
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


if __name__ == "__main__":
  sys.exit(main())

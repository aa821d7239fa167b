"""Writes docs/cli.md from the `fnn` parser: one table per command, every
option with its help text. `tests/test_docs.py` checks the page against the
parser (an option that exists but is undocumented, or documented but gone,
fails). Run: .venv/bin/python scripts/cli_docs.py > docs/cli.md
"""
import argparse
import sys

from fnn import cli

COMMANDS = ("train", "sweep", "gradcheck", "info")


def _cell(text: str) -> str:
  return " ".join(str(text).split()).replace("|", "\\|")


def page() -> str:
  parser = cli.build_parser(COMMANDS)
  out = ["# Command line", "",
         "Generated from the parser by `scripts/cli_docs.py`; "
         "`tests/test_docs.py` checks that every option is here and that "
         "every option here exists. `fnn <command> --help` prints the same "
         "with the per-dataset defaults.", "",
         "Exit codes: 0 done; 1 a gradcheck row failed or an `--import`ed "
         "module raised; 2 bad usage, data, checkpoint or output location "
         "(one line, no traceback); 3 the loss became NaN or infinite; 130 / "
         "143 interrupted (see [runs](runs.md)).", ""]
  for name in COMMANDS:
    sub = parser.subcommands[name]
    out += [f"## `fnn {name}`", "", _cell(cli.SUMMARIES[name]) + ".", ""]
    actions = [a for a in sub._actions
               if not isinstance(a, argparse._HelpAction)]
    if not actions:
      out += ["No options.", ""]
      continue
    out += ["| option | what it does |", "|---|---|"]
    for a in actions:
      flags = ", ".join(f"`{s}`" for s in a.option_strings)
      metavar = "" if a.nargs == 0 else (
          f" `{a.metavar}`" if a.metavar else
          (f" `{{{','.join(map(str, a.choices))}}}`" if a.choices else
           f" `{a.dest.upper()}`"))
      out.append(f"| {flags}{metavar} | {_cell(a.help or '')} |")
    out.append("")
    if name == "train":  # "per dataset, see below"
      out += ["```text", cli._defaults_table(), "```", ""]
  return "\n".join(out)


if __name__ == "__main__":
  sys.stdout.write(page())

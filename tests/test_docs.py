"""Every ```python block of docs/*.md runs.

The blocks of one file run in order in one namespace (a fresh module), so a
page can build on its earlier blocks. A block preceded by a line
``<!-- no-test -->`` is skipped (for one that truly cannot run here);
shell commands belong in ```sh blocks, which are never run.
"""
import pathlib
import re
import sys
import types

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
NO_TEST = "<!-- no-test -->"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
  r"""``[(line, code)]`` of the ```python blocks of a markdown text, without
  those preceded (blank lines aside) by ``<!-- no-test -->``."""
  out = []
  for m in _FENCE.finditer(text):
    before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
    if before.strip() != NO_TEST:
      out.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
  return out


def test_python_blocks_are_found_and_no_test_skips():
  text = ("x\n```python\na = 1\n```\n<!-- no-test -->\n```python\nboom\n```\n"
          "```sh\nls\n```\n```python\nb = a + 1\n```\n")
  assert python_blocks(text) == [(3, "a = 1\n"), (13, "b = a + 1\n")]


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_doc_python_blocks_run(page, capsys):
  path = DOCS / page
  blocks = python_blocks(path.read_text())
  if not blocks:
    pytest.skip(f"{page} has no python blocks")
  name = f"_fnn_docs_{path.stem}"
  module = types.ModuleType(name)  # dataclasses look their module up
  module.__file__ = str(path)
  sys.modules[name] = module
  try:
    for line, code in blocks:
      # Line numbers in tracebacks are the markdown file's.
      exec(compile("\n" * (line - 1) + code, str(path), "exec"),
           module.__dict__)
  finally:
    del sys.modules[name]


def test_cli_page_documents_every_option_and_only_existing_ones():
  # docs/cli.md (scripts/cli_docs.py) against the parser, both ways.
  from fnn import cli
  text = (DOCS / "cli.md").read_text()
  parser = cli.build_parser(("train", "sweep", "gradcheck", "info"))
  sections = re.split(r"^## `fnn (\w+)`$", text, flags=re.M)
  documented = dict(zip(sections[1::2], sections[2::2]))
  assert set(documented) == set(cli.COMMANDS)
  for name, body in documented.items():
    table = "\n".join(l for l in body.splitlines() if l.startswith("| `-"))
    in_doc = set(re.findall(r"`(--[a-z][a-z0-9-]*)`", table))
    exists = {s for a in parser.subcommands[name]._actions
              for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert in_doc == exists, (name, sorted(in_doc ^ exists))


def test_site_navigation_lists_every_page_and_only_existing_ones():
  # mkdocs.yml's nav (make docs) against docs/*.md, both ways.
  config = (DOCS.parent / "mkdocs.yml").read_text()
  nav = set(re.findall(r"^  - [^:\n]+: (\S+\.md)$", config, flags=re.M))
  assert nav == {p.name for p in DOCS.glob("*.md")}


@pytest.mark.slow  # ~30 s of training and checks; `make docs` runs it
def test_readme_python_blocks_run(capsys):
  # Each README block runs after the first (the API example that defines
  # model, params, x, y), in a namespace of its own.
  path = DOCS.parent / "README.md"
  blocks = python_blocks(path.read_text())
  assert len(blocks) >= 3
  first_line, first = blocks[0]
  for line, code in blocks:
    ns = {"__name__": "_fnn_readme"}
    exec(compile("\n" * (first_line - 1) + first, str(path), "exec"), ns)
    if line != first_line:
      exec(compile("\n" * (line - 1) + code, str(path), "exec"), ns)

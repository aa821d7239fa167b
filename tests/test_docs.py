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

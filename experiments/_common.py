r"""Shared pieces of the published-results experiments: seeds, tables, I/O,
figures."""
from __future__ import annotations

import json
import os
import platform

import numpy as np

from fnn import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def mean_std(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores"


def write(out: str, name: str, payload: dict, markdown: str) -> None:
  r"""Writes ``name.json`` and ``name.md`` atomically under ``out``."""
  os.makedirs(out, exist_ok=True)
  checkpoint.atomic_write_bytes(
      os.path.join(out, f"{name}.json"),
      lambda f: f.write(json.dumps(payload, indent=1).encode()))
  checkpoint.atomic_write_bytes(os.path.join(out, f"{name}.md"),
                                lambda f: f.write(markdown.encode()))


def pyplot():
  r"""``matplotlib.pyplot`` on the non-interactive Agg backend."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def gaps(values, log: bool = False) -> np.ndarray:
  r"""Floats with undefined entries as NaN, which matplotlib draws as a gap.

  Args:
    values: numbers, ``None`` where a value is undefined.
    log: also treat ``v <= 0`` as undefined (it has no place on a log axis;
      an unbiased ``|G|^2`` estimate can be negative, say).

  Returns:
    ``float64`` array of ``len(values)``; None, NaN, +-inf (and ``<= 0``
    with ``log``) are NaN.
  """
  v = np.array([np.nan if x is None else x for x in values], np.float64)
  bad = ~np.isfinite(v)
  if log:
    bad |= ~(v > 0)
  return np.where(bad, np.nan, v)


def save_figure(fig, path: str) -> None:
  r"""Writes ``fig`` as PNG atomically and closes it."""
  try:
    checkpoint.atomic_write_bytes(path,
                                  lambda f: fig.savefig(f, format="png"))
  finally:
    pyplot().close(fig)


def add_replot_flag(parser, name: str) -> None:
  r"""``--replot``: redraw ``OUT/name.png`` from ``OUT/name.json``."""
  parser.add_argument(
      "--replot", action="store_true",
      help=f"only redraw OUT/{name}.png from the results in OUT/{name}.json "
      "(the committed ones by default), without running the experiment")


def replot(out: str, name: str, plot) -> int:
  r"""Redraws ``out/name.png`` with ``plot(path, payload)`` from the payload
  in ``out/name.json``, the one the run wrote. Returns the exit status."""
  path = os.path.join(out, f"{name}.json")
  try:
    with open(path) as f:
      payload = json.load(f)
  except FileNotFoundError:
    raise SystemExit(f"--replot: {path} not found; run the experiment first")
  png = os.path.join(out, f"{name}.png")
  plot(png, payload)
  print(f"redrew {png} from {path}")
  return 0

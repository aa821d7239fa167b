r"""Shared pieces of the published-results experiments: seeds, tables, I/O."""
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


def save_figure(fig, path: str) -> None:
  checkpoint.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))

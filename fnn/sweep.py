r"""The gradient-check sweep behind ``fnn gradcheck --all``.

Every hidden activation x every valid (output, loss) pair x depth 1-4
(registered activations and losses included), one :class:`fnn.gradcheck.Report`
per configuration, and the ways to show the result: a plain table, markdown,
JSON rows and a heatmap of the largest error over (activation, output/loss).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn import activations, losses
from fnn.gradcheck import Report, check_grads
from fnn.model import MLP

SWEEP_WIDTHS = (5, 7, 3, 9)  # odd widths: a transposed weight cannot pass
SWEEP_N_OUT = 3


def targets_for(model: MLP, key, batch: int, dtype=jnp.float64):
  r"""Targets that fit the model's loss: class labels for categorical
  cross-entropy, probabilities for losses that need them, reals otherwise."""
  n_out = model.sizes[-1]
  if model.loss.name == "categorical_cross_entropy":
    return jax.random.randint(key, (batch,), 0, n_out)
  if model.loss.targets == "probability":
    return jax.random.uniform(key, (batch, n_out), dtype)
  return jax.random.normal(key, (batch, n_out), dtype)


def problem(model: MLP, key, batch: int, dtype=jnp.float64):
  r"""``(params, x, y)`` drawn from ``key`` for a gradient check."""
  kp, kx, ky = jax.random.split(key, 3)
  with jax.enable_x64(True):
    params = model.init(kp, dtype)
    x = jax.random.normal(kx, (batch, model.sizes[0]), dtype)
    return params, x, targets_for(model, ky, batch, dtype)


def sweep_models(depths=(1, 2, 3, 4), hidden=None, pairs=None) -> list[MLP]:
  r"""Every hidden activation x valid (output, loss) pair x depth.

  ``hidden`` and ``pairs`` default to everything registered (user
  registrations included); depth 1 (no hidden layer) appears once per pair.
  """
  if pairs is None:
    pairs = losses.valid_pairs(activations.output_activations())
  if hidden is None:
    hidden = activations.hidden_activations()
  models = []
  for depth in depths:
    if depth < 1:
      raise ValueError(f"depths must be >= 1, got {depth}")
    sizes = (tuple(SWEEP_WIDTHS) * depth)[:depth] + (SWEEP_N_OUT,)
    for act in (hidden if depth > 1 else hidden[:1]):
      for output, loss in pairs:
        models.append(MLP(sizes, activation=act, output=output, loss=loss))
  return models


def sweep(dtype=jnp.float64, *, depths=(1, 2, 3, 4), hidden=None, pairs=None,
          mode: str = "full", batch: int = 6, seed: int = 0, jit: bool = False,
          progress=None) -> list[Report]:
  r"""Checks every model of :func:`sweep_models`; one :class:`Report` each.

  Small configurations run op by op (``jit=False``): compiling each of
  several hundred distinct networks costs more than running it, while the
  op-by-op kernels are shared across the sweep. ``progress(i, n, report)`` is
  called after each configuration.
  """
  models = sweep_models(depths, hidden, pairs)
  reports = []
  for i, model in enumerate(models):
    key = jax.random.fold_in(jax.random.key(seed), i)
    params, x, y = problem(model, key, batch, dtype)
    reports.append(check_grads(model, params, x, y, mode=mode, jit=jit,
                               key=key))
    if progress is not None:
      progress(i + 1, len(models), reports[-1])
  return reports


def summary(report: Report) -> dict:
  r"""One configuration as a flat, JSON-able row."""
  m = report.model
  return dict(
      depth=m.num_layers, sizes=list(m.sizes),
      activation=m.activation[0].name if m.activation else "(none)",
      output=m.output.name, loss=m.loss.name, dtype=report.dtype,
      mode=report.mode, autodiff=report.worst("autodiff").scaled,
      fd=report.worst("fd").scaled,
      per_example=report.worst("per_example").scaled,
      kinks=sum(r.fd.kinks for r in report.rows), status=report.status,
      failures=report.failures())


_COLUMNS = ("depth", "activation", "output", "loss", "vs jax.grad", "vs FD",
            "per-example", "kinks", "status")


def _cells(row: dict) -> list[str]:
  return [str(row["depth"]), row["activation"], row["output"], row["loss"],
          f"{row['autodiff']:.1e}", f"{row['fd']:.1e}",
          f"{row['per_example']:.1e}", str(row["kinks"]), row["status"]]


def table(rows: list[dict]) -> str:
  r"""A plain-text table, one line per configuration."""
  cells = [list(_COLUMNS)] + [_cells(r) for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths))
                   for line in cells)


def markdown(rows: list[dict]) -> str:
  r"""A markdown table, one line per configuration."""
  lines = ["| " + " | ".join(_COLUMNS) + " |",
           "|" + "|".join(["---"] * 4 + ["---:"] * 4 + ["---"]) + "|"]
  lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
  return "\n".join(lines)


def heatmap(path: str, rows: list[dict], which: str = "autodiff") -> None:
  r"""Writes a PNG heatmap of log10 of the largest error (over depths) per
  (hidden activation, output/loss); ``which`` is ``autodiff``, ``fd`` or
  ``per_example``. Written atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from fnn import checkpoint
  acts = sorted({r["activation"] for r in rows})
  pairs = sorted({f"{r['output']}/{r['loss']}" for r in rows})
  grid = np.full((len(acts), len(pairs)), np.nan)
  for r in rows:
    i, j = acts.index(r["activation"]), pairs.index(
        f"{r['output']}/{r['loss']}")
    value = np.log10(max(r[which], 1e-18))
    grid[i, j] = value if np.isnan(grid[i, j]) else max(grid[i, j], value)
  fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(pairs)),
                                  max(4, 0.45 * len(acts))))
  im = ax.imshow(grid, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(pairs)), pairs, rotation=90, fontsize=7)
  ax.set_yticks(range(len(acts)), acts, fontsize=8)
  label = {"autodiff": "hand vs jax.grad", "fd": "hand vs finite differences",
           "per_example": "hand vs per-example reference"}[which]
  ax.set_title(f"log10 max |hand - ref| / max |ref|, {label} "
               f"(worst over depths; {rows[0]['dtype']})", fontsize=9)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  checkpoint.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
  plt.close(fig)

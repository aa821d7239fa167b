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


def targets_for(model, key, batch: int, dtype=jnp.float64):
  r"""Targets that fit the model's loss (any network): class labels for
  categorical cross-entropy, probabilities for losses that need them, reals
  otherwise."""
  n_out = model.n_out
  if model.loss.name == "categorical_cross_entropy":
    return jax.random.randint(key, (batch,), 0, n_out)
  if model.loss.targets == "probability":
    return jax.random.uniform(key, (batch, n_out), dtype)
  return jax.random.normal(key, (batch, n_out), dtype)


def problem(model, key, batch: int, dtype=jnp.float64):
  r"""``(params, x, y)`` drawn from ``key`` for a gradient check of any
  network (``x: [batch, *model.in_shape]``)."""
  kp, kx, ky = jax.random.split(key, 3)
  with jax.enable_x64(True):
    params = model.init(kp, dtype)
    x = jax.random.normal(kx, (batch,) + tuple(model.in_shape), dtype)
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
          progress=None, should_stop=None, strict: bool = False
          ) -> list[Report]:
  r"""Checks every model of :func:`sweep_models`; one :class:`Report` each.

  Small configurations run op by op (``jit=False``): compiling each of
  several hundred distinct networks costs more than running it, while the
  op-by-op kernels are shared across the sweep.

  Args:
    dtype: of the params and the hand gradient (references are float64).
    depths, hidden, pairs: as for :func:`sweep_models`.
    mode, strict: as for :func:`fnn.check_grads`.
    batch: examples per configuration.
    seed: configuration ``i`` draws its problem from
      ``fold_in(key(seed), i)``.
    jit: compile each configuration (default: op by op).
    progress: called as ``progress(i, n, report)`` after configuration ``i``
      of ``n`` (1-based).
    should_stop: called with no arguments before each configuration; when it
      returns true the sweep stops there and returns the reports done so far
      (e.g. ``fnn._interrupt``'s flag after a SIGINT).

  Returns:
    One :class:`fnn.gradcheck.Report` per configuration run, in order.
  """
  models = sweep_models(depths, hidden, pairs)
  reports = []
  for i, model in enumerate(models):
    if should_stop is not None and should_stop():
      break
    key = jax.random.fold_in(jax.random.key(seed), i)
    params, x, y = problem(model, key, batch, dtype)
    reports.append(check_grads(model, params, x, y, mode=mode, jit=jit,
                               key=key, strict=strict))
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
      kinks=sum(r.fd.kinks for r in report.rows), left_out=report.left_out,
      status=report.status, passed=report.passed,
      failures=report.failures(), suspects=report.suspects())


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
  ``per_example``. A cell whose error is exactly 0 at every depth has no
  logarithm: it is drawn grey and marked ``0`` (not clamped to a fake
  exponent). Written atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from fnn import checkpoint
  if which not in _HEAT_LABELS:
    raise ValueError(f"which must be one of {sorted(_HEAT_LABELS)}, got "
                     f"{which!r}")
  if not rows:
    raise ValueError("heatmap needs at least one row, got none")
  acts = sorted({r["activation"] for r in rows})
  pairs = sorted({f"{r['output']}/{r['loss']}" for r in rows})
  worst = np.full((len(acts), len(pairs)), np.nan)
  for r in rows:
    i, j = acts.index(r["activation"]), pairs.index(
        f"{r['output']}/{r['loss']}")
    worst[i, j] = np.nanmax([worst[i, j], r[which]])
  zero = worst == 0
  with np.errstate(divide="ignore", invalid="ignore"):
    logs = np.ma.masked_invalid(np.where(worst > 0, np.log10(worst), np.nan))
  fig, ax = plt.subplots(figsize=(max(9, 0.42 * len(pairs) + 3),
                                  max(4.5, 0.42 * len(acts) + 3)))
  # Exact zeros (and absent pairs) are masked: grey, off the colour scale.
  cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
  im = ax.imshow(logs, cmap=cmap, aspect="auto")
  for i, j in zip(*np.nonzero(zero)):
    ax.text(j, i, "0", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(len(pairs)), pairs, rotation=90, fontsize=7)
  ax.set_yticks(range(len(acts)), acts, fontsize=8)
  ax.set_xlabel("output activation / loss")
  ax.set_ylabel("hidden activation ((none): depth 1)")
  depths = sorted({r["depth"] for r in rows})
  ax.set_title(f"Hand-derived gradient in {rows[0]['dtype']} "
               f"{_HEAT_LABELS[which]}: worst over depths "
               f"{', '.join(map(str, depths))} ({len(rows)} configurations)",
               fontsize=9)
  bar = fig.colorbar(im, ax=ax)
  bar.set_label("log10 of max |hand - ref| / max |ref| (worst leaf)",
                fontsize=8)
  if zero.any():
    fig.text(0.01, 0.01, f"grey cells marked 0: the error is exactly 0 at "
             f"every depth ({int(zero.sum())} cells), off the log scale",
             fontsize=7)
  fig.tight_layout()
  checkpoint.atomic_write_bytes(path, lambda f: fig.savefig(f, format="png",
                                                            dpi=110))
  plt.close(fig)


_HEAT_LABELS = {"autodiff": "vs jax.grad in float64",
                "fd": "vs finite differences in float64",
                "per_example": "vs per-example jax.grad in float64"}


# --------------------------------------------------------------------------
# Deliberately wrong derivatives: what each dtype can detect.

MUTATION_SIZES = (3e-2, 1.5e-2, 1e-3, 1e-5, 1e-7)
_MUTATED_PAIRS = (("softmax", "categorical_cross_entropy"),
                  ("sigmoid", "binary_cross_entropy"),
                  ("identity", "squared_error"))
_LOSS_PAIRS = (("sigmoid", "binary_cross_entropy"),
               ("softmax", "categorical_cross_entropy"),
               ("identity", "half_squared_error"),
               ("tanh", "half_squared_error"),
               ("identity", "squared_error"),
               ("sigmoid", "squared_error"))


def wrong_activation(act: activations.Activation, r: float,
                     kind: str = "scale") -> activations.Activation:
  r"""``act`` with a derivative off by the relative amount ``r``: everywhere
  (``kind="scale"``: ``sigma' (1 + r)``) or only for ``z < 0``
  (``"negative"``). The factor is applied in ``z``'s dtype, so a mutation
  below that dtype's resolution (``r = 1e-3`` in bfloat16) vanishes there."""
  if kind == "scale":
    grad = lambda z, a: act.grad(z, a) * jnp.asarray(1 + r, z.dtype)
  elif kind == "negative":
    grad = lambda z, a: act.grad(z, a) * jnp.where(
        z < 0, jnp.asarray(1 + r, z.dtype), jnp.asarray(1, z.dtype))
  else:
    raise ValueError(f"kind must be 'scale' or 'negative', got {kind!r}")
  return act._replace(name=f"{act.name}~{kind}{r:g}", grad=grad, vjp=None)


def wrong_loss(loss: losses.Loss, r: float, kind: str = "scale"
               ) -> losses.Loss:
  r"""``loss`` with ``dL/da`` (and the fused ``dL/dz``) off by ``r``:
  ``(1 + r) g`` (``kind="scale"``) or ``g + r a`` (``"shift"``, a slightly
  wrong fused delta ``a - y + r a``)."""
  def bad(f):
    if f is None:
      return None
    if kind == "scale":
      return lambda *args: f(*args) * jnp.asarray(1 + r, args[-2].dtype)
    if kind == "shift":
      return lambda *args: f(*args) + jnp.asarray(r, args[-2].dtype) * args[-2]
    raise ValueError(f"kind must be 'scale' or 'shift', got {kind!r}")
  return loss._replace(name=f"{loss.name}~{kind}{r:g}", grad=bad(loss.grad),
                       delta_z=bad(loss.delta_z))


def mutations(sizes=MUTATION_SIZES) -> list[tuple[str, float, MLP]]:
  r"""``(description, r, model)``: every hidden activation's derivative
  mutated (scale, negative side) in a 5-7-3 net for three (output, loss)
  pairs, and every loss's derivative (scale, shift) in 5-7-3 tanh nets for
  six pairs (fused and not), for each relative size ``r``."""
  out = []
  for r in sizes:
    for name in activations.hidden_activations():
      act = activations.ACTIVATIONS[name]
      for kind in ("scale", "negative"):
        if kind == "negative" and name == "relu":
          continue  # relu' = 0 for z < 0: (1 + r) 0 is no mutation
        for output, loss in _MUTATED_PAIRS:
          out.append((f"activation {name} {kind}", r,
                      MLP((5, 7, 3), activation=wrong_activation(act, r, kind),
                          output=output, loss=loss)))
    for output, loss in _LOSS_PAIRS:
      for kind in ("scale", "shift"):
        out.append((f"loss {loss}/{output} {kind}", r,
                    MLP((5, 7, 3), activation="tanh", output=output,
                        loss=wrong_loss(losses.LOSSES[loss], r, kind))))
  return out


def detection(dtypes=("float64", "float32", "bfloat16"), *,
              sizes=MUTATION_SIZES, batch: int = 40, seed: int = 0,
              progress=None, should_stop=None) -> list[dict]:
  r"""Checks every wrong derivative of :func:`mutations` in every dtype.

  Returns one row per (mutation, dtype): ``status``, ``fail`` (a FAIL: exit
  1 without ``--strict``), ``reported`` (FAIL or suspect: exit 1 with
  ``--strict``), ``unexplained`` (caught by the dtype's own comparisons,
  without the float64 formula check) and ``formula`` (the float64 formula
  check is off).
  """
  cases = mutations(sizes)
  rows = []
  for i, (what, r, model) in enumerate(cases):
    if should_stop is not None and should_stop():
      break
    key = jax.random.fold_in(jax.random.key(seed), i)
    for dt in dtypes:
      params, x, y = problem(model, key, batch, jnp.dtype(dt))
      rep = check_grads(model, params, x, y, mode="full", jit=False)
      comps = [c for row in rep.rows
               for c in (row.autodiff, row.fd, row.per_example)]
      rows.append(dict(
          mutation=what, size=r, dtype=jnp.dtype(dt).name,
          status=rep.status, fail=rep.status == "FAIL",
          reported=rep.status in ("FAIL", "suspect"),
          unexplained=any(not c.explained for c in comps),
          formula=any(row.formula is not None and not row.formula.ok
                      for row in rep.rows),
          left_out=rep.left_out))
    if progress is not None:
      progress(i + 1, len(cases), rows[-1])
  return rows


def detection_table(rows: list[dict]) -> str:
  r"""Markdown: per dtype and size, the fraction of wrong derivatives that
  FAIL, that are reported (FAIL or suspect), caught by the dtype's own
  comparisons alone, and reported among those float64 FAILs."""
  f64 = {(r["mutation"], r["size"]): r["fail"] for r in rows
         if r["dtype"] == "float64"}
  lines = ["| dtype | relative error | wrong derivatives | FAIL (exit 1) | "
           "FAIL or suspect (exit 1 with --strict) | caught without the "
           "float64 formula check | reported among float64's FAILs |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
  sizes = sorted({r["size"] for r in rows}, reverse=True)
  pct = lambda k, n: f"{k}/{n} ({100 * k / n:.0f}%)" if n else "-"
  for dt in dtypes:
    for size in sizes:
      sel = [r for r in rows if r["dtype"] == dt and r["size"] == size]
      caught64 = [r for r in sel if f64.get((r["mutation"], size))]
      lines.append(
          f"| {dt} | {size:g} | {len(sel)} | "
          f"{pct(sum(r['fail'] for r in sel), len(sel))} | "
          f"{pct(sum(r['reported'] for r in sel), len(sel))} | "
          f"{pct(sum(r['unexplained'] for r in sel), len(sel))} | "
          f"{pct(sum(r['reported'] for r in caught64), len(caught64))} |")
  return "\n".join(lines)


def status_counts(reports: list[Report]) -> dict:
  r"""``{status: count}`` over the reports (every status, zeros included)."""
  from fnn.gradcheck import STATUSES
  return {s: sum(r.status == s for r in reports) for s in STATUSES}


def _main(argv=None) -> int:
  r"""``python -m fnn.sweep correct|detect``: the measurements of
  docs/gradcheck.md (the correct sweep's statuses per dtype; detection of
  deliberately wrong derivatives)."""
  import argparse
  import json
  import sys
  import time
  parser = argparse.ArgumentParser(prog="python -m fnn.sweep",
                                   description=_main.__doc__.splitlines()[0])
  parser.add_argument("what", choices=["correct", "detect"])
  parser.add_argument("--dtypes", default="float64,float32,bfloat16")
  parser.add_argument("--depths", default="1,2,3,4")
  parser.add_argument("--batch", type=int, default=40)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="write every row here")
  args = parser.parse_args(argv)
  jax.config.update("jax_enable_x64", True)
  dtypes = args.dtypes.split(",")
  t0 = time.perf_counter()
  if args.what == "detect":
    rows = detection(dtypes, batch=args.batch, seed=args.seed)
    print(detection_table(rows))
  else:
    rows = []
    for dt in dtypes:
      reports = sweep(jnp.dtype(dt), batch=args.batch, seed=args.seed,
                      depths=tuple(int(d) for d in args.depths.split(",")))
      rows += [summary(r) for r in reports]
      ratio = max((c.scaled / c.same_dtype for r in reports for row in r.rows
                   for c in (row.autodiff, row.fd, row.per_example)
                   if c.same_dtype), default=float("nan"))
      print(f"{dt}: {len(reports)} configurations, batch {args.batch}: "
            f"{status_counts(reports)}; examples left out "
            f"{sum(r.left_out for r in reports)}; largest hand / same-dtype "
            f"jax.grad error ratio {ratio:.3g}")
      for r in reports:
        for line in r.failures() + r.suspects():
          print(f"  {r.model}: {line}")
  print(f"{time.perf_counter() - t0:.0f} s, jax {jax.__version__}",
        file=sys.stderr)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(_main())

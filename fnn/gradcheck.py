r"""Gradient checks: the hand-derived gradient against three references.

:func:`check_grads` takes any network (:class:`fnn.MLP`,
:class:`fnn.Sequential` with any :mod:`fnn.layers`, user-written layer types
and factor kinds included) and compares, for every parameter leaf (one
:class:`Row` each, named by its layer and field: ``layer 0 w`` of an MLP,
``layer 3.0 scale (LayerNorm)``), the HAND-derived gradient
(:func:`fnn.value_and_grad`, in the params' dtype) with

- AUTODIFF: ``jax.grad(model.mean_loss)`` in float64;
- FD: central finite differences of ``model.mean_loss`` in float64, whatever
  the model's dtype;
- PER-EXAMPLE: each example's hand gradient against ``jax.vmap(jax.grad)``
  (full mode) or, in directional mode, each example's directional
  derivative (the layer's factor kind's ``dot``, or its ``per_example``
  gradients contracted with the direction where the kind has no ``dot``)
  against ``jax.jvp``.

Two modes. ``"full"`` perturbs every parameter (``2 P`` loss evaluations,
vectorized): for small nets. ``"directional"`` draws ``directions`` random
unit vectors per leaf and compares the difference quotient
``(L(p + h v) - L(p - h v)) / 2h`` with ``<grad, v>``: cheap for any size.

Errors, per leaf (``a`` = hand, ``b`` = reference, max over entries):

- ``max_abs = max |a - b|``;
- ``max_rel = max |a - b| / max(|a|, |b|, tiny)``, elementwise as in the
  CS231n notes (reported, not used to decide: it is large wherever an entry
  is near 0 on both sides);
- ``scaled = max |a - b| / max(max |b|, 1e-3 m)``, the error relative to the
  LEAF's largest entry; ``m = max_jk mean_i |g_i|_jk`` is the leaf's
  per-example magnitude, from the hand factors in float64: for a dense
  layer ``|a_prev|^T |delta| / B`` for ``w``, ``mean |delta|`` for ``b``
  (no per-example gradient formed); for any other factor kind its
  ``per_example`` gradients, formed a chunk of examples at a time (exact;
  a check runs on small nets). A leaf passes when
  ``max |a - b| <= rtol (max |b| + 1e-3 m)``: ``scaled <= rtol`` up to a floor
  for sums that cancel to ~0. The floor is the leaf's own, never the net's:
  a layer whose gradient is 1e-12 of the net's largest entry is checked at
  its own scale (see :data:`TOLERANCES`);
- ``cosine``: the cosine similarity of ``a`` and ``b``.

Kinks: where a finite difference moves the input of an ``Activation`` layer
with kinks (ReLU at 0; inside ``Residual`` blocks too, and the output's)
across one, the quotient measures a one-sided mix, not the derivative; those
entries (or directions) are left out of the FD error and counted, and a row
whose only disagreements sit there says ``kink``.

float32 and bfloat16. The hand gradient in that dtype carries the dtype's
rounding, which no fixed tolerance separates from a small wrong derivative
(bfloat16's own error, ~1e-2, is as large as a 1-3% mistake). So a
low-precision check asks three questions per leaf:

1. Is the hand gradient as good as the dtype can do? The YARDSTICK is
   ``jax.grad`` run in the same dtype (same forward, same rounding), both
   measured against the float64 references: for each kind of comparison
   (mean gradient, finite differences, per example) the worst scaled error
   ``jax.grad`` makes on any leaf of the net. A leaf is *explained* when its
   scaled error is at most ``EXPLAIN`` times that plus ``EXPLAIN_FLOOR u``
   (``u`` the dtype's unit roundoff). Errors are scaled per leaf, so a tiny
   layer 90% off is not explained by errors of 1e-7 elsewhere.
2. Is the hand-derived FORMULA right? The same hand code is run again in
   float64 on the same (rounded) params and data and compared with
   ``jax.grad`` at float64's tolerance: this catches exactly what a float64
   check catches, whatever the dtype.
3. Examples whose low-precision forward crossed a kink or saturated an
   activation (the derivative of an ``Activation`` layer, inside
   ``Residual`` blocks too, or of the output, by ``jax.jvp`` in the dtype,
   differs by more than half from its float64 value: a leaky-ReLU ``z``
   that rounds onto 0, a sigmoid output that rounds to exactly 1) are left
   out of EVERY comparison (counted in ``Report.left_out``): there even the
   dtype's own ``jax.grad`` is far from float64, and no tolerance is
   meaningful. (A container other than ``Residual`` runs as a whole: the
   activations inside it are not looked at.)

Statuses (``Row.status``), from best to worst:

- ``pass``: every comparison within its tolerance (float64: :data:`TOLERANCES`;
  float32/bfloat16: the dtype's expectation) and, below float64, explained
  and the float64 formula check within float64's tolerance;
- ``kink``: as ``pass``, with finite differences at a kink or examples left
  out;
- ``high`` (float32/bfloat16 only): above the dtype's expectation but
  explained (the dtype's own ``jax.grad`` is as far off) and the formula
  passes in float64: the dtype's limit, not a bug;
- ``suspect`` (float32/bfloat16 only): worse than the dtype explains, or the
  float64 formula check is above float64's tolerance, yet within
  :data:`WRONG`: a small wrong derivative (float64 would FAIL it). Reported,
  passes by default, fails with ``strict=True`` (``fnn gradcheck --strict``);
- ``FAIL``: float64 above tolerance; below float64, an unexplained error
  above :data:`WRONG` (1e-2, CS231n's "probably wrong"), or the formula off
  by more than :data:`WRONG` in float64.

What each dtype detects, measured on deliberately wrong derivatives
(``python -m fnn.sweep detect``), and the false-alarm counts of the correct
sweep: docs/gradcheck.md.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn import _checks, gradients
from fnn import layers as layer_lib
from fnn.layers import kinds as kind_lib
from fnn.model import MLP


class Tolerance(NamedTuple):
  r"""Pass iff ``max |hand - ref| <= atol + rtol * max |ref|`` (per leaf)."""
  rtol: float
  atol: float


# Normwise relative tolerances (see the module docstring), per dtype of the
# hand-derived gradient. float64: the two analytic gradients agree to ~1e-15
# (measured over the whole sweep), 1e-8 leaves room for a user's less stable
# formula and is still CS231n's "good" (< 1e-7). float32: rounding of the
# forward and backward gives ~1e-7..1e-5 on the sweep; 1e-4 is the expectation.
# bfloat16 (8-bit mantissa, eps 7.8e-3): ~1e-2 expected. Below float64 these
# only separate "pass" from "high"; whether a row is wrong is decided against
# the dtype's own jax.grad and by the float64 formula check.
TOLERANCES = {"float64": 1e-8, "float32": 1e-4, "bfloat16": 5e-2}
# Above this the gradient is wrong whatever the dtype (CS231n: > 1e-2 is
# "probably wrong") unless the dtype's own jax.grad is as far off.
WRONG = 1e-2
# The floor of every leaf's tolerance, as a fraction of the leaf's
# per-example magnitude m (times rtol): forgives sums of per-example terms
# that cancel to ~0 (float64 rounding of such a sum is ~B u m = 4e-15 m at
# batch 40, far below 1e-3 * 1e-8 m), and is the leaf's own, so a tiny layer
# is judged at its own scale.
FLOOR = 1e-3
# A low-precision leaf is "explained" by its dtype when its scaled error is
# at most EXPLAIN times the worst scaled error of jax.grad in the same dtype
# over the net (same kind of comparison), plus EXPLAIN_FLOOR unit roundoffs.
# The hand code and jax.grad round differently (the softmax VJP a (g - <g,a>)
# against autodiff's, a @ w.T summed in another order), so their worst errors
# differ by a small factor: on the correct sweep (744 configurations, batch
# 40, docs/gradcheck.md) the largest ratio was 5.3 in float32 and 3.9 in
# bfloat16. 8 leaves a margin and still flags a derivative whose error is 8x
# what the dtype itself makes. EXPLAIN_FLOOR u: an error of a few roundoffs
# is explained even where jax.grad's happens to be smaller.
EXPLAIN = 8.0
EXPLAIN_FLOOR = 4.0
# An activation's derivative in the low dtype that differs from float64's by
# more than this fraction means a kink crossing or a saturated output.
SATURATED = 0.5
# Finite differences: central, in float64. Truncation error ~ h^2 |L'''| / 6 and
# rounding ~ ulp(L) / h; h = 1e-6 (torch.autograd.gradcheck's eps) keeps the
# first below 1e-12 and FD_RTOL = 1e-6 sits far above both on the sweep. The
# absolute floor is the rounding term: FD_ROUNDING ulps of the loss over h.
FD_EPS = 1e-6
FD_RTOL = 1e-6
FD_ROUNDING = 1e-13  # ~500 ulps of float64 at 1
STATUSES = ("pass", "kink", "high", "suspect", "FAIL")  # best to worst


class Comparison(NamedTuple):
  r"""One comparison of the hand-derived values with a reference.

  ``same_dtype`` (float32/bfloat16; ``None`` in float64) is the yardstick:
  the worst scaled error of ``jax.grad`` run in the hand's dtype against the
  same reference, over every leaf of the net; ``explained`` says whether
  ``scaled <= EXPLAIN same_dtype + EXPLAIN_FLOOR u`` (``ok`` in float64).
  """
  reference: str
  max_abs: float
  max_rel: float
  scaled: float
  cosine: float
  tol: Tolerance
  ok: bool
  kinks: int = 0  # FD entries (full) or directions left out at kinks
  same_dtype: Optional[float] = None
  explained: bool = True


class Row(NamedTuple):
  r"""One parameter leaf: where it is, its field name, its checks.

  ``layer`` is the params index of the leaf's layer: for an
  :class:`fnn.MLP` the dense layer ``0 .. L-1``; for any other network its
  index in ``model.layers`` (an ``int``), or a dotted path for a layer
  nested in a container (``"2.0"``: layer 0 of the ``Residual`` block at
  index 2). ``leaf`` is the params entry's field (``w``, ``b``, ``scale``,
  ``shift``, or a user layer's own). ``layer_type`` names the layer's type
  (``"Conv1d"``; ``None`` for an MLP, whose layers are all dense).
  ``formula`` (float32/bfloat16 only) is the hand code re-run in float64
  against ``jax.grad`` in float64, at float64's tolerance.
  """
  layer: Union[int, str]
  leaf: str
  shape: tuple[int, ...]
  autodiff: Comparison
  fd: Comparison
  per_example: Comparison
  status: str  # one of STATUSES
  formula: Optional[Comparison] = None
  layer_type: Optional[str] = None

  @property
  def name(self) -> str:
    r"""``layer 0 w`` (MLP), ``layer 2.0 scale (LayerNorm)``."""
    if self.layer_type is None:
      return f"layer {self.layer} {self.leaf}"
    return f"layer {self.layer} {self.leaf} ({self.layer_type})"

  def message(self) -> str:
    r"""One line naming the hand-derived side and the reference side."""
    comps = (self.autodiff, self.fd, self.per_example)
    worst = max(comps, key=lambda c: c.scaled / max(c.tol.rtol, 1e-300))
    text = (f"{self.name} {self.shape}: {self.status}; worst: hand-derived vs "
            f"{worst.reference} (reference): max |hand - ref| "
            f"{worst.max_abs:.3g}, relative to max |ref| {worst.scaled:.3g} "
            f"(tolerance {worst.tol.rtol:.0e}), cosine {worst.cosine:.12f}")
    if worst.same_dtype is not None:
      text += f"; jax.grad in the same dtype: {worst.same_dtype:.3g}"
    unexplained = [c for c in comps
                   if not c.explained and c.same_dtype is not None]
    if unexplained:
      c = unexplained[0]
      text += (f"; worse than the dtype explains vs {c.reference}: "
               f"{c.scaled:.3g} > {EXPLAIN:g} x {c.same_dtype:.3g}")
    f = self.formula
    if f is not None and not f.ok:
      text += (f"; the hand code run in float64 is off by {f.scaled:.3g} vs "
               f"{f.reference} (float64 tolerance {f.tol.rtol:.0e})")
    if self.fd.kinks:
      text += f", {self.fd.kinks} finite differences at a kink left out"
    return text


class Report(NamedTuple):
  r"""What :func:`check_grads` found: one :class:`Row` per leaf.

  ``left_out`` counts the examples left out of every comparison because their
  low-precision forward crossed a kink or saturated (0 in float64);
  ``strict`` makes ``suspect`` rows fail.
  """
  model: Any  # fnn.MLP, fnn.Sequential, or another network
  dtype: str
  mode: str
  eps: float
  loss: float
  rows: tuple[Row, ...]
  left_out: int = 0
  strict: bool = False

  @property
  def passed(self) -> bool:
    r"""True unless a row FAILed (or, with ``strict``, is ``suspect``);
    ``kink`` and ``high`` rows pass."""
    bad = ("FAIL", "suspect") if self.strict else ("FAIL",)
    return all(r.status not in bad for r in self.rows)

  @property
  def status(self) -> str:
    r"""The worst row status: ``FAIL`` > ``suspect`` > ``high`` > ``kink``
    > ``pass``."""
    return max((r.status for r in self.rows), key=STATUSES.index)

  def worst(self, which: str = "autodiff") -> Comparison:
    r"""The comparison (``autodiff``, ``fd`` or ``per_example``) with the
    largest scaled error over the leaves."""
    return max((getattr(r, which) for r in self.rows), key=lambda c: c.scaled)

  def failures(self) -> list[str]:
    r"""Messages of the rows that make the report fail."""
    bad = ("FAIL", "suspect") if self.strict else ("FAIL",)
    return [r.message() for r in self.rows if r.status in bad]

  def suspects(self) -> list[str]:
    r"""Messages of the ``suspect`` rows (failures only with ``strict``)."""
    return [r.message() for r in self.rows if r.status == "suspect"]

  def to_dict(self) -> dict:
    r"""A JSON-able summary with every row."""
    def comp(c):
      if c is None:
        return None
      return dict(reference=c.reference, max_abs=c.max_abs, max_rel=c.max_rel,
                  scaled=c.scaled, cosine=c.cosine, rtol=c.tol.rtol,
                  atol=c.tol.atol, ok=c.ok, kinks=c.kinks,
                  same_dtype=c.same_dtype,
                  explained=c.explained)
    def row(r):
      out = dict(layer=r.layer, leaf=r.leaf, shape=list(r.shape),
                 status=r.status, autodiff=comp(r.autodiff), fd=comp(r.fd),
                 per_example=comp(r.per_example), formula=comp(r.formula))
      if r.layer_type is not None:
        out["layer_type"] = r.layer_type
      return out
    return dict(
        model=_model_dict(self.model),
        dtype=self.dtype, mode=self.mode, eps=self.eps, loss=self.loss,
        passed=self.passed, status=self.status, strict=self.strict,
        left_out=self.left_out, rows=[row(r) for r in self.rows])

  def _formula(self, r: Row) -> str:
    return "-" if r.formula is None else f"{r.formula.scaled:.2e}"

  def markdown(self) -> str:
    r"""A markdown table, one line per leaf."""
    lines = ["| leaf | shape | vs jax.grad | vs FD | per-example | cos(FD) | "
             "kinks | float64 formula | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in self.rows:
      lines.append(
          f"| {r.name} | {r.shape} | {r.autodiff.scaled:.2e} | "
          f"{r.fd.scaled:.2e} | {r.per_example.scaled:.2e} | "
          f"{r.fd.cosine:.10f} | {r.fd.kinks} | {self._formula(r)} | "
          f"{r.status} |")
    return "\n".join(lines)

  def table(self) -> str:
    r"""A plain-text table, one line per leaf."""
    wn = max([12] + [len(r.name) for r in self.rows])
    ws = max([12] + [len(str(r.shape)) for r in self.rows])
    head = (f"{'leaf':<{wn}} {'shape':<{ws}} {'vs jax.grad':>11} {'vs FD':>9} "
            f"{'per-example':>11} {'cos(FD)':>14} {'kinks':>5} "
            f"{'f64 formula':>11}  status")
    lines = [f"{self.model}  dtype {self.dtype}, mode {self.mode}, "
             f"h {self.eps:g}; errors = max |hand - ref| / max |ref|", head]
    for r in self.rows:
      lines.append(
          f"{r.name:<{wn}} {str(r.shape):<{ws}} {r.autodiff.scaled:>11.2e} "
          f"{r.fd.scaled:>9.2e} {r.per_example.scaled:>11.2e} "
          f"{r.fd.cosine:>14.10f} {r.fd.kinks:>5} {self._formula(r):>11}  "
          f"{r.status}")
    if self.dtype != "float64":
      ad = max(r.autodiff.same_dtype for r in self.rows)
      lines.append(f"jax.grad in {self.dtype} vs float64 (the yardstick): up "
                   f"to {ad:.2e}; {self.left_out} examples left out (kink "
                   f"crossed or output saturated in {self.dtype})")
    verdict = "PASSED" if self.passed else "FAILED"
    if self.status == "suspect":
      verdict += (" (strict: suspect rows fail)" if self.strict else
                  " with suspect rows (they fail with --strict)")
    lines.append(f"tolerances: jax.grad and per-example rtol "
                 f"{self.rows[0].autodiff.tol.rtol:.0e}, FD rtol "
                 f"{self.rows[0].fd.tol.rtol:.0e}; " + verdict)
    return "\n".join(lines)


def _dtype_name(dtype) -> str:
  return jnp.dtype(dtype).name


def _model_dict(model) -> dict:
  r"""The network, JSON-able: an MLP's sizes and activations, any other
  network's input shape and layers."""
  if isinstance(model, MLP):
    return dict(sizes=list(model.sizes),
                activation=[a.name for a in model.activation],
                output=model.output.name, loss=model.loss.name)
  return dict(in_shape=list(model.in_shape),
              layers=[repr(l) for l in model.layers],
              output=model.output.name, loss=model.loss.name)


def _key_name(keys) -> str:
  r"""A leaf's name inside its params entry: the field (``w``), dotted for
  nested entries; ``value`` for an entry that is one array."""
  parts = []
  for k in keys:
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return ".".join(parts) or "value"


def _leaf_names(model, params) -> list[tuple[Any, str, Optional[str]]]:
  r"""``(layer, leaf, layer_type)`` of every parameter leaf, in
  ``jax.tree.leaves(params)`` order (see :class:`Row`).

  Raises:
    ValueError: a layer with parameters but no factor kind (``kind`` is
      ``None``): the hand code has no gradient for it.
  """
  if isinstance(model, MLP):
    return [(l, leaf, None) for l in range(model.num_layers)
            for leaf in ("w", "b")]
  out = []
  for path, layer, _, entry in gradients.kind_leaves(model, params):
    where = path[0] if len(path) == 1 else ".".join(map(str, path))
    # The name the user wrote (fnn.layers.Dense's repr says "Dense(8)").
    shown = repr(layer).split("(")[0]
    name = shown if shown.isidentifier() else type(layer).__name__
    for keys, _ in jax.tree_util.tree_flatten_with_path(entry)[0]:
      out.append((where, _key_name(keys), name))
  n = len(jax.tree.leaves(params))
  if len(out) != n:
    raise ValueError(
        f"params has {n} arrays but the layers with a factor kind hold "
        f"{len(out)}: every layer with parameters needs a `kind` "
        f"(fnn.layers.kinds) that contracts its backward's factors")
  return out


def expectation(dtype) -> float:
  r"""The normwise relative error expected of a hand gradient in ``dtype``."""
  name = _dtype_name(dtype)
  if name not in TOLERANCES:
    raise ValueError(f"no gradient-check tolerance for dtype {name}; choose "
                     f"from {sorted(TOLERANCES)}")
  return TOLERANCES[name]


def unit_roundoff(dtype) -> float:
  r"""``u = eps / 2``: 1.1e-16 (float64), 6e-8 (float32), 3.9e-3 (bfloat16)."""
  return float(jnp.finfo(jnp.dtype(dtype)).eps) / 2


def _compare(reference: str, a, b, tol: Tolerance, floor: float, *,
             mask=None, ref_scale: Optional[float] = None, yard=None
             ) -> Comparison:
  r"""Compares hand ``a`` with reference ``b`` (converted to float64).

  ``ref_scale`` (default ``max |b|``) is what ``tol.rtol`` multiplies and
  what ``scaled`` divides by, never below ``floor``; ``mask`` keeps entries
  (the others sat at a kink and are only counted). ``yard``, the same
  dtype's ``jax.grad`` on the same entries, gives ``same_dtype``, its error
  scaled as ``scaled`` (:func:`_explain` then sets ``explained``).
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  c = None if yard is None else np.asarray(yard, np.float64).ravel()
  kinks = 0
  if mask is not None:
    mask = np.asarray(mask, bool).ravel()
    kinks = int(np.sum(~mask))
    a, b = a[mask], b[mask]
    c = None if c is None else c[mask]
  tiny = np.finfo(np.float64).tiny
  if a.size == 0:
    return Comparison(reference, 0.0, 0.0, 0.0, 1.0, tol, True, kinks,
                      None if c is None else 0.0, True)
  diff = np.abs(a - b)
  max_abs = float(diff.max())
  max_rel = float(np.max(diff / np.maximum(np.maximum(np.abs(a), np.abs(b)),
                                           tiny)))
  if ref_scale is None:
    ref_scale = float(np.abs(b).max())
  denominator = max(ref_scale, floor, tiny)
  scaled = max_abs / denominator
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(
      na == nb)
  ok = bool(max_abs <= tol.atol + tol.rtol * ref_scale)
  if c is None:
    return Comparison(reference, max_abs, max_rel, scaled, cosine, tol, ok,
                      kinks, None, ok)
  e_ad = float(np.abs(c - b).max())
  return Comparison(reference, max_abs, max_rel, scaled, cosine, tol, ok,
                    kinks, e_ad / denominator, True)  # explained: _explain


def _per_example(reference: str, a, b, rtol: float, m: float, yard=None
                 ) -> Comparison:
  r"""Compares ``a[i]`` with ``b[i]`` per example (each at its own scale,
  floored by the leaf's magnitude ``m``): the worst example, ``ok`` only if
  every example is, ``same_dtype`` the yardstick's worst example."""
  batch = a.shape[0]
  if batch == 0:  # every example left out
    return Comparison(reference, 0.0, 0.0, 0.0, 1.0, Tolerance(rtol, 0.0),
                      True, 0, None if yard is None else 0.0)
  a = np.asarray(a, np.float64).reshape(batch, -1)
  b = np.asarray(b, np.float64).reshape(batch, -1)
  err = np.abs(a - b).max(axis=1)  # (B,)
  top = np.abs(b).max(axis=1)
  s = np.maximum(top, m)
  denominator = np.maximum(np.maximum(top, FLOOR * s),
                           np.finfo(np.float64).tiny)
  ok = bool(np.all(err <= rtol * FLOOR * s + rtol * top))
  i = int(np.argmax(err / denominator))
  worst = _compare(reference, a[i], b[i], Tolerance(rtol, rtol * FLOOR * s[i]),
                   FLOOR * s[i])._replace(ok=ok, explained=ok)
  if yard is None:
    return worst
  c = np.asarray(yard, np.float64).reshape(batch, -1)
  same = np.abs(c - b).max(axis=1) / denominator
  return worst._replace(same_dtype=float(same.max()))


def _explain(rows: list, u: float) -> list:
  r"""Sets ``explained`` on every comparison of a low-precision report.

  The yardstick of each kind of comparison (mean gradient, finite
  differences, per example) is the worst scaled error that ``jax.grad`` in
  the same dtype makes on ANY leaf of the net: a statistic over many
  entries, stable where one small leaf's error can be 0 by luck. A leaf is
  explained when ``scaled <= EXPLAIN * yardstick + EXPLAIN_FLOOR * u``, so a
  leaf is still judged at its own scale (a tiny layer 90% off is not
  explained by errors of 1e-7 elsewhere).
  """
  out = []
  yard = {k: max(getattr(r, k).same_dtype for r in rows)
          for k in ("autodiff", "fd", "per_example")}
  for r in rows:
    new = {}
    for k, y in yard.items():
      c = getattr(r, k)
      explained = c.scaled <= EXPLAIN * y + EXPLAIN_FLOOR * u
      if k == "fd":  # within the finite differences' own noise
        explained = explained or c.max_abs <= c.tol.atol
      new[k] = c._replace(explained=bool(explained), same_dtype=y)
    out.append(r._replace(**new))
  return out


def _activation_inputs(model, params, x, batched: bool = True):
  r"""``[(activation, z)]``: the input ``z`` of every ``Activation`` layer,
  in order (those inside a ``Residual`` block included), then the output
  activation with the logits.

  ``batched``: ``x: [B, *in_shape]`` through each layer's ``apply`` (what
  ``model.mean_loss``, hence ``jax.grad``, computes); else ONE example
  through each layer's ``forward`` (what the hand code computes; vmap it).
  A container other than ``Residual`` runs whole: activations inside it are
  not looked at. For an :class:`fnn.MLP` these are the hidden layers'
  ``z = a @ w + b`` and the last layer's, computed as before the layer axis.
  """
  out = []

  def walk(layers, entries, a):
    for layer, p in zip(layers, entries):
      if isinstance(layer, layer_lib.Activation):
        out.append((layer.activation, a))
      if isinstance(layer, layer_lib.Residual):
        a = a + walk(layer.layers, p, a)  # a + block(a)
      else:
        a = layer.apply(p, a) if batched else layer.forward(p, a)[0]
    return a

  z = walk(model.layers, model.expand(params), x)
  out.append((model.output, z))
  return out


def _preacts(model, params, x):
  r"""``[(z, kinks)]`` of every activation (the output's included) that has
  kinks, as ``model.mean_loss`` computes them."""
  return [(z, act.kinks) for act, z in _activation_inputs(model, params, x)
          if act.kinks]


def _loss_and_cross(model, unravel, x, y, theta, direction, h):
  r"""Central difference along ``direction`` and whether it straddles a kink."""
  crossed = False
  tp, tm = unravel(theta + h * direction), unravel(theta - h * direction)
  lp = model.mean_loss(tp, x, y)
  lm = model.mean_loss(tm, x, y)
  for (zp, kinks), (zm, _) in zip(_preacts(model, tp, x),
                                  _preacts(model, tm, x)):
    for k in kinks:
      crossed = crossed | jnp.any(((zp - k) * (zm - k) <= 0) & (zp != zm))
  return (lp - lm) / (2 * h), crossed


def _rows_of(v):
  r"""``[B, ...] -> [B, -1]`` (a no-op on ``[B, n]``)."""
  return v.reshape(v.shape[0], -1)


def _derivative_changed(act, z, z64):
  r"""``[B]``: whether ``act``'s derivative at the low-dtype ``z`` differs
  from float64's at ``z64`` by more than :data:`SATURATED` (a kink crossed,
  an output saturated) anywhere in the example. Autodiff of ``act.fn``,
  never the hand ``grad``."""
  f64 = jnp.float64
  if act.grad is not None:  # elementwise: the JVP with ones is sigma'(z)
    d = jax.jvp(act.fn, (z,), (jnp.ones_like(z),))[1].astype(f64)
    d64 = jax.jvp(act.fn, (z64,), (jnp.ones_like(z64),))[1]
    gap = jnp.abs(d - d64) > SATURATED * jnp.maximum(jnp.abs(d), jnp.abs(d64))
    return jnp.any(_rows_of(gap), axis=-1)
  # Units mix (softmax): J v for three fixed directions, normwise per example.
  v = jax.random.normal(jax.random.key(0), (3,) + z64.shape, f64)
  changed = jnp.zeros(z64.shape[0], bool)
  for vk in v:
    jv = jax.jvp(act.fn, (z,), (vk.astype(z.dtype),))[1].astype(f64)
    jv64 = jax.jvp(act.fn, (z64,), (vk,))[1]
    changed = changed | (jnp.max(_rows_of(jnp.abs(jv - jv64)), axis=-1)
                         > SATURATED * jnp.max(_rows_of(jnp.abs(jv64)),
                                               axis=-1))
  return changed


def _unreliable(model, params, x):
  r"""``[B]``: examples whose low-precision forward (``model.mean_loss``'s,
  which ``jax.grad`` differentiates, or the hand code's per-example one)
  changed the derivative of an ``Activation`` layer (inside ``Residual``
  blocks too) against float64. A fused output's derivative is never used
  (``a - y``), so it is not looked at."""
  f64 = jnp.float64
  p64 = jax.tree.map(lambda p: p.astype(f64), params)
  z64 = _activation_inputs(model, p64, x.astype(f64))
  z_jax = [z for _, z in _activation_inputs(model, params, x)]
  z_hand = jax.vmap(lambda xi: [z for _, z in _activation_inputs(
      model, params, xi, batched=False)])(x)
  if model.fused:
    z64 = z64[:-1]
  flags = jnp.zeros(x.shape[0], bool)
  for l, (act, z_ref) in enumerate(z64):
    for z in (z_jax[l], z_hand[l]):
      flags = flags | _derivative_changed(act, z, z_ref)
  return flags


_unreliable_jit = jax.jit(_unreliable, static_argnums=0)


def _mean_abs_per_example(kind, f, batch: int) -> list:
  r"""``max_jk mean_i |g_i|_jk`` per leaf of the params entry, ``g_i`` each
  example's gradient from ``kind.per_example`` (float64 factors), formed a
  chunk of examples at a time (at most ~4M entries; ``lax.scan`` over the
  chunks, the last one padded and masked)."""
  one = jax.eval_shape(kind.per_example, jax.tree.map(lambda v: v[:1], f))
  width = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(one))
  chunk = min(batch, max(1, (1 << 22) // max(width, 1)))
  if chunk == batch:
    g = kind.per_example(f)
    return [jnp.max(jnp.mean(jnp.abs(l), axis=0)) for l in jax.tree.leaves(g)]
  n = -(-batch // chunk)  # chunks
  pad = n * chunk - batch
  split = lambda v: jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)).reshape(
      (n, chunk) + v.shape[1:])
  keep = split(jnp.ones((batch,), jnp.float64))  # (n, chunk): 0 on padding

  def add(total, xs):
    fc, kc = xs
    g = jax.tree.leaves(kind.per_example(fc))
    return [t + jnp.einsum("i,i...->...", kc, jnp.abs(l))
            for t, l in zip(total, g)], None

  zeros = [jnp.zeros(l.shape[1:], jnp.float64) for l in jax.tree.leaves(one)]
  total, _ = jax.lax.scan(add, zeros, (jax.tree.map(split, f), keep))
  return [jnp.max(t) / batch for t in total]


def _magnitudes(model, p64, x64, y64):
  r"""``m`` per leaf: ``max_jk mean_i |g_i|_jk``, from float64 factors.

  Dense (:class:`fnn.layers.kinds.Outer`): ``|g_i| = outer(|a_prev_i|,
  |delta_i|)``, so ``m_w = max (|a_prev|^T |delta|) / B`` and ``m_b = max
  mean_i |delta_i|`` without forming a per-example gradient. Any other kind:
  its ``per_example`` gradients, materialized in chunks of examples
  (:func:`_mean_abs_per_example`; exact, and cheap for the small nets a
  check runs on).
  """
  _, factors = gradients._batched_factors(model, p64, x64, y64)
  batch = x64.shape[0]
  out = []
  for _, _, kind, f in gradients.kind_leaves(model, factors):
    if isinstance(kind, kind_lib.Outer):
      out.append(jnp.max(jnp.abs(f.a_prev).T @ jnp.abs(f.delta)) / batch)
      out.append(jnp.max(jnp.mean(jnp.abs(f.delta), axis=0)))
    else:
      out.extend(_mean_abs_per_example(kind, f, batch))
  return jnp.stack(out)


def _to64(kind, f):
  r"""A layer's factors in float64 (the kind's ``astype`` where it has one)."""
  if hasattr(kind, "astype"):
    return kind.astype(f, jnp.float64)
  return jax.tree.map(lambda v: v.astype(jnp.float64) if jnp.issubdtype(
      v.dtype, jnp.floating) else v, f)


def _dot(kind, f, t):
  r"""``[B]``: each example's directional derivative ``<g_i, t>`` of one
  layer: the kind's ``dot`` (no per-example gradient formed), else its
  ``per_example`` gradients contracted with ``t``."""
  if hasattr(kind, "dot"):
    return kind.dot(f, t)
  return sum(jnp.sum(_rows_of(g * v[None]), axis=-1) for g, v in zip(
      jax.tree.leaves(kind.per_example(f)), jax.tree.leaves(t)))


def _compute(model, mode: str, h: float, directions: int, params, x, y,
             key):
  r"""Every array the report needs, as one traceable function."""
  f64 = jnp.float64
  low = jnp.dtype(_checks.param_dtype(params)) != jnp.dtype(f64)
  loss, hand = gradients.value_and_grad(model, params, x, y)
  p64 = jax.tree.map(lambda p: p.astype(f64), params)
  x64 = x.astype(f64)
  y64 = y.astype(f64) if jnp.issubdtype(y.dtype, jnp.floating) else y
  ref = jax.grad(model.mean_loss)(p64, x64, y64)
  theta, unravel = ravel_pytree(p64)
  leaves = jax.tree.leaves(p64)
  sizes = [l.size for l in leaves]
  offsets = np.cumsum([0] + sizes)
  fd_fn = lambda d: _loss_and_cross(model, unravel, x64, y64, theta, d, h)
  one = lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])
  out = dict(loss=loss, hand=hand, ref=ref,
             mag=_magnitudes(model, p64, x64, y64))
  if low:  # the yardstick (jax.grad in the dtype) and the float64 formula
    ad = jax.grad(model.mean_loss)(params, x, y)
    out.update(ad=ad, hand64=gradients.grad(model, p64, x64, y64))
  if mode == "full":
    n = theta.size
    basis = lambda i: jax.nn.one_hot(i, n, dtype=f64)
    fd, crossed = _batched(lambda i: fd_fn(basis(i)), jnp.arange(n), n)
    per_example = gradients.per_example_grads(model, params, x, y)
    out.update(fd=fd, crossed=crossed, pe_hand=per_example,
               pe_ref=jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(
                   p64, x64, y64))
    if low:
      out.update(pe_ad=jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(
          params, x, y), pe_hand64=gradients.per_example_grads(
              model, p64, x64, y64))
    return out
  # Directional: unit random directions supported on one leaf at a time.
  dirs = []
  # An MLP draws per leaf: its reports stay bit for bit those from before
  # the layer axis (inside this jit the shared draw fuses differently and
  # moves directional errors by an ulp).
  for i, v in enumerate(_normals(key, sizes, directions,
                                 shared=not isinstance(model, MLP))):
    v = v / jnp.linalg.norm(v, axis=1, keepdims=True)
    full = jnp.zeros((directions, theta.size), f64)
    dirs.append(full.at[:, offsets[i]:offsets[i + 1]].set(v))
  dirs = jnp.concatenate(dirs)  # (leaves * directions, P)
  fd, crossed = _batched(fd_fn, dirs, theta.size)
  flat = lambda g: ravel_pytree(jax.tree.map(lambda l: l.astype(f64), g))[0]
  # Per example, directional: hand from each kind's dot of the factors (no
  # [B, n_in, n_out]), reference from forward-mode jax.jvp of the
  # per-example losses.
  _, factors = gradients._batched_factors(model, params, x, y)
  layers = gradients.kind_leaves(model, factors)
  ex_loss = lambda p, xs, ys: jax.vmap(
      lambda xi, yi: model.mean_loss(p, xi[None], yi[None]))(xs, ys)

  def per_example_dir(d):
    tangent = unravel(d)
    ref_d = jax.jvp(lambda p: ex_loss(p, x64, y64), (p64,), (tangent,))[1]
    hand_d = 0.0
    for (_, _, kind, f), (*_, t) in zip(
        layers, gradients.kind_leaves(model, tangent)):
      hand_d = hand_d + _dot(kind, _to64(kind, f), t)
    if not low:
      return hand_d, ref_d, ref_d
    # The yardstick: forward mode in the dtype, on the rounded direction.
    t_low = jax.tree.map(lambda t, p: t.astype(p.dtype), tangent, params)
    ad_d = jax.jvp(lambda p: ex_loss(p, x, y), (params,), (t_low,))[1]
    return hand_d, ref_d, ad_d.astype(f64)

  pe_hand, pe_ref, pe_ad = _batched(per_example_dir, dirs, theta.size)
  out.update(fd=fd, crossed=crossed, hand_dir=dirs @ flat(hand),
             ref_norm=jnp.stack([jnp.linalg.norm(l) for l in
                                 jax.tree.leaves(ref)]),
             pe_hand=pe_hand, pe_ref=pe_ref)
  if low:
    out.update(ad_dir=dirs @ flat(out["ad"]), pe_ad=pe_ad)
  return out


# Leaves up to this many entries per direction share one random draw.
SHARED_DRAW = 1 << 16


def _normals(key, sizes, directions: int, shared: bool = True) -> list:
  r"""Per leaf ``i``, ``jax.random.normal(k_i, (directions, size_i))`` in
  float64, ``k_i`` the ``i``-th of ``jax.random.split(key, len(sizes))``.

  With ``shared``, the same values with one threefry to compile for all
  leaves up to :data:`SHARED_DRAW` entries instead of one per leaf shape
  (the largest single part of compiling a directional check: 5 of 14 CPU
  seconds for an 11-leaf net): with jax's partitionable threefry (the
  default) the first ``n`` values of a flat draw are the draw of ``n``, so
  the small leaves take prefixes of one draw vmapped over their keys.
  """
  f64 = jnp.float64
  keys = jax.random.split(key, len(sizes))
  small = [i for i, n in enumerate(sizes) if n <= SHARED_DRAW]
  draws = {}
  if shared and len(small) > 1 and jax.config.jax_threefry_partitionable:
    width = directions * max(sizes[i] for i in small)
    draw = jax.vmap(lambda k: jax.random.normal(k, (width,), f64))(
        keys[np.asarray(small)])  # (len(small), width)
    draws = {i: draw[j, :directions * sizes[i]].reshape(directions, -1)
             for j, i in enumerate(small)}
  return [draws[i] if i in draws else
          jax.random.normal(keys[i], (directions, n), f64)
          for i, n in enumerate(sizes)]


def _batched(fn, xs, width: int):
  r"""``vmap(fn)(xs)``, in chunks of at most ~4M float64 entries of width
  ``width`` each (``lax.map``), so memory stays bounded for large nets."""
  n = xs.shape[0]
  chunk = max(1, (1 << 22) // max(width, 1))
  if chunk >= n:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk)


_compute_jit = jax.jit(_compute, static_argnums=(0, 1, 2, 3))


def check_grads(model, params, x, y, *, mode: Optional[str] = None,
                directions: int = 4, eps: float = FD_EPS, key=None,
                rtol: Optional[float] = None, jit: Optional[bool] = None,
                strict: bool = False) -> Report:
  r"""Checks the hand-derived gradient of ``model`` at ``params`` on a batch.

  In float64 every comparison is held to :data:`TOLERANCES`. Below float64
  (see the module docstring) the hand gradient is judged against ``jax.grad``
  run in the same dtype (both errors against float64), the same hand code is
  re-run in float64 at float64's tolerance, and examples whose low-precision
  forward crossed a kink or saturated are left out of every comparison.

  Args:
    model: the network: an :class:`fnn.MLP` or :class:`fnn.Sequential`
      (user-written layer types and factor kinds, registered activations
      and losses included).
    params: from ``model.init`` (any floating dtype; the hand gradient is
      computed in it, the references in float64).
    x: ``[batch, *in_shape]``; y: targets or labels as for
      ``model.mean_loss``.
    mode: ``"full"`` (every parameter perturbed) or ``"directional"``
      (``directions`` random unit directions per leaf); default: full up to
      5,000 parameters, directional above.
    directions: random directions per leaf in directional mode.
    eps: the finite-difference step ``h`` (float64).
    key: PRNG key for the directions (default ``jax.random.key(0)``).
    rtol: the normwise tolerance of the hand gradient against ``jax.grad``
      and per example; default by dtype (:data:`TOLERANCES`). Below float64
      it separates ``pass`` from ``high`` only.
    jit: compile the check as one function (default) or run it op by op
      (``False``; faster for many tiny configurations, as in the sweep).
    strict: ``suspect`` rows (float32/bfloat16: worse than the dtype
      explains, or a formula float64 would fail) make the report fail.

  Returns:
    A :class:`Report`; ``report.passed``, ``report.table()``,
    ``report.to_dict()``, ``report.failures()``, ``report.suspects()``.

  Raises:
    ValueError, TypeError: bad inputs, as for :func:`fnn.grad`, an unknown
      ``mode``, or a layer with parameters but no factor ``kind``.
  """
  n_params = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(params))
  if mode is None:
    mode = "full" if n_params <= 5000 else "directional"
  if mode not in ("full", "directional"):
    raise ValueError(f"mode must be 'full' or 'directional', got {mode!r}")
  if not isinstance(directions, int) or directions < 1:
    raise ValueError(f"directions must be a positive int, got {directions!r}")
  if not eps > 0:
    raise ValueError(f"eps must be > 0, got {eps}")
  dtype = _dtype_name(_checks.param_dtype(params))
  expect = expectation(dtype) if rtol is None else float(rtol)
  key = jax.random.key(0) if key is None else key
  left_out = 0
  with jax.enable_x64(True):  # float64 references whatever the global flag
    x, y = _checks.check_batch(model, params, x, y, batched=True)
    _leaf_names(model, params)  # every leaf has a kind, before any work
    if dtype != "float64":
      flags = np.asarray(jax.device_get(
          (_unreliable_jit if jit is None or jit else _unreliable)(
              model, params, x)))
      # Every example flagged: nothing left to compare without them; the
      # yardstick alone then judges the rows.
      if flags.any() and not flags.all():
        keep = np.flatnonzero(~flags)
        x, y = x[keep], y[keep]
        left_out = int(flags.sum())
    fn = _compute_jit if jit is None or jit else _compute
    out = jax.device_get(fn(model, mode, float(eps), directions, params, x,
                            y, key))
  return _report(model, dtype, mode, eps, directions, expect, out, left_out,
                 bool(strict))


def _report(model, dtype, mode, eps, directions, expect, out, left_out,
            strict) -> Report:
  low = dtype != "float64"
  u = unit_roundoff(dtype)
  hand = jax.tree.leaves(out["hand"])
  ref = jax.tree.leaves(out["ref"])
  n = len(hand)
  ad = jax.tree.leaves(out["ad"]) if low else [None] * n
  hand64 = jax.tree.leaves(out["hand64"]) if low else [None] * n
  mag = np.asarray(out["mag"], np.float64)
  loss = float(out["loss"])
  fd_noise = FD_ROUNDING * max(1.0, abs(loss)) / eps
  rtol_fd = max(FD_RTOL, expect)
  rtol64 = TOLERANCES["float64"]
  rows = []
  offsets = np.cumsum([0] + [h.size for h in hand])
  names = _leaf_names(model, out["hand"])
  for i, ((layer, leaf, layer_type), h, r) in enumerate(zip(names, hand,
                                                             ref)):
    m = float(mag[i])
    autodiff = _compare("jax.grad", h, r,
                        Tolerance(expect, expect * FLOOR * m), FLOOR * m,
                        yard=ad[i])
    formula = None
    if low:
      formula = _compare("jax.grad", hand64[i], r,
                         Tolerance(rtol64, rtol64 * FLOOR * m), FLOOR * m)
    if mode == "full":
      sl = slice(offsets[i], offsets[i + 1])
      fd = _compare("finite differences", h, out["fd"][sl],
                    Tolerance(rtol_fd, fd_noise + expect * FLOOR * m),
                    FLOOR * m, mask=~out["crossed"][sl], yard=ad[i])
      pe_cmp = _per_example(
          "jax.vmap(jax.grad)", jax.tree.leaves(out["pe_hand"])[i],
          jax.tree.leaves(out["pe_ref"])[i], expect, m,
          yard=jax.tree.leaves(out["pe_ad"])[i] if low else None)
      if low:
        pe64 = _per_example("jax.vmap(jax.grad)",
                            jax.tree.leaves(out["pe_hand64"])[i],
                            jax.tree.leaves(out["pe_ref"])[i], rtol64, m)
        if (not pe64.ok, pe64.scaled) > (not formula.ok, formula.scaled):
          formula = pe64
    else:
      sl = slice(i * directions, (i + 1) * directions)
      # <g, v> of a unit v is at most |g|: errors relative to the leaf's norm;
      # the magnitude of a directional value is up to sqrt(size) m.
      norm = float(out["ref_norm"][i])
      md = m * np.sqrt(h.size)
      fd = _compare("finite differences (directional)", out["hand_dir"][sl],
                    out["fd"][sl],
                    Tolerance(rtol_fd, fd_noise + expect * FLOOR * md),
                    FLOOR * md, mask=~out["crossed"][sl], ref_scale=norm,
                    yard=out["ad_dir"][sl] if low else None)
      pe_cmp = _compare("jax.jvp per example", out["pe_hand"][sl],
                        out["pe_ref"][sl],
                        Tolerance(expect, expect * FLOOR * md), FLOOR * md,
                        yard=out["pe_ad"][sl] if low else None)
    rows.append(Row(layer, leaf, tuple(h.shape), autodiff, fd, pe_cmp, "",
                    formula, layer_type))
  if low:
    rows = _explain(rows, u)
  rows = [r._replace(status=_status(r.autodiff, r.fd, r.per_example,
                                    r.formula, dtype, left_out))
          for r in rows]
  return Report(model, dtype, mode, eps, loss, tuple(rows), left_out, strict)


def _status(autodiff: Comparison, fd: Comparison, pe: Comparison,
            formula: Optional[Comparison], dtype: str, left_out: int = 0
            ) -> str:
  comps = (autodiff, fd, pe)
  quiet = "kink" if fd.kinks or left_out else "pass"
  if dtype == "float64" or formula is None:
    return quiet if all(c.ok for c in comps) else "FAIL"
  if formula.scaled > WRONG or any(not c.explained and c.scaled > WRONG
                                   for c in comps):
    return "FAIL"
  if not formula.ok or not all(c.explained for c in comps):
    return "suspect"
  return quiet if all(c.ok for c in comps) else "high"

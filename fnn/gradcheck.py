r"""Gradient checks: the hand-derived gradient against two references.

:func:`check_grads` compares, for every parameter leaf (layer ``l``, ``w`` or
``b``), the HAND-derived gradient (:func:`fnn.value_and_grad`, in the
params' dtype) with

- AUTODIFF: ``jax.grad(model.mean_loss)`` in float64;
- FD: central finite differences of ``model.mean_loss`` in float64, whatever
  the model's dtype;
- PER-EXAMPLE: each example's hand gradient against ``jax.vmap(jax.grad)``
  (full mode) or, in directional mode, each example's directional
  derivative against ``jax.jvp`` (no per-example gradient is materialized).

Two modes. ``"full"`` perturbs every parameter (``2 P`` loss evaluations,
vectorized): for small nets. ``"directional"`` draws ``directions`` random
unit vectors per leaf and compares the difference quotient
``(L(p + h v) - L(p - h v)) / 2h`` with ``<grad, v>``: cheap for any size.

Errors, per leaf (``a`` = hand, ``b`` = reference, max over entries):

- ``max_abs = max |a - b|``;
- ``max_rel = max |a - b| / max(|a|, |b|, tiny)``, elementwise as in the
  CS231n notes (reported, not used to decide: it is large wherever an entry
  is near 0 on both sides);
- ``scaled = max |a - b| / max(max |b|, tiny)``: the error relative to the
  leaf's largest entry. The check passes when
  ``max |a - b| <= atol + rtol * max |b|``, i.e. ``scaled <= rtol`` up to an
  absolute floor ``atol`` (see :data:`TOLERANCES`);
- ``cosine``: the cosine similarity of ``a`` and ``b``.

Kinks: where a finite difference moves a pre-activation of a layer whose
activation has kinks (ReLU at 0) across one, the quotient measures a one-sided
mix, not the derivative; those entries (or directions) are left out of the FD
error and counted, and a row whose only disagreements sit there says
``kink``.

float32 and bfloat16: the hand gradient in that dtype is compared with the
float64 references, so the error is the dtype's rounding; a row within the
dtype's expectation passes, one above it but below :data:`WRONG` (1e-2, the
CS231n "probably wrong" line) says ``high`` without failing, and one above
:data:`WRONG` fails.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn import _checks, gradients
from fnn.model import MLP, Params


class Tolerance(NamedTuple):
  r"""Pass iff ``max |hand - ref| <= atol + rtol * max |ref|`` (per leaf)."""
  rtol: float
  atol: float


# Normwise relative tolerances (see the module docstring), per dtype of the
# hand-derived gradient. float64: the two analytic gradients agree to ~1e-15
# (measured over the whole sweep), 1e-8 leaves room for a user's less stable
# formula and is still CS231n's "good" (< 1e-7). float32: rounding of the
# forward and backward gives ~1e-7..1e-5 on the sweep; 1e-4 is the expectation.
# bfloat16 (8-bit mantissa, eps 7.8e-3): ~1e-2 expected.
TOLERANCES = {"float64": 1e-8, "float32": 1e-4, "bfloat16": 5e-2}
# Above this the gradient is wrong whatever the dtype (CS231n: > 1e-2 is
# "probably wrong"); float32/bfloat16 rows between their expectation and this
# line are reported as "high", not failed.
WRONG = 1e-2
# Finite differences: central, in float64. Truncation error ~ h^2 |L'''| / 6 and
# rounding ~ ulp(L) / h; h = 1e-6 (torch.autograd.gradcheck's eps) keeps the
# first below 1e-12 and FD_RTOL = 1e-6 sits far above both on the sweep. The
# absolute floor is the rounding term: FD_ROUNDING ulps of the loss over h.
FD_EPS = 1e-6
FD_RTOL = 1e-6
FD_ROUNDING = 1e-13  # ~500 ulps of float64 at 1


class Comparison(NamedTuple):
  r"""One comparison of the hand-derived values with a reference."""
  reference: str
  max_abs: float
  max_rel: float
  scaled: float
  cosine: float
  tol: Tolerance
  ok: bool
  kinks: int = 0  # FD entries (full) or directions left out at kinks


class Row(NamedTuple):
  r"""One parameter leaf: layer index (0-based), ``w`` or ``b``, its checks."""
  layer: int
  leaf: str
  shape: tuple[int, ...]
  autodiff: Comparison
  fd: Comparison
  per_example: Comparison
  status: str  # "pass", "kink", "high" (f32/bf16 above expectation), "FAIL"

  @property
  def name(self) -> str:
    return f"layer {self.layer} {self.leaf}"

  def message(self) -> str:
    r"""One line naming the hand-derived side and the reference side."""
    worst = max((self.autodiff, self.fd, self.per_example),
                key=lambda c: c.scaled / max(c.tol.rtol, 1e-300))
    return (f"{self.name} {self.shape}: {self.status}; worst: hand-derived vs "
            f"{worst.reference} (reference): max |hand - ref| "
            f"{worst.max_abs:.3g}, relative to max |ref| {worst.scaled:.3g} "
            f"(tolerance {worst.tol.rtol:.0e}), cosine {worst.cosine:.12f}"
            + (f", {self.fd.kinks} finite differences at a kink left out"
               if self.fd.kinks else ""))


class Report(NamedTuple):
  r"""What :func:`check_grads` found: one :class:`Row` per leaf."""
  model: MLP
  dtype: str
  mode: str
  eps: float
  loss: float
  rows: tuple[Row, ...]

  @property
  def passed(self) -> bool:
    r"""True unless a row FAILed (``kink`` and ``high`` rows pass)."""
    return all(r.status != "FAIL" for r in self.rows)

  @property
  def status(self) -> str:
    r"""The worst row status: ``FAIL`` > ``high`` > ``kink`` > ``pass``."""
    order = ("pass", "kink", "high", "FAIL")
    return max((r.status for r in self.rows), key=order.index)

  def worst(self, which: str = "autodiff") -> Comparison:
    r"""The comparison (``autodiff``, ``fd`` or ``per_example``) with the
    largest scaled error over the leaves."""
    return max((getattr(r, which) for r in self.rows), key=lambda c: c.scaled)

  def failures(self) -> list[str]:
    return [r.message() for r in self.rows if r.status == "FAIL"]

  def to_dict(self) -> dict:
    r"""A JSON-able summary with every row."""
    def comp(c):
      return dict(reference=c.reference, max_abs=c.max_abs, max_rel=c.max_rel,
                  scaled=c.scaled, cosine=c.cosine, rtol=c.tol.rtol,
                  atol=c.tol.atol, ok=c.ok, kinks=c.kinks)
    return dict(
        model=dict(sizes=list(self.model.sizes),
                   activation=[a.name for a in self.model.activation],
                   output=self.model.output.name, loss=self.model.loss.name),
        dtype=self.dtype, mode=self.mode, eps=self.eps, loss=self.loss,
        passed=self.passed, status=self.status,
        rows=[dict(layer=r.layer, leaf=r.leaf, shape=list(r.shape),
                   status=r.status, autodiff=comp(r.autodiff), fd=comp(r.fd),
                   per_example=comp(r.per_example)) for r in self.rows])

  def markdown(self) -> str:
    r"""A markdown table, one line per leaf."""
    lines = ["| leaf | shape | vs jax.grad | vs FD | per-example | cos(FD) | "
             "kinks | status |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in self.rows:
      lines.append(
          f"| {r.name} | {r.shape} | {r.autodiff.scaled:.2e} | "
          f"{r.fd.scaled:.2e} | {r.per_example.scaled:.2e} | "
          f"{r.fd.cosine:.10f} | {r.fd.kinks} | {r.status} |")
    return "\n".join(lines)

  def table(self) -> str:
    r"""A plain-text table, one line per leaf."""
    head = (f"{'leaf':<12} {'shape':<12} {'vs jax.grad':>11} {'vs FD':>9} "
            f"{'per-example':>11} {'cos(FD)':>14} {'kinks':>5}  status")
    lines = [f"{self.model}  dtype {self.dtype}, mode {self.mode}, "
             f"h {self.eps:g}; errors = max |hand - ref| / max |ref|", head]
    for r in self.rows:
      lines.append(
          f"{r.name:<12} {str(r.shape):<12} {r.autodiff.scaled:>11.2e} "
          f"{r.fd.scaled:>9.2e} {r.per_example.scaled:>11.2e} "
          f"{r.fd.cosine:>14.10f} {r.fd.kinks:>5}  {r.status}")
    lines.append(f"tolerances: jax.grad and per-example rtol "
                 f"{self.rows[0].autodiff.tol.rtol:.0e}, FD rtol "
                 f"{self.rows[0].fd.tol.rtol:.0e}; "
                 + ("PASSED" if self.passed else "FAILED"))
    return "\n".join(lines)


def _dtype_name(dtype) -> str:
  return jnp.dtype(dtype).name


def expectation(dtype) -> float:
  r"""The normwise relative error expected of a hand gradient in ``dtype``."""
  name = _dtype_name(dtype)
  if name not in TOLERANCES:
    raise ValueError(f"no gradient-check tolerance for dtype {name}; choose "
                     f"from {sorted(TOLERANCES)}")
  return TOLERANCES[name]


def _compare(reference: str, a, b, tol: Tolerance, floor: float,
             mask=None, ref_scale: Optional[float] = None) -> Comparison:
  r"""Compares hand ``a`` with reference ``b`` (converted to float64).

  ``ref_scale`` (default ``max |b|``) is what ``rtol`` multiplies and what
  ``scaled`` divides by, never below ``floor``; ``mask`` keeps entries (the
  others sat at a kink and are only counted).
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  kinks = 0
  if mask is not None:
    mask = np.asarray(mask, bool).ravel()
    kinks = int(np.sum(~mask))
    a, b = a[mask], b[mask]
  tiny = np.finfo(np.float64).tiny
  if a.size == 0:
    return Comparison(reference, 0.0, 0.0, 0.0, 1.0, tol, True, kinks)
  diff = np.abs(a - b)
  max_abs = float(diff.max())
  max_rel = float(np.max(diff / np.maximum(np.maximum(np.abs(a), np.abs(b)),
                                           tiny)))
  if ref_scale is None:
    ref_scale = float(np.abs(b).max())
  scaled = max_abs / max(ref_scale, floor, tiny)
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(
      na == nb)
  ok = max_abs <= tol.atol + tol.rtol * ref_scale
  return Comparison(reference, max_abs, max_rel, scaled, cosine, tol, ok,
                    kinks)


def _preacts(model: MLP, params: Params, x):
  r"""Pre-activations ``z: [B, n_l]`` of the layers whose activation kinks."""
  out, a = [], x
  for layer, act in zip(params, model.activations):
    z = a @ layer.w + layer.b[None, :]
    if act.kinks:
      out.append((z, act.kinks))
    a = act.fn(z)
  return out


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


def _compute(model: MLP, mode: str, h: float, directions: int, params, x, y,
             key):
  r"""Every array the report needs, as one traceable function."""
  f64 = jnp.float64
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
  out = dict(loss=loss, hand=hand, ref=ref)
  if mode == "full":
    n = theta.size
    basis = lambda i: jax.nn.one_hot(i, n, dtype=f64)
    fd, crossed = _batched(lambda i: fd_fn(basis(i)), jnp.arange(n), n)
    per_example = gradients.per_example_grads(model, params, x, y)
    one = lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])
    out.update(fd=fd, crossed=crossed, pe_hand=per_example,
               pe_ref=jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(
                   p64, x64, y64))
    return out
  # Directional: unit random directions supported on one leaf at a time.
  keys = jax.random.split(key, len(leaves))
  dirs = []
  for i, (k, size) in enumerate(zip(keys, sizes)):
    v = jax.random.normal(k, (directions, size), f64)
    v = v / jnp.linalg.norm(v, axis=1, keepdims=True)
    full = jnp.zeros((directions, theta.size), f64)
    dirs.append(full.at[:, offsets[i]:offsets[i + 1]].set(v))
  dirs = jnp.concatenate(dirs)  # (leaves * directions, P)
  fd, crossed = _batched(fd_fn, dirs, theta.size)
  hand_flat = ravel_pytree(jax.tree.map(lambda g: g.astype(f64), hand))[0]
  # Per example, directional: hand from the factors (no [B, n_in, n_out]),
  # reference from forward-mode jax.jvp of the per-example losses.
  _, factors = gradients._batched_factors(model, params, x, y)
  ex_loss = lambda p: jax.vmap(
      lambda xi, yi: model.mean_loss(p, xi[None], yi[None]))(x64, y64)

  def per_example_dir(d):
    tangent = unravel(d)
    ref_d = jax.jvp(ex_loss, (p64,), (tangent,))[1]  # (B,)
    hand_d = 0.0
    for f, t in zip(factors, tangent):
      a_prev, delta = f.a_prev.astype(f64), f.delta.astype(f64)
      hand_d = hand_d + jnp.einsum("bi,ij,bj->b", a_prev, t.w, delta) + (
          delta @ t.b)
    return hand_d, ref_d

  pe_hand, pe_ref = _batched(per_example_dir, dirs, theta.size)
  out.update(fd=fd, crossed=crossed, hand_dir=dirs @ hand_flat,
             ref_norm=jnp.stack([jnp.linalg.norm(l) for l in
                                 jax.tree.leaves(ref)]),
             pe_hand=pe_hand, pe_ref=pe_ref)
  return out


def _batched(fn, xs, width: int):
  r"""``vmap(fn)(xs)``, in chunks of at most ~4M float64 entries of width
  ``width`` each (``lax.map``), so memory stays bounded for large nets."""
  n = xs.shape[0]
  chunk = max(1, (1 << 22) // max(width, 1))
  if chunk >= n:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk)


_compute_jit = jax.jit(_compute, static_argnums=(0, 1, 2, 3))


def check_grads(model: MLP, params: Params, x, y, *, mode: Optional[str] = None,
                directions: int = 4, eps: float = FD_EPS, key=None,
                rtol: Optional[float] = None, jit: Optional[bool] = None
                ) -> Report:
  r"""Checks the hand-derived gradient of ``model`` at ``params`` on a batch.

  Args:
    model: the network; registered activations and losses included.
    params: from ``model.init`` (any floating dtype; the hand gradient is
      computed in it, the references in float64).
    x: ``[batch, n_in]``; y: targets or labels as for ``model.mean_loss``.
    mode: ``"full"`` (every parameter perturbed) or ``"directional"``
      (``directions`` random unit directions per leaf); default: full up to
      5,000 parameters, directional above.
    directions: random directions per leaf in directional mode.
    eps: the finite-difference step ``h`` (float64).
    key: PRNG key for the directions (default ``jax.random.key(0)``).
    rtol: the normwise tolerance of the hand gradient against ``jax.grad``
      and per example; default by dtype (:data:`TOLERANCES`).
    jit: compile the check as one function (default) or run it op by op
      (``False``; faster for many tiny configurations, as in the sweep).

  Returns:
    A :class:`Report`; ``report.passed``, ``report.table()``,
    ``report.to_dict()``, ``report.failures()``.

  Raises:
    ValueError, TypeError: bad inputs, as for :func:`fnn.grad`, or an
      unknown ``mode``.
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
  dtype = _dtype_name(params[0].w.dtype)
  expect = expectation(dtype) if rtol is None else float(rtol)
  key = jax.random.key(0) if key is None else key
  with jax.enable_x64(True):  # float64 references whatever the global flag
    x, y = _checks.check_batch(model, params, x, y, batched=True)
    fn = _compute_jit if jit is None or jit else _compute
    out = jax.device_get(fn(model, mode, float(eps), directions, params, x,
                            y, key))
  return _report(model, dtype, mode, eps, directions, expect, out)


def _report(model, dtype, mode, eps, directions, expect, out) -> Report:
  hand = jax.tree.leaves(out["hand"])
  ref = jax.tree.leaves(out["ref"])
  scale = max(float(np.abs(r).max()) for r in ref)  # the gradient's scale
  loss = float(out["loss"])
  tol_ad = Tolerance(expect, expect * scale * 1e-3)
  tol_fd = Tolerance(max(FD_RTOL, expect),
                     FD_ROUNDING * max(1.0, abs(loss)) / eps
                     + expect * scale * 1e-3)
  rows = []
  offsets = np.cumsum([0] + [h.size for h in hand])
  names = [(l, leaf) for l in range(model.num_layers) for leaf in ("w", "b")]
  for i, ((layer, leaf), h, r) in enumerate(zip(names, hand, ref)):
    autodiff = _compare("jax.grad", h, r, tol_ad, scale * 1e-3)
    if mode == "full":
      sl = slice(offsets[i], offsets[i + 1])
      fd = _compare("finite differences", h, out["fd"][sl], tol_fd,
                    scale * 1e-3, mask=~out["crossed"][sl])
      pe = np.stack([np.asarray(jax.tree.leaves(out["pe_hand"])[i]),
                     np.asarray(jax.tree.leaves(out["pe_ref"])[i])])
      pe_cmp = max((_compare("jax.vmap(jax.grad)", a, b, tol_ad, scale * 1e-3)
                    for a, b in zip(pe[0], pe[1])), key=lambda c: c.scaled)
    else:
      sl = slice(i * directions, (i + 1) * directions)
      # <g, v> of a unit v is at most |g|: errors relative to the leaf's norm.
      norm = float(out["ref_norm"][i])
      fd = _compare("finite differences (directional)", out["hand_dir"][sl],
                    out["fd"][sl], tol_fd, scale * 1e-3,
                    mask=~out["crossed"][sl], ref_scale=norm)
      pe_cmp = _compare("jax.jvp per example", out["pe_hand"][sl],
                        out["pe_ref"][sl], tol_ad, scale * 1e-3)
    rows.append(Row(layer, leaf, tuple(h.shape), autodiff, fd, pe_cmp,
                    _status(autodiff, fd, pe_cmp, dtype)))
  return Report(model, dtype, mode, eps, loss, tuple(rows))


def _status(autodiff: Comparison, fd: Comparison, pe: Comparison,
            dtype: str) -> str:
  comps = (autodiff, fd, pe)
  if all(c.ok for c in comps):
    return "kink" if fd.kinks else "pass"
  if dtype != "float64" and all(c.scaled <= WRONG for c in comps):
    return "high"
  return "FAIL"

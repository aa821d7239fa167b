r"""``fnn.check_quantities``: every quantity fnn contracts from its factors,
per quantity and per layer, against float64 brute force.

``fnn.check_grads`` checks the gradient; this harness checks what fnn
builds on the same factors, one :class:`Row` per quantity and parameter
layer (named by its index path and repr, ``"3.1 Dense(6)"``), each against
the definition computed by autodiff on the batched forward (every layer's
``apply``, never fnn's hand backward):

==============================  ==============================================
quantity                        brute force
==============================  ==============================================
per-example norm, second        ``g_i = jax.vmap(jax.grad)`` of each example's
moment, variance, noise scale   loss: ``|g_i|``, ``mean g_i**2``, ``var``,
(:func:`fnn.grad_stats`)        McCandlish et al.'s estimators
KFAC ``a_cov``, ``a_mean``      layer input patches ``d z_l / d w``
KFAC ``delta_cov`` empirical    ``d loss_b / d z_l`` (a tap adding ``e`` to
                                ``z_l``), ``(1/B) sum_{b,t} d d^T``
KFAC ``delta_cov`` exact        ``(1/B) sum_{b,t} D_bt^T H_b D_bt``,
                                ``D_b = d f / d z_l``
KFAC ``delta_cov`` mc,          z-test of the mean of ``draws`` estimates
``diag_ggn`` mc                 against the exact value (Bonferroni)
``diag_ggn``, ``ggn_trace``     ``G = (1/B) sum_b J_b^T H_b J_b``
(batch and per example)         (``jax.jacfwd``, ``jax.hessian``)
``ggn_vp``, ``hvp``,            ``G v``, ``jax.hessian(mean_loss) v``,
``hessian_eigs``                ``eigvalsh`` (when fnn has them)
``grad_gram`` (and each         ``g_i . g_j`` (each layer's slice)
kind's ``gram``)
``dp_grad`` (noise 0)           ``sum_i min(1, C/|g_i|) g_i / B``
==============================  ==============================================

``f`` is the network up to the GGN split (the logits for the fused pairs,
the output ``sigma(z)`` otherwise) and ``H_b`` the Hessian of the loss in
``f`` (see :mod:`fnn.curvature`).

Errors are relative to the reference's largest entry (``max |got - ref| /
max |ref|``), so a tolerance does not grow with the size of an array. The
noise-scale estimators are differences that cancel: their tolerance is
relative to the terms that cancel.
"""
from __future__ import annotations

import functools
import math
import statistics
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn import _checks, _compile, curvature, gradients, stats
from fnn._brute import (flat_per_example_grads, ggn_blocks,
                        layer_reference)
from fnn.layers import base as layer_base
from fnn.layers import kinds

Array = jax.Array

# float64: fnn and the reference sum the same terms in other orders, ~1e-15
# relative (measured, tests/test_curvature.py); a wrong term is O(1e-2)
# relative or more. 1e-10 leaves five orders of margin both ways.
RTOL = 1e-10
# Lanczos run for P steps with full reorthogonalization (exact in exact
# arithmetic): its Ritz values match eigvalsh to ~1e-15 of the largest
# eigenvalue on these nets (measured); 1e-8 leaves margin for clustered
# spectra, and a wrong product is off by O(1e-2) or more.
EIG_RTOL = 1e-8
MAX_PARAMS = 2000  # P x P float64 matrices (32 MB at 2000)
MAX_EIG_PARAMS = 500  # Lanczos for P steps costs O(P^3)
MC_DRAWS = 400
ALPHA = 1e-6  # false-alarm rate of one Monte-Carlo row (see _ztest)
ALL = "(all layers)"


class Row(NamedTuple):
  r"""One quantity at one layer.

  ``max_abs_err = max |fnn - reference|``; ``rel_err`` that over the
  reference's largest entry (or the scale the note names); ``ok`` when
  ``rel_err <= tol``. Monte-Carlo rows: ``rel_err`` is the worst entry's
  z-score and ``tol`` the Bonferroni threshold (the note says so). A row
  that could not be computed has NaN errors, ``ok=True`` and says why.
  """
  quantity: str
  layer: str
  max_abs_err: float
  rel_err: float
  tol: float
  ok: bool
  note: str = ""


def _cmp(quantity, layer, got, want, tol, scale=None, note="") -> Row:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    return Row(quantity, layer, math.inf, math.inf, tol, False,
               f"shape {got.shape}, reference {want.shape}")
  err = float(np.max(np.abs(got - want), initial=0.0))
  err = math.inf if math.isnan(err) else err
  if scale is None:
    scale = float(np.max(np.abs(want), initial=0.0))
  rel = float(err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
  return Row(quantity, layer, err, rel, float(tol), bool(rel <= tol), note)


def _skip(quantity, layer, why) -> Row:
  return Row(quantity, layer, math.nan, math.nan, math.nan, True, why)


def _ztest(quantity, layer, draws, exact, alpha) -> Row:
  r"""The mean of ``N`` independent estimates against ``exact``, per entry
  ``z = |mean - exact| / (s / sqrt(N))`` (``s`` the sample standard
  deviation; ~N(0, 1) by the central limit theorem when unbiased), all
  entries at ``Phi^-1(1 - alpha / 2m)`` (Bonferroni over the ``m``
  entries): a correct estimator fails with probability at most ``alpha``;
  a biased one by O(1) relative is ~sqrt(N) = 20 standard errors off."""
  draws, exact = np.asarray(draws, np.float64), np.asarray(exact, np.float64)
  n = draws.shape[0]
  mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(n)
  diff = np.abs(mean - exact)
  scale = float(np.max(np.abs(exact), initial=0.0))
  # A deterministic entry (se = 0) must equal the exact value to rounding.
  z = np.where(se > 0, diff / np.where(se > 0, se, 1),
               np.where(diff <= RTOL * scale, 0.0, np.inf))
  crit = statistics.NormalDist().inv_cdf(1 - alpha / (2 * max(z.size, 1)))
  worst = float(np.max(z, initial=0.0))
  return Row(quantity, layer, float(np.max(diff, initial=0.0)), worst, crit,
             bool(worst <= crit), f"z-test of the mean of {n} draws, "
             f"Bonferroni, false alarm <= {alpha:g}")


# --- The harness. -----------------------------------------------------------

class _Layer(NamedTuple):
  label: str  # "3.1 Dense(6)"
  path: tuple
  layer: object
  entry: object  # its params entry
  start: int  # its slice of the flattened params
  stop: int


def _layers(model, params) -> list[_Layer]:
  out, start = [], 0
  for path, layer, _, entry in layer_base.kind_leaves(model.layers,
                                                      model.expand(params)):
    n = sum(v.size for v in jax.tree.leaves(entry))
    out.append(_Layer(f"{'.'.join(map(str, path))} {layer!r}", path, layer,
                      entry, start, start + n))
    start += n
  if start != sum(v.size for v in jax.tree.leaves(params)):
    raise ValueError("every layer with parameters needs a factor kind "
                     "(fnn.layers.kinds); some parameters have none")
  return out


def _optional(name: str):
  import fnn
  return getattr(fnn, name, None)


def _skippable(e: Exception) -> bool:
  r"""A quantity a layer or activation opts out of: a layer without the
  hand-derived second order (``NotImplementedError``), an activation
  without ``grad2`` (``fnn.hvp``'s ``ValueError`` names it)."""
  return isinstance(e, NotImplementedError) or (
      isinstance(e, ValueError) and "grad2" in str(e))


def _compute(model, params, x, y, key, draws, eig_k, failed):
  r"""Every fnn quantity and its reference, traced once. A quantity whose
  fnn function raises while tracing is left out and ``failed[name]`` says
  why (a side effect of tracing: this runs once per call)."""
  flat_of = lambda t: ravel_pytree(t)[0]
  x, yv = _checks.check_batch(model, params, x, y, batched=True)
  flat, unravel = ravel_pytree(params)
  b, n = x.shape[0], flat.size
  k_mc, k_kfac, k_v, k_eig = jax.random.split(key, 4)
  out = {}

  def attempt(name, thunk):
    try:
      out[name] = thunk()
    except Exception as e:  # noqa: BLE001 (reported as a row, see below)
      failed[name] = e

  blocks = ggn_blocks(model, params, x, yv)
  out["ref"] = dict(pe=flat_per_example_grads(model, params, x, y),
                    ggn=jnp.mean(blocks, 0),
                    trace_pe=jnp.trace(blocks, axis1=1, axis2=2))
  attempt("diag_ggn", lambda: flat_of(curvature.diag_ggn(model, params, x,
                                                         y)))
  attempt("diag_ggn (mc)", lambda: jax.vmap(lambda k: flat_of(
      curvature.diag_ggn(model, params, x, y, mc_samples=1, key=k)))(
          jax.random.split(k_mc, draws)))
  attempt("ggn_trace", lambda: curvature.ggn_trace(model, params, x, y))
  attempt("ggn_trace per example", lambda: curvature.ggn_trace(
      model, params, x, y, per_example=True))
  attempt("grad_gram", lambda: curvature.grad_gram(model, params, x, y))
  attempt("gram", lambda: [kind.gram(f, f) for _, _, kind, f in
                           gradients.kind_leaves(model, gradients.factors(
                               model, params, x, y)[1])])
  if b >= 2:
    attempt("grad_stats", lambda: stats.grad_stats(model, params, x, y))
  for kind in ("empirical", "exact"):
    attempt(f"kfac {kind}", lambda: stats.kfac_factors(model, params, x, y,
                                                       kind=kind))
  attempt("kfac mc", lambda: jax.vmap(lambda k: stats.kfac_factors(
      model, params, x, y, kind="mc", key=k))(jax.random.split(k_kfac,
                                                               draws)))
  out["ref"]["kfac"] = [
      layer_reference(model, params, x, yv, l.path, l.layer, l.entry)
      if isinstance(l.layer.kind, (kinds.Outer, kinds.Conv)) else None
      for l in _layers(model, params)]
  v = jax.random.normal(k_v, (n,), flat.dtype)
  if _optional("ggn_vp") is not None or _optional("hvp") is not None:
    out["ref"]["v"] = v
    out["ref"]["hessian"] = jax.hessian(
        lambda t: model.mean_loss(unravel(t), x, y))(flat)
  for name in ("ggn_vp", "hvp"):
    fn = _optional(name)
    if fn is not None:
      attempt(name, lambda: flat_of(fn(model, params, x, y, unravel(v))))
  eigs = _optional("hessian_eigs")
  if eigs is not None and eig_k:
    for ggn in (False, True):
      attempt(f"hessian_eigs{' (ggn)' if ggn else ''}", lambda: eigs(
          model, params, x, y, eig_k, ggn=ggn, key=k_eig, iters=n))
  return out


def check_quantities(model, params, x, y, *, key=None, rtol: float = RTOL,
                     draws: int = MC_DRAWS, alpha: float = ALPHA,
                     clip=None) -> list[Row]:
  r"""Checks every quantity fnn derives from its factors against brute force,
  per layer, in float64 (see the module docstring for the references).

  Args:
    model, params, x, y: a small network (at most :data:`MAX_PARAMS`
      parameters: the references form ``P x P`` matrices) and a batch; params
      and ``x`` are cast to float64 (``jax_enable_x64`` must be on).
    key: PRNG key for the Monte-Carlo draws, the product's tangent and
      Lanczos's start (default ``jax.random.key(0)``).
    rtol: the tolerance of every exact row, relative to the reference's
      largest entry.
    draws: Monte-Carlo estimates averaged per z-test.
    alpha: the false-alarm rate of one Monte-Carlo row.
    clip: DP-SGD's clip norm (default: the median per-example norm, so some
      examples are clipped and some not).

  Returns:
    A list of :class:`Row`; every ``ok`` is true when fnn agrees.

  Raises:
    ValueError: float64 not enabled, too many parameters, bad ``x``/``y``.
  """
  if not jax.config.jax_enable_x64:
    raise ValueError("check_quantities compares in float64: enable it with "
                     "jax.config.update('jax_enable_x64', True)")
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
  x = jnp.asarray(x, jnp.float64)
  if jnp.issubdtype(jnp.asarray(y).dtype, jnp.floating):
    y = jnp.asarray(y, jnp.float64)
  _checks.check_batch(model, params, x, y, batched=True)
  n = sum(v.size for v in jax.tree.leaves(params))
  if n > MAX_PARAMS:
    raise ValueError(f"check_quantities forms P x P matrices: the network "
                     f"has P = {n} parameters, at most {MAX_PARAMS}; check a "
                     f"smaller one (the formulas do not depend on size)")
  if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
    raise ValueError(f"draws must be an int >= 2, got {draws!r}")
  key = jax.random.key(0) if key is None else key
  failed = {}
  eig_k = min(3, n) if n <= MAX_EIG_PARAMS else 0
  # Run once per model: compiled without XLA:CPU's LLVM passes (a harness
  # spends seconds optimizing a program that runs in milliseconds).
  out = _compile.jit_once(functools.partial(
      _compute, model, draws=draws, eig_k=eig_k, failed=failed))(params, x, y,
                                                                  key)
  out = jax.tree.map(np.asarray, out)
  layers = _layers(model, params)
  rows = _rows(out, layers, rtol, alpha, failed, n, eig_k)
  rows += _dp_rows(model, params, x, y, out["ref"]["pe"], layers, rtol, clip)
  return rows + _rop_rows(model, params, x, y, key)


def _rop_rows(model, params, x, y, key) -> list[Row]:
  r"""Each layer's R-operators (``fnn.hvp``'s building blocks) against
  ``jax.jvp`` of its own first-order code: :func:`fnn.check_layer_rops`,
  whose rows name the layer (the innermost failing path is the culprit). A
  layer that cannot run them (no ``jvp``, an activation without ``grad2``)
  is skipped here, as ``fnn.hvp``'s own row is."""
  from fnn.curvature_vp import check_layer_rops
  out = []
  for r in check_layer_rops(model, params, x, y, key=key):
    name, where = f"R-op {r.what}", f"{r.path} {r.layer}"
    if not r.ok and r.note and not math.isfinite(r.rel_err):
      out.append(_skip(name, where, f"skipped: {r.note}"))
    else:
      out.append(Row(name, where, r.max_abs_err, r.rel_err, 1e-8, r.ok,
                     r.note))
  return out


def _fail(name: str, e: Exception) -> Row:
  if _skippable(e):
    return _skip(name, ALL, f"skipped: {type(e).__name__}: {e}")
  return Row(name, ALL, math.inf, math.inf, math.nan, False,
             f"raised {type(e).__name__}: {e}")


def _rows(out, layers, rtol, alpha, failed, n, eig_k) -> list[Row]:
  ref, rows = out["ref"], [_fail(k, e) for k, e in failed.items()]
  pe, ggn = ref["pe"], ref["ggn"]
  sl = lambda v, l: v[..., l.start:l.stop]
  per_layer = lambda name, got, want: [
      _cmp(name, l.label, sl(got, l), sl(want, l), rtol) for l in layers]
  if "diag_ggn" in out:
    rows += per_layer("diag_ggn", out["diag_ggn"], np.diag(ggn))
  if "diag_ggn (mc)" in out:
    rows += [_ztest("diag_ggn (mc)", l.label, sl(out["diag_ggn (mc)"], l),
                    sl(np.diag(ggn), l), alpha) for l in layers]
  if "ggn_trace" in out:
    rows.append(_cmp("ggn_trace", ALL, out["ggn_trace"], np.trace(ggn), rtol))
  if "ggn_trace per example" in out:
    rows.append(_cmp("ggn_trace per example", ALL,
                     out["ggn_trace per example"], ref["trace_pe"], rtol))
  if "grad_gram" in out:
    rows.append(_cmp("grad_gram", ALL, out["grad_gram"], pe @ pe.T, rtol))
  if "gram" in out:
    rows += [_cmp("gram (kind)", l.label, g, sl(pe, l) @ sl(pe, l).T, rtol)
             for g, l in zip(out["gram"], layers)]
  if "grad_stats" in out:
    rows += _stats_rows(out["grad_stats"], pe, layers, rtol)
  rows += _kfac_rows(out, ref["kfac"], layers, rtol, alpha)
  for name, want in (("ggn_vp", lambda v: ggn @ v),
                     ("hvp", lambda v: ref["hessian"] @ v)):
    if name in out:
      rows += per_layer(name, out[name], want(ref["v"]))
    elif _optional(name) is None:
      rows.append(_skip(name, ALL, f"not available: fnn.{name} not defined"))
  if _optional("hessian_eigs") is None:
    rows.append(_skip("hessian_eigs", ALL,
                      "not available: fnn.hessian_eigs not defined"))
  elif not eig_k:
    rows.append(_skip("hessian_eigs", ALL, f"skipped: P = {n} > "
                      f"{MAX_EIG_PARAMS} (Lanczos for P steps is O(P^3))"))
  for name, mat in (("hessian_eigs", ref.get("hessian")),
                    ("hessian_eigs (ggn)", ggn)):
    if name in out and mat is not None:
      want = np.linalg.eigvalsh(mat)[::-1][:eig_k]
      rows.append(_cmp(name, ALL, out[name], want, EIG_RTOL,
                       note=f"top {eig_k}, Lanczos for P = {n} steps"))
  return rows


def _stats_rows(s, pe, layers, rtol) -> list[Row]:
  b = pe.shape[0]
  flat = lambda t: ravel_pytree(t)[0]
  sq = pe**2
  mean = pe.mean(0)
  rows = [_cmp("per-example norm", ALL, s.norms, np.linalg.norm(pe, axis=1),
               rtol)]
  for i, l in enumerate(layers):
    g = pe[:, l.start:l.stop]
    rows.append(_cmp("per-example norm", l.label, s.layer_norms[:, i],
                     np.linalg.norm(g, axis=1), rtol))
  for name, got, want in (("second moment", flat(s.second_moment),
                           sq.mean(0)),
                          ("variance", flat(s.variance), pe.var(0))):
    rows += [_cmp(name, l.label, got[l.start:l.stop], want[l.start:l.stop],
                  rtol) for l in layers]
  # McCandlish et al.'s estimators cancel: tolerances relative to the terms.
  ms, m2 = np.mean(np.sum(sq, 1)), np.sum(mean**2)
  ts = max(b / (b - 1) * (ms - m2), 0.0)
  gsq = (b * m2 - ms) / (b - 1)
  s_ts, s_gsq = b / (b - 1) * ms, (b * m2 + ms) / (b - 1)
  note = "relative to the terms that cancel"
  rows.append(_cmp("trace_sigma", ALL, s.trace_sigma, ts, rtol, s_ts, note))
  rows.append(_cmp("grad_sq_norm", ALL, s.grad_sq_norm, gsq, rtol, s_gsq,
                   note))
  ns = ts / gsq
  rows.append(_cmp("noise_scale", ALL, s.noise_scale, ns, rtol,
                   abs(ns) * (s_ts / max(ts, 1e-300) + s_gsq / abs(gsq)),
                   "relative to the condition of the ratio"))
  return rows


def _kfac_rows(out, refs, layers, rtol, alpha) -> list[Row]:
  rows = []
  got = {k: out.get(f"kfac {k}") for k in ("empirical", "exact", "mc")}
  for i, (l, ref) in enumerate(zip(layers, refs)):
    ks = {k: None if v is None else v[i] for k, v in got.items()}
    if all(v is None for v in ks.values()):
      if got["exact"] is not None:  # fnn returned None for this layer
        rows.append(_skip("kfac", l.label, "no Kronecker factors for this "
                          "layer (kfac_factors gives None)"))
      continue
    if ref is None:
      rows.append(_skip("kfac", l.label, "no reference for this layer type"))
      continue
    a_cov, a_mean, d_emp, d_exact = ref
    for kind, want in (("empirical", d_emp), ("exact", d_exact)):
      if ks[kind] is not None:
        rows.append(_cmp(f"kfac delta_cov ({kind})", l.label,
                         ks[kind].delta_cov, want, rtol))
    base = ks["exact"] if ks["exact"] is not None else ks["empirical"]
    if base is not None:
      rows.append(_cmp("kfac a_cov", l.label, base.a_cov, a_cov, rtol))
      rows.append(_cmp("kfac a_mean", l.label, base.a_mean, a_mean, rtol))
    if ks["mc"] is not None:
      rows.append(_ztest("kfac delta_cov (mc)", l.label, ks["mc"].delta_cov,
                         d_exact, alpha))
  return rows


def _dp_rows(model, params, x, y, pe, layers, rtol, clip) -> list[Row]:
  r"""DP-SGD's clipped mean with ``noise = 0``: ``clip`` must be concrete,
  so it runs after the main pass (default: the median reference norm)."""
  norms = np.linalg.norm(pe, axis=1)
  c = float(np.median(norms)) if clip is None else float(clip)
  try:
    dp = _compile.jit_once(lambda p, x, y: stats.dp_grad(
        model, p, x, y, clip=c, noise=0.0, key=jax.random.key(0)))(params, x,
                                                                    y)
  except Exception as e:  # noqa: BLE001 (reported as a failing row)
    return [_fail("dp_grad (noise 0)", e)]
  got = np.asarray(ravel_pytree(dp.grads)[0])
  scale = np.minimum(1.0, c / np.maximum(norms, 1e-300))
  want = scale @ pe / pe.shape[0]
  note = f"clip {c:.3g}: {int(np.sum(norms > c))} of {len(norms)} clipped"
  return [_cmp("dp_grad (noise 0)", l.label, got[l.start:l.stop],
               want[l.start:l.stop], rtol, note=note) for l in layers]


def failures(rows: list[Row]) -> list[Row]:
  r"""The rows that fail."""
  return [r for r in rows if not r.ok]


def format(rows: list[Row]) -> str:  # noqa: A001 (the harness's table)
  r"""A plain-text table, one line per row, and a verdict line."""
  head = ("quantity", "layer", "max abs err", "rel err", "tol", "ok", "note")
  cells = [head] + [
      (r.quantity, r.layer, f"{r.max_abs_err:.2e}", f"{r.rel_err:.2e}",
       f"{r.tol:.1e}", "ok" if r.ok else "FAIL", r.note) for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
  lines = ["  ".join([c.ljust(w) for c, w in zip(line, widths)] + [line[-1]])
           .rstrip() for line in cells]
  bad = failures(rows)
  lines.append(f"{len(rows)} rows: " + (f"{len(bad)} FAILED" if bad
                                         else "all ok"))
  return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
  r"""A markdown table, one line per row."""
  lines = ["| quantity | layer | max abs err | rel err | tol | ok | note |",
           "|---|---|---:|---:|---:|---|---|"]
  lines += [f"| {r.quantity} | {r.layer} | {r.max_abs_err:.2e} | "
            f"{r.rel_err:.2e} | {r.tol:.1e} | {'ok' if r.ok else 'FAIL'} | "
            f"{r.note} |" for r in rows]
  return "\n".join(lines)


def to_dicts(rows: list[Row]) -> list[dict]:
  r"""JSON-able rows (NaN and infinite errors as ``None``)."""
  fix = lambda v: v if not isinstance(v, float) or math.isfinite(v) else None
  return [{k: fix(v) for k, v in r._asdict().items()} for r in rows]


# --- The sweep (fnn gradcheck --quantities --all). --------------------------

# Every layer type, as arch specs (n_in, n_out, output, loss): Conv1d with
# stride/padding variety (2/2, 1/1 in a Residual, 3/0 over channels, 2/1),
# LayerNorm on [T, C] and on [n], Residual, Flatten, Dense; fused and not.
STACKS = (
    ("conv1d:3:3:2:2,elu,layernorm,res(conv1d:3:3:1:1,tanh),conv1d:2:2:3:0,"
     "flatten,res(layernorm,dense:4,gelu)", 11, 3, "softmax",
     "categorical_cross_entropy"),
    ("conv1d:2:3:2:1,silu,res(conv1d:2:3:1:1,tanh),flatten,dense:4,relu", 6,
     2, "sigmoid", "squared_error"))


def sweep_models(depths=(1, 2, 3, 4)) -> list:
  r"""One MLP per registered (output, loss) pair (depth ``depths[i %
  len]``, the hidden activations cycled so that every registered one
  appears), then :data:`STACKS` (every layer type)."""
  from fnn import activations, arch, losses, sweep
  from fnn.model import MLP
  hidden = activations.hidden_activations()
  pairs = losses.valid_pairs(activations.output_activations())
  models, i, slot = [], 0, 0  # slot: hidden layers so far
  while i < len(pairs) or (slot < len(hidden) and max(depths) > 1):
    out, loss = pairs[i % len(pairs)]
    depth = depths[i % len(depths)]
    acts = tuple(hidden[(slot + j) % len(hidden)] for j in range(depth - 1))
    slot += depth - 1
    sizes = (tuple(sweep.SWEEP_WIDTHS) * depth)[:depth] + (sweep.SWEEP_N_OUT,)
    models.append(MLP(sizes, activation=acts or hidden[0], output=out,
                      loss=loss))
    i += 1
  return models + [arch.build(spec, n_in, n_out, output=out, loss=loss)
                   for spec, n_in, n_out, out, loss in STACKS]

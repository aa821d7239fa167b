r"""Benchmark: fnn's hand-derived gradients against JAX autodiff, on the CPU.

Measures, in float32 on the CPU, networks with a softmax output and
categorical cross-entropy (``--arch``, default all three):

- ``mlp``: ReLU MLPs (``fnn.MLP``, glorot init) of sizes
  ``(40, 100, 100, 10)``, ``(784, 100, 10)`` and ``(784, 1024, 1024, 10)``
  (``--sizes``);
- ``resmlp``: MNIST-1D's residual MLP, ``fnn.arch.resmlp(40, 10)``
  (40 -> 100 ReLU -> residual [100 -> 100 ReLU] -> 10);
- ``cnn``: MNIST-1D's CNN, ``fnn.arch.cnn(40, 10)`` (three strided Conv1d
  layers of 25 channels with ReLU, flatten 125, dense 10);

each at batch 32, 128 and 1024 (``--batches``), the median time of three
comparisons (every function under ``jax.jit``):

  (a) ``fnn.grad`` vs ``jax.grad(model.mean_loss)``: ratio fnn / jax;
  (b) ``fnn.per_example_grads`` vs ``jax.vmap(jax.grad(one-example loss))``,
      the one-example loss being ``model.mean_loss(params, x[None], y[None])``:
      ratio fnn / jax;
  (c) ``fnn.per_example_grad_norms`` vs the L2 norms of the materialized
      ``jax.vmap(jax.grad(...))`` gradients: speedup jax / fnn.

Before timing a cell it checks that each fnn result equals its reference and
aborts (exit code 1) if not. Each pair is timed interleaved (fnn, jax, fnn,
jax, ...) so that machine noise hits both alike; the number of repeats adapts
to a time budget per comparison (at least 5, or 3 where one call pair alone
exceeds the budget; at most ``--repeats``). It then prints one row per
(sizes, batch), the medians / extremes of the ratios over the grid and
whether the targets hold, per architecture (each over its own cells):

  fnn.grad / jax.grad          median <= 1.00 and no cell above 1.15
  per_example_grad_norms       median speedup >= 5x
  per_example_grads ratio      median <= 0.70 (MLP cells only; the other
                               architectures' ratios are printed, no target)

The references are generic (any fnn network): ``jax.grad(model.mean_loss)``
and ``jax.vmap(jax.grad)`` of the one-example loss; inputs are
``x ~ N(0, 1)`` of ``[batch, *model.in_shape]``, rows redrawn away from
ReLU kinks (:func:`kink_safe_inputs`).

The exit code is 0 whether or not the targets hold: this is a benchmark, not
a test. The MLP grid takes about 2-3 minutes on 2 CPU cores and needs
about 13 GB of memory: the per-example gradients of 784-1024-1024-10 at batch
1024 are 7.6 GB, and ``jax.vmap(jax.grad)`` peaks at 12 GB making them (the
check therefore compares against the reference in batch chunks). The
``resmlp`` and ``cnn`` cells take about 2.5 minutes together (measured
with other processes busy) and little memory.

``--sizes`` alone (without ``--arch``) runs only those MLPs, as before the
other architectures existed. ``--conv-proto`` times a prototype of faster
Conv1d contractions (:func:`install_conv_proto`) in place of fnn's own, to
show what a change to ``fnn/layers/kinds.py`` would gain.

``--curvature`` times, instead of (a)-(c), the curvature group per cell:
``fnn.grad``, ``fnn.diag_ggn`` (exact), ``fnn.ggn_trace`` (batch and
``per_example=True``), ``fnn.grad_gram``, ``fnn.ggn_vp``, ``fnn.hvp`` (each
skipped with a note where this fnn lacks it) and JAX's GGN-vector
(``jax.jvp`` of the logits, the loss's Hessian in them, ``jax.vjp``) and
Hessian-vector (``jax.jvp(jax.grad(mean_loss))``) products, one call each per
interleaved round (``--budget`` seconds per function), printed as multiples
of ``fnn.grad``'s median in the same rounds, with the work bound (multiply-
adds over ``fnn.grad``'s, :func:`curvature_work_bounds`) and XLA's flop count
of each compiled program. Checked first: on the first ``CURV_CHECK_N``
examples against brute force (``diag(J^T H J)`` from materialized
Jacobians and loss Hessians; the Gram of materialized ``vmap(jax.grad)``
gradients), ``ggn_vp`` and ``hvp`` against JAX's on the batch, and the
timed results against each other. Targets at 784-1024-1024-10, batch 128:
diag GGN <= 3.6x ``fnn.grad``, GGN trace (batch and per example) <= 3x,
Gram <= 1x, ``ggn_vp`` <= 2x, ``hvp`` no slower than JAX's. Memory stays
under 2 GB (no per-example gradients beyond 32 in the check); the headline
MLP cells take about 1 (batch 32, 128) and 3 minutes (1024) on 2 busy
cores. ``--hvp-proto`` adds ``fnn.hvp`` compiled under a prototype
(:func:`hvp_proto`) to the rounds, ``--trace-proto`` a prototype of
``ggn_trace`` (:func:`proto_ggn_trace`).

Usage:
  make bench
  .venv/bin/python scripts/bench_grads.py [--arch mlp,resmlp,cnn]
      [--sizes 40,100,100,10] [--batches 32,128] [--repeats 100]
      [--budget 2.0] [--markdown] [--json PATH] [--conv-proto]
      [--curvature [--hvp-proto] [--trace-proto]]
"""
from __future__ import annotations

import os

# The benchmark is defined on the CPU; set before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Optional  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import fnn  # noqa: E402

if jax.default_backend() != "cpu":
  # On a GPU, JAX's float32 matmuls default to TF32 (10-bit mantissas), which
  # the 1e-4 checks below reject; time IEEE float32, as on the CPU.
  jax.config.update("jax_default_matmul_precision", "highest")

DEFAULT_SIZES = ((40, 100, 100, 10), (784, 100, 10), (784, 1024, 1024, 10))
DEFAULT_BATCHES = (32, 128, 1024)
ARCHS = ("mlp", "resmlp", "cnn")

# Targets, over the full grid.
GRAD_RATIO_MEDIAN_MAX = 1.0
GRAD_RATIO_CELL_MAX = 1.15
PER_EXAMPLE_RATIO_MEDIAN_MAX = 0.7
NORMS_SPEEDUP_MEDIAN_MIN = 5.0

# Float32 tolerance of the correctness check. Both sides compute the same
# math but sum in different orders (the batch mean as one a_prev.T @ delta
# matmul vs autodiff's transposed dots, dot products of up to 1024 terms), so
# relative differences of a few sqrt(n) * eps ~ 1e-5 are expected (float32
# eps = 1.2e-7); rtol 1e-4 leaves headroom. atol 1e-5 covers entries that
# cancel to near zero, where a relative error means nothing (gradient entries
# here are about 1e-4 to 1e-1).
RTOL = 1e-4
ATOL = 1e-5
# Inputs: rows of x with a hidden pre-activation within this of 0 are redrawn
# (XLA's CPU and GPU, and torch, round differently; a pre-activation that
# close to a ReLU kink could take the other branch in one of them).
KINK_MARGIN = 1e-4

# Fewest timed repeats per comparison: a median of 5 survives two outliers
# (this 2-core machine has the odd 300 ms hiccup); only pairs slower than the
# whole budget (the gigabyte per-example cells) get just 3.
MIN_REPEATS = 5
MIN_REPEATS_SLOW = 3

# Per-example references are checked in batch chunks of this many examples
# (bounds the memory of the check; the timed calls use the whole batch).
CHECK_CHUNK = 256

COMPARISONS = (
    # key, title, metric: "ratio" (fnn / jax) or "speedup" (jax / fnn)
    ("grad", "fnn.grad vs jax.grad", "ratio"),
    ("per_example", "fnn.per_example_grads vs vmap(jax.grad)", "ratio"),
    ("norms", "fnn.per_example_grad_norms vs norms of vmap(jax.grad)",
     "speedup"),
)


# --------------------------------------------------------------------------
# The functions compared.

FNN_FNS = {
    "grad": jax.jit(fnn.grad, static_argnums=0),
    "per_example": jax.jit(fnn.per_example_grads, static_argnums=0),
    "norms": jax.jit(fnn.per_example_grad_norms, static_argnums=0),
}


def reference_fns(model) -> dict:
  r"""The jitted autodiff references for any fnn network ``model`` (an
  ``fnn.MLP`` or ``fnn.Sequential``), keyed like ``FNN_FNS``: they use only
  ``model.mean_loss``, which is plain batched ``jnp``/``lax``."""

  def one_example_loss(params, xi, yi):
    return model.mean_loss(params, xi[None], yi[None])

  per_example = jax.vmap(jax.grad(one_example_loss), in_axes=(None, 0, 0))

  def norms(params, x, y):
    # Materialize every example's gradient, then the L2 norm of its whole
    # gradient (all layers' w and b together).
    grads = per_example(params, x, y)
    sq = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1))**2, axis=1)
             for g in jax.tree.leaves(grads))
    return jnp.sqrt(sq)

  return {
      "grad": jax.jit(jax.grad(model.mean_loss)),
      "per_example": jax.jit(per_example),
      "norms": jax.jit(norms),
  }


# --------------------------------------------------------------------------
# A prototype for fnn/layers/kinds.py (``--conv-proto``): faster Conv1d
# contractions, timed here to show the gain. Not fnn's code; off by default.


def _rows2d(v):
  return v.reshape(-1, v.shape[-1])  # [B, T, n] -> [B T, n]


def _proto_conv_total(self, f):
  r"""``sum_{b,t} p_bt^T d_bt`` as ONE 2-D matmul over the ``B T`` rows:
  XLA's CPU dot with two contracting dims (``einsum("btp,bto->po")``) was
  2.5x slower on MNIST-1D's CNN at batch 1024."""
  return self.make(self._w(_rows2d(f.patches).T @ _rows2d(f.delta)),
                   jnp.sum(f.delta, axis=(0, 1)))


def _proto_conv_norms(self, f, scaled):
  r"""Squared norms without the max-scaling passes over the factors (a
  batch-level ``lax.cond`` falls back to the scaled ``scaled(self, f)``
  only when some square overflowed or came near underflow); the
  materialized form as a fused broadcast-multiply-sum over ``t``."""
  _, t, p = f.patches.shape
  if self.uses_gram(t, p, f.delta.shape[-1]):
    w_sq = jnp.einsum("bts,bts->b",
                      jnp.einsum("btp,bsp->bts", f.patches, f.patches),
                      jnp.einsum("bto,bso->bts", f.delta, f.delta))
  else:
    g = jnp.sum(f.patches[:, :, :, None] * f.delta[:, :, None, :], axis=1)
    w_sq = jnp.sum(g * g, axis=(1, 2))
  b = jnp.sum(f.delta, axis=1)
  sq = w_sq + jnp.sum(b * b, axis=-1)
  fi = jnp.finfo(sq.dtype)
  ok = jnp.all(jnp.isfinite(sq) & (sq >= fi.tiny / fi.eps**2))
  return jax.lax.cond(ok, lambda: jnp.sqrt(sq), lambda: scaled(self, f))


def install_conv_proto() -> None:
  r"""Replaces ``fnn.layers.kinds.Conv.total`` and ``.norms`` with the
  prototype above, for this process (the checks still run against the
  autodiff references)."""
  from fnn.layers import kinds
  scaled = kinds.Conv.norms
  kinds.Conv.total = _proto_conv_total
  kinds.Conv.norms = lambda self, f: _proto_conv_norms(self, f, scaled)


@contextlib.contextmanager
def hvp_proto():
  r"""A prototype for ``fnn/curvature_vp.py`` and ``fnn/layers/{dense,
  kinds}.py`` (``--hvp-proto``), active while a function is traced: the R
  of the input is a structural zero (``None``, as JAX's symbolic zeros)
  instead of ``zeros_like(x)``, and the dense kind's ``total_jvp`` forms
  only the two products of the product rule.

  fnn.hvp today traces, per dense layer, ``T(p, R{d}) + T(R{p}, d) - T(0,
  d)`` and, for the first layer, ``R{x} = 0`` through ``R{x} @ w`` and
  ``R{x}.T @ delta``; XLA does not fold these ``dot(broadcast(0), .)``
  (compiled cost 3.27 GFLOP at 784-1024-1024-10, batch 128, against 2.52
  for ``jax.jvp(jax.grad)``). Here: the first dense layer's ``jvp`` returns
  ``(a_prev @ v_w + v_b, None)`` for ``R{x} = None``, and
  ``Outer.total_jvp(f, r) = (a.T @ R{d} [+ R{a}.T @ d unless None],
  sum R{d})``; and an activation whose ``grad2`` is
  ``piecewise_linear_grad2`` (ReLU, leaky ReLU: ``sigma'' = 0``) drops the
  ``g * sigma''(z) * R{z}`` term of its ``backward_jvp`` (XLA keeps ``g * 0``
  under IEEE rules, which keeps the primal delta of the first layer alive,
  and with it ``delta_2 @ w_2.T``, 1M multiply-adds an example here, that
  ``jax.jvp(jax.grad)`` never forms). Not fnn's code; off by default."""
  from fnn import activations as act_lib
  from fnn import curvature_vp as cvp
  from fnn.layers import base, dense, kinds
  saved = (cvp._forward_jvp, dense.DenseLayer.jvp,
           kinds.Outer.__dict__.get("total_jvp"),
           act_lib.Activation.backward_jvp)

  def act_backward_jvp(self, z, a, g, r_z, r_g):
    if self.grad2 is act_lib.piecewise_linear_grad2:  # sigma'' = 0
      return r_g * self.grad(z, a)
    return saved[3](self, z, a, g, r_z, r_g)

  def forward_jvp(model, full, vf, x):
    z, caches = base.run_forward(model.layers, full, x)
    r_x = (None if isinstance(model.layers[0], dense.DenseLayer)
           else jnp.zeros_like(x))
    r_z, r_caches = base.run_jvp(model.layers, full, caches, vf, r_x)
    return z, caches, r_z, r_caches

  def dense_jvp(self, params, cache, v, r_x):
    if r_x is None:
      return cache @ v.w + v.b, None
    return saved[1](self, params, cache, v, r_x)

  def outer_total_jvp(self, f, r):
    w = f.a_prev.T @ r.delta  # (n_in, n_out)
    if r.a_prev is not None:
      w = w + r.a_prev.T @ f.delta
    return self.make(w, jnp.sum(r.delta, axis=0))

  cvp._forward_jvp, dense.DenseLayer.jvp = forward_jvp, dense_jvp
  kinds.Outer.total_jvp = outer_total_jvp
  act_lib.Activation.backward_jvp = act_backward_jvp
  try:
    yield
  finally:
    cvp._forward_jvp, dense.DenseLayer.jvp = saved[:2]
    act_lib.Activation.backward_jvp = saved[3]
    if saved[2] is None:
      del kinds.Outer.total_jvp
    else:
      kinds.Outer.total_jvp = saved[2]


def hvp_proto_fn(model, params, x, y, v):
  r"""``fnn.hvp`` traced and compiled under :func:`hvp_proto` for these
  shapes, as ``(model, params, x, y, v) ->`` (the model must be this one)."""
  with hvp_proto():
    compiled = jax.jit(lambda p, x_, y_, v_: fnn.hvp(model, p, x_, y_, v_)
                       ).lower(params, x, y, v).compile()
  fn = lambda m, p, x_, y_, v_: compiled(p, x_, y_, v_)  # noqa: E731
  fn.compiled = compiled
  return fn


def proto_ggn_trace(model, params, x, y, *, per_example: bool = False):
  r"""A prototype for ``fnn/curvature.py``'s ``ggn_trace``
  (``--trace-proto``): the same traces, with each example's input factor
  reduced once instead of once per column.

  ``ggn_trace`` flattens the square-root factors to ``B K`` rows and calls
  each kind's ``norms``, so a dense layer's scaled ``|a_prev|`` (a max, a
  divide, a sum of squares) runs over ``[B, K, n_in]``, ``K`` copies of every
  input, and a Conv1d's Gram form builds the patches' ``[T, T]`` Gram ``K``
  times. These passes are not multiply-adds (XLA's flop count is at the
  work bound) but memory traffic: at 784-100-10, batch 1024, the trace took
  5.8x ``fnn.grad`` against a work bound of 0.56x. Here, per dense layer,
  ``sum_k |g_bk|^2 = (|a_b|^2 + 1) sum_k |d_bk|^2`` with ``|a_b|`` from
  column 0 (scaled as before: ``(|d_bk| hypot(|a_b|, 1))^2``); per Conv1d
  in the Gram form ``sum_{t,s} (p_t . p_s) sum_k (d_kt . d_ks)`` with the
  patch Gram once per example (unscaled: fnn's version would keep its
  scaled fallback); any other kind as before. Not fnn's code."""
  from fnn import curvature, gradients
  from fnn.layers import kinds
  fs = curvature.sqrt_factors(model, params, x, y)
  b = x.shape[0]
  per = jnp.zeros((b,), x.dtype)
  for _, _, kind, f in gradients.kind_leaves(model, fs):
    if isinstance(kind, kinds.Outer):
      a = kinds.l2_norm(f.a_prev[:, 0])  # (B,)
      d = kinds.l2_norm(f.delta)  # (B, K)
      per = per + jnp.sum((d * jnp.hypot(a, 1.0)[:, None]) ** 2, axis=1)
    elif isinstance(kind, kinds.Conv) and kind.uses_gram(
        *f.patches.shape[2:], f.delta.shape[-1]):
      p = f.patches[:, 0]  # (B, T, k c_in)
      pg = jnp.einsum("btp,bsp->bts", p, p)
      dg = jnp.einsum("bkto,bkso->bts", f.delta, f.delta)  # summed over k
      bias = jnp.sum(jnp.sum(f.delta, axis=2) ** 2, axis=(1, 2))  # (B,)
      per = per + jnp.maximum(jnp.einsum("bts,bts->b", pg, dg), 0) + bias
    else:
      rows = jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), f)
      per = per + jnp.sum((kind.norms(rows) ** 2).reshape(b, -1), axis=1)
  return per if per_example else jnp.mean(per)


# --------------------------------------------------------------------------
# Correctness.


@jax.jit
def _check_leaf(got, want):
  r"""``(max |got - want|, max excess over atol + rtol |want|)``; NaN-safe."""
  err = jnp.abs(got - want)
  excess = err - (ATOL + RTOL * jnp.abs(want))
  excess = jnp.where(jnp.isfinite(err), excess, jnp.inf)
  return jnp.max(err), jnp.max(excess)


def check_equal(label: str, got, want) -> float:
  r"""Aborts the benchmark unless ``got`` matches ``want`` leaf by leaf.

  Returns:
    The largest absolute difference over all leaves.
  """
  got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  if (jax.tree.structure(got) != jax.tree.structure(want) or
      [g.shape for g in got_leaves] != [w.shape for w in want_leaves]):
    _abort(f"{label}: structure/shapes differ: fnn "
           f"{[g.shape for g in got_leaves]} vs reference "
           f"{[w.shape for w in want_leaves]}")
  worst = 0.0
  for i, (g, w) in enumerate(zip(got_leaves, want_leaves)):
    err, excess = (float(v) for v in _check_leaf(g, w))
    if not excess <= 0.0:
      _abort(f"{label}: leaf {i} (shape {tuple(g.shape)}) differs from the "
             f"reference: max |fnn - ref| = {err:.3g} exceeds "
             f"atol {ATOL:g} + rtol {RTOL:g} * |ref| by {excess:.3g}")
    worst = max(worst, err)
  return worst


def _abort(message: str):
  print(f"\nbench_grads.py: MISMATCH, aborting: {message}", file=sys.stderr)
  sys.exit(1)


# --------------------------------------------------------------------------
# Timing.


def _time_call(fn, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))  # the result is dropped right away
  return time.perf_counter() - t0


def time_pair(fn_a, args_a, fn_b, args_b, max_repeats: int,
              budget_s: float):
  r"""Interleaved timing a, b, a, b, ... of two warmed-up functions.

  Repeats until ``repeats * median(pair time)`` reaches ``budget_s``, at
  least ``MIN_REPEATS`` times (``MIN_REPEATS_SLOW`` where one pair alone
  takes longer than the budget) and at most ``max_repeats`` times. The median
  keeps one slow pair (say, the first after a cell that churned gigabytes)
  from cutting the repeats short.

  Returns:
    ``(samples_a, samples_b)``: per-call wall times in seconds.
  """
  samples_a, samples_b, pairs = [], [], []
  while len(pairs) < max_repeats:
    if pairs:
      n, pair_s = len(pairs), statistics.median(pairs)
      least = MIN_REPEATS_SLOW if pair_s > budget_s else MIN_REPEATS
      if n >= least and n * pair_s >= budget_s:
        break
    samples_a.append(_time_call(fn_a, args_a))
    samples_b.append(_time_call(fn_b, args_b))
    pairs.append(samples_a[-1] + samples_b[-1])
  return samples_a, samples_b


def model_label(model) -> str:
  r"""A cell's model in tables: the sizes of an MLP (``40-100-100-10``), the
  architecture of a Sequential (``resmlp 40-100-10``, ``cnn 40-25x3-10``)."""
  if isinstance(model, fnn.MLP):
    return _sizes_text(model.sizes)
  convs = [l for l in model.layers if isinstance(l, fnn.layers.Conv1d)]
  n_in = "x".join(map(str, model.in_shape))
  if convs:
    return (f"cnn {n_in}-{convs[0].out_channels}x{len(convs)}-"
            f"{model.n_out}")
  hidden = [l.n_out for l in model.layers if isinstance(l, fnn.layers.Dense)]
  return f"resmlp {n_in}-{'-'.join(map(str, hidden))}"


def arch_of(model) -> str:
  r"""``mlp``, ``cnn`` (a Sequential with a Conv1d) or ``resmlp``."""
  if isinstance(model, fnn.MLP):
    return "mlp"
  return ("cnn" if any(isinstance(l, fnn.layers.Conv1d) for l in model.layers)
          else "resmlp")


def bench_cell(model, params, x, y, max_repeats, budget_s, log) -> dict:
  r"""Checks then times the three comparisons for one (model, batch)."""
  refs = reference_fns(model)
  args = (params, x, y)
  name = model_label(model)
  cell = {"arch": arch_of(model), "model": name,
          "sizes": list(model.sizes) if isinstance(model, fnn.MLP) else None,
          "batch": int(x.shape[0])}
  # Compile both sides and check fnn against the reference, before timing.
  for key, title, _ in COMPARISONS:
    t0 = time.perf_counter()
    label = f"{title}, {name}, batch {x.shape[0]}"
    got = jax.block_until_ready(FNN_FNS[key](model, *args))
    if key == "grad" or x.shape[0] <= CHECK_CHUNK:
      want = jax.block_until_ready(refs[key](*args))
      max_err = check_equal(label, got, want)
      del got, want  # the per-example gradients can be gigabytes
    else:
      # Per-example results are per example, so the reference can be checked
      # against batch slices of fnn's full result: holding fnn's 7.6 GB and
      # the full reference (12 GB peak) at once does not fit in 23 GB.
      max_err = 0.0
      for lo in range(0, x.shape[0], CHECK_CHUNK):
        sl = slice(lo, lo + CHECK_CHUNK)
        want = jax.block_until_ready(refs[key](params, x[sl], y[sl]))
        max_err = max(max_err, check_equal(
            f"{label}, examples {lo}:{lo + CHECK_CHUNK}",
            jax.tree.map(lambda g, sl=sl: g[sl], got), want))
        del want
      del got
      jax.block_until_ready(refs[key](*args))  # compile the full-batch ref
    cell[key] = {"max_abs_diff": max_err,
                 "warmup_s": time.perf_counter() - t0}
  for key, _, metric in COMPARISONS:
    s_fnn, s_ref = time_pair(FNN_FNS[key], (model, *args), refs[key], args,
                             max_repeats, budget_s)
    fnn_ms = 1e3 * statistics.median(s_fnn)
    ref_ms = 1e3 * statistics.median(s_ref)
    cell[key].update(
        fnn_ms=fnn_ms, ref_ms=ref_ms, repeats=len(s_fnn),
        fnn_samples_ms=[1e3 * s for s in s_fnn],
        ref_samples_ms=[1e3 * s for s in s_ref])
    if metric == "ratio":
      cell[key]["ratio"] = fnn_ms / ref_ms
    else:
      cell[key]["speedup"] = ref_ms / fnn_ms
  log(f"  {name:>18} batch {x.shape[0]:>5}: "
      + ", ".join(
          f"{k} {cell[k]['fnn_ms']:.3g}/{cell[k]['ref_ms']:.3g} ms "
          f"x{cell[k]['repeats']}" for k, *_ in COMPARISONS))
  return cell


# --------------------------------------------------------------------------
# Curvature (``--curvature``): fnn's exact-GGN family and curvature-vector
# products, each timed as a multiple of ``fnn.grad`` in the same rounds.

# Brute-force references (Jacobians, materialized per-example gradients) on
# the first CURV_CHECK_N examples of a cell, CURV_CHECK_CHUNK at a time: the
# Jacobian of 784-1024-1024-10 is 10 x 1.86M numbers (74 MB) an example.
CURV_CHECK_N = 32
CURV_CHECK_CHUNK = 8
# Curvature values span decades within a leaf (a GGN diagonal entry is a
# sum of squares that can be ~1e-9 of the leaf's largest), and both sides
# sum up to n_out x 1024 float32 terms in different orders, so the absolute
# tolerance is relative to the leaf's largest |entry| (as bench_peers.py's
# STATS_ATOL): 1e-5 of it, ~100 float32 eps.
CURV_ATOL_REL = 1e-5
# Consistency of two fnn results of the full batch (a trace and the sum of
# the diagonal; the mean of the per-example traces and the batch trace):
# sums of up to 1.9M positive float32 terms in different orders.
CURV_CONSISTENCY_RTOL = 1e-4

# key, column title, target (max multiple of fnn.grad at TARGET_CELL, or
# None), what the target is measured against.
CURVATURE = (
    ("diag_ggn", "diag GGN", 3.6),
    ("ggn_trace", "GGN trace", 3.0),
    ("ggn_trace_pe", "trace/ex", 3.0),
    ("grad_gram", "Gram", 1.0),
    ("ggn_vp", "ggn_vp", 2.0),
    ("hvp", "hvp", None),
    ("hvp_proto", "hvp proto", None),
    ("trace_proto", "trace proto", None),
    ("trace_pe_proto", "trace/ex proto", None),
    ("jax_ggn_vp", "jax GGN-vp", None),
    ("jax_hvp", "jvp(grad)", None),
)
CURV_TARGET_CELL = ((784, 1024, 1024, 10), 128)
HVP_VS_JAX_MAX = 1.0  # fnn.hvp no slower than jax.jvp(jax.grad(mean_loss))
TANGENT_KEY = 7  # v ~ N(0, 1), params-shaped, for ggn_vp and hvp


def curvature_fns() -> dict:
  r"""fnn's jitted curvature functions, ``(model, params, x, y, v) ->``,
  keyed like ``CURVATURE``; ``ggn_vp``/``hvp`` only where fnn has them."""
  jit = lambda f: jax.jit(f, static_argnums=0)  # noqa: E731
  fns = {
      "grad": lambda m, p, x, y, v: FNN_FNS["grad"](m, p, x, y),
      "diag_ggn": _drop_v(jit(fnn.diag_ggn)),
      "ggn_trace": _drop_v(jit(fnn.ggn_trace)),
      "ggn_trace_pe": _drop_v(jit(functools.partial(fnn.ggn_trace,
                                                    per_example=True))),
      "grad_gram": _drop_v(jit(fnn.grad_gram)),
  }
  for name in ("ggn_vp", "hvp"):
    if hasattr(fnn, name):
      fns[name] = jit(getattr(fnn, name))
  return fns


def _drop_v(fn):
  return lambda m, p, x, y, v: fn(m, p, x, y)


def _softmax_ce(z, label):
  r"""The loss at the logits ``z: [n_out]`` of an integer ``label``, written
  independently of fnn (optax)."""
  return optax.softmax_cross_entropy_with_integer_labels(z, label)


def curvature_refs(model) -> dict:
  r"""JAX-autodiff references for softmax + cross-entropy networks (the
  GGN's split at the logits ``z = model._logits``), keyed like fnn's.

  ``jax_hvp``: ``jax.jvp(jax.grad(model.mean_loss))``; ``jax_ggn_vp``:
  ``J^T H J v / B`` from ``jax.jvp`` of the logits, the loss's Hessian-vector
  product in ``z`` and ``jax.vjp``; ``chunk``: for a few examples, the sum of
  ``diag(J_b^T H_b J_b)`` (params-shaped) and each one's trace, from the
  materialized Jacobian ``J_b`` and Hessian ``H_b`` (``jax.jacrev``,
  ``jax.hessian``); ``per_example``: ``jax.vmap(jax.grad)``, for the Gram.
  """
  def logits(p, x):
    return model._logits(p, x)  # the network without its output activation

  def mean_ce(z, y):
    return jnp.mean(jax.vmap(_softmax_ce)(z, y))

  def jax_hvp(params, x, y, v):
    return jax.jvp(jax.grad(lambda p: model.mean_loss(p, x, y)), (params,),
                   (v,))[1]

  def jax_ggn_vp(params, x, y, v):
    z, jv = jax.jvp(lambda p: logits(p, x), (params,), (v,))
    hjv = jax.jvp(jax.grad(lambda u: mean_ce(u, y)), (z,), (jv,))[1]
    return jax.vjp(lambda p: logits(p, x), params)[1](hjv)[0]

  def one_diag(params, xi, yi):
    z = logits(params, xi[None])[0]
    jac = jax.jacrev(lambda p: logits(p, xi[None])[0])(params)  # [K, ...]
    h = jax.hessian(_softmax_ce)(z, yi)  # (K, K)
    return jax.tree.map(lambda j: jnp.einsum("k...,kl,l...->...", j, h, j),
                        jac)

  def chunk(params, x, y):
    diags = jax.vmap(one_diag, in_axes=(None, 0, 0))(params, x, y)
    traces = sum(jnp.sum(d.reshape(d.shape[0], -1), 1)
                 for d in jax.tree.leaves(diags))
    return jax.tree.map(lambda d: jnp.sum(d, 0), diags), traces

  return {"jax_hvp": jax.jit(jax_hvp), "jax_ggn_vp": jax.jit(jax_ggn_vp),
          "chunk": jax.jit(chunk),
          "per_example": reference_fns(model)["per_example"]}


@jax.jit
def _check_scaled(got, want):
  r"""``(max |got - want|, max excess)`` with ``atol = CURV_ATOL_REL max
  |want|`` and ``rtol = RTOL``."""
  err = jnp.abs(got - want)
  tol = CURV_ATOL_REL * jnp.max(jnp.abs(want)) + RTOL * jnp.abs(want)
  return jnp.max(err), jnp.max(jnp.where(jnp.isfinite(err), err - tol,
                                         jnp.inf))


def check_scaled(label: str, got, want) -> float:
  r"""Aborts unless ``got`` matches ``want`` leaf by leaf to ``RTOL`` and
  ``CURV_ATOL_REL`` of each leaf's largest entry; returns the largest
  absolute difference."""
  got_l, want_l = jax.tree.leaves(got), jax.tree.leaves(want)
  if [g.shape for g in got_l] != [w.shape for w in want_l]:
    _abort(f"{label}: shapes differ: fnn {[g.shape for g in got_l]} vs "
           f"reference {[w.shape for w in want_l]}")
  worst = 0.0
  for i, (g, w) in enumerate(zip(got_l, want_l)):
    err, excess = (float(t) for t in _check_scaled(g, w))
    if not excess <= 0.0:
      _abort(f"{label}: leaf {i} (shape {tuple(g.shape)}): max |fnn - ref| "
             f"= {err:.3g} exceeds {CURV_ATOL_REL:g} max|ref| + {RTOL:g} "
             f"|ref| by {excess:.3g}")
    worst = max(worst, err)
  return worst


def _check_rel(label: str, got, want) -> float:
  got, want = float(got), float(want)
  rel = abs(got - want) / max(abs(want), 1e-30)
  if not rel <= CURV_CONSISTENCY_RTOL:
    _abort(f"{label}: {got!r} vs {want!r} (relative {rel:.3g} > "
           f"{CURV_CONSISTENCY_RTOL:g})")
  return rel


def check_curvature(model, params, x, y, v, fns, refs) -> dict:
  r"""Checks fnn's curvature results before any timing; returns the largest
  differences.

  On the first ``CURV_CHECK_N`` examples, against brute force:
  ``diag_ggn`` vs ``mean_b diag(J_b^T H_b J_b)``, ``ggn_trace`` vs its sum,
  per-example traces vs each ``tr(J_b^T H_b J_b)``, ``grad_gram`` vs
  ``G G^T`` of the materialized ``vmap(jax.grad)`` gradients. On the full
  batch: ``ggn_vp`` and ``hvp`` vs JAX's (``jax_ggn_vp``, ``jax_hvp``), and
  the timed curvature results against each other (batch trace = sum of the
  diagonal = mean of the per-example traces; the Gram's diagonal = the
  squared ``per_example_grad_norms``).
  """
  where = f"{model_label(model)}, batch {x.shape[0]}"
  n = min(CURV_CHECK_N, x.shape[0])
  xs, ys = x[:n], y[:n]
  diag_sum, traces = None, []
  for lo in range(0, n, CURV_CHECK_CHUNK):
    d, t = refs["chunk"](params, xs[lo:lo + CURV_CHECK_CHUNK],
                         ys[lo:lo + CURV_CHECK_CHUNK])
    diag_sum = d if diag_sum is None else jax.tree.map(jnp.add, diag_sum, d)
    traces.append(t)
  diag_ref = jax.tree.map(lambda d: d / n, diag_sum)
  traces = jnp.concatenate(traces)
  sl = f"{where}, examples 0:{n}"
  out = {
      "diag_ggn": check_scaled(f"diag_ggn vs diag(J^T H J), {sl}",
                               fns["diag_ggn"](model, params, xs, ys, v),
                               diag_ref),
      "ggn_trace": check_scaled(
          f"ggn_trace vs sum of diag(J^T H J), {sl}",
          fns["ggn_trace"](model, params, xs, ys, v),
          sum(jnp.sum(d) for d in jax.tree.leaves(diag_ref))),
      "ggn_trace_pe": check_scaled(
          f"ggn_trace(per_example) vs tr(J_b^T H_b J_b), {sl}",
          fns["ggn_trace_pe"](model, params, xs, ys, v), traces),
  }
  g = jnp.concatenate([l.reshape(n, -1) for l in jax.tree.leaves(
      refs["per_example"](params, xs, ys))], axis=1)
  out["grad_gram"] = check_scaled(f"grad_gram vs G G^T of vmap(jax.grad), "
                                  f"{sl}", fns["grad_gram"](model, params, xs,
                                                            ys, v), g @ g.T)
  del g
  for key, ref in (("ggn_vp", "ggn_vp"), ("hvp", "hvp"),
                   ("hvp_proto", "hvp")):
    if key in fns:
      out[key] = check_scaled(
          f"{key} vs {'jax.jvp(jax.grad)' if ref == 'hvp' else 'jvp/vjp'}, "
          f"{where}", fns[key](model, params, x, y, v),
          refs[f"jax_{ref}"](params, x, y, v))
  # The full-batch results that are timed, against each other.
  args = (model, params, x, y, v)
  for key, ref in (("trace_proto", "ggn_trace"),
                   ("trace_pe_proto", "ggn_trace_pe")):
    if key in fns:
      out[key] = check_scaled(f"--trace-proto {key} vs fnn's {ref}, {where}",
                              fns[key](*args), fns[ref](*args))
  diag_total = sum(jnp.sum(d) for d in jax.tree.leaves(
      fns["diag_ggn"](*args)))
  trace = fns["ggn_trace"](*args)
  out["trace_vs_diag_rel"] = _check_rel(
      f"ggn_trace vs sum(diag_ggn), {where}", trace, diag_total)
  out["trace_pe_mean_rel"] = _check_rel(
      f"mean(ggn_trace(per_example)) vs ggn_trace, {where}",
      jnp.mean(fns["ggn_trace_pe"](*args)), trace)
  out["gram_diag"] = check_scaled(
      f"diag(grad_gram) vs per_example_grad_norms**2, {where}",
      jnp.diag(fns["grad_gram"](*args)),
      FNN_FNS["norms"](model, params, x, y) ** 2)
  return out


def time_rounds(calls, max_repeats: int, budget_s: float) -> list[list]:
  r"""Interleaved rounds ``f1, f2, ..., f1, ...`` of warmed-up calls
  ``[(fn, args)]``: one call each a round, until ``rounds *
  median(round)`` reaches ``budget_s`` (at least ``MIN_REPEATS`` rounds,
  ``MIN_REPEATS_SLOW`` where one round exceeds the budget; at most
  ``max_repeats``). Returns per-call seconds, one list per function."""
  samples, rounds = [[] for _ in calls], []
  while len(rounds) < max_repeats:
    if rounds:
      n, round_s = len(rounds), statistics.median(rounds)
      least = MIN_REPEATS_SLOW if round_s > budget_s else MIN_REPEATS
      if n >= least and n * round_s >= budget_s:
        break
    for s, (fn, args) in zip(samples, calls):
      s.append(_time_call(fn, args))
    rounds.append(sum(s[-1] for s in samples))
  return samples


def curvature_work_bounds(sizes, batch: int) -> dict:
  r"""Multiply-adds per example of each quantity over ``fnn.grad``'s: the
  multiple of ``fnn.grad`` at equal FLOP/s (an MLP; ``K = n_out``).

  ``F = sum n_in n_out`` (a forward pass, or one weight contraction over
  the batch), ``D = F - n_0 n_1`` (the deltas below the top layer; the
  input's is not needed), ``S = sum (n_in + n_out)``:

  * ``fnn.grad``: forward, deltas, ``a.T @ d``: ``2F + D``;
  * ``diag_ggn``: forward, ``K`` columns of deltas, ``(a^2).T @ sum_k d_k^2``:
    ``2F + K D``;
  * ``ggn_trace`` (either): forward and ``K D`` (the norms are ``O(K S)``);
  * ``grad_gram``: forward, deltas, ``a_i . a_j`` and ``d_i . d_j`` for
    ``B`` partners: ``F + D + B S``;
  * ``ggn_vp``: forward, R-forward ``F + D`` (``R{a_0} = 0``), deltas, the
    weight contraction: ``3F + 2D``;
  * ``hvp``: forward, R-forward ``F + D``, the deltas of layers 2.. ``D -
    n_1 n_2`` (with ``sigma'' = 0``, ReLU, the first layer's delta only
    meets ``R{x} = 0``), their R ``2D``, the R of the contraction ``2F -
    n_0 n_1``: ``4F + 4D - n_0 n_1 - n_1 n_2``; ``jax.jvp(jax.grad)`` the
    same (its primal gradient is dead code under ``jit``).

  XLA's cost analysis of the compiled programs (``compiled_flops_ratio``
  of a cell) matches these to 1% at 784-1024-1024-10, batch 128, except
  fnn's hvp (see :func:`hvp_proto`).
  """
  f = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  d = f - sizes[0] * sizes[1]
  k, s = sizes[-1], sum(sizes[:-1]) + sum(sizes[1:])
  grad = 2 * f + d
  hvp = 4 * f + 4 * d - sizes[0] * sizes[1] - (
      sizes[1] * sizes[2] if len(sizes) > 2 else 0)
  work = {"diag_ggn": 2 * f + k * d, "ggn_trace": f + k * d,
          "ggn_trace_pe": f + k * d, "trace_proto": f + k * d,
          "trace_pe_proto": f + k * d, "grad_gram": f + d + batch * s,
          "ggn_vp": 3 * f + 2 * d, "hvp": hvp, "hvp_proto": hvp,
          "jax_hvp": hvp, "jax_ggn_vp": 3 * f + 2 * d}
  return {key: w / grad for key, w in work.items()}


TRACE_PROTO = {
    "trace_proto": _drop_v(jax.jit(proto_ggn_trace, static_argnums=0)),
    "trace_pe_proto": _drop_v(jax.jit(functools.partial(
        proto_ggn_trace, per_example=True), static_argnums=0)),
}


def compiled_flops(fn, args) -> Optional[float]:
  r"""XLA's flop count of ``fn(*args)`` compiled (None if unavailable)."""
  try:
    compiled = getattr(fn, "compiled", None) or jax.jit(fn).lower(
        *args).compile()
    return float(compiled.cost_analysis()["flops"])
  except Exception:  # noqa: BLE001  (a backend without cost analysis)
    return None


def bench_curvature_cell(model, params, x, y, max_repeats, budget_s, log,
                         fns, hvp_proto_on: bool = False,
                         trace_proto_on: bool = False) -> dict:
  r"""Checks, then times ``fnn.grad`` and every curvature function of one
  (model, batch), interleaved; ratios are multiples of ``fnn.grad``."""
  loss = getattr(model, "loss", None)
  if getattr(loss, "name", None) != "categorical_cross_entropy":
    raise ValueError("the curvature references assume softmax + "
                     "categorical cross-entropy")
  refs = curvature_refs(model)
  v = jax.tree.map(
      lambda p, k: jax.random.normal(k, p.shape, p.dtype), params,
      jax.tree.unflatten(jax.tree.structure(params), list(jax.random.split(
          jax.random.key(TANGENT_KEY), len(jax.tree.leaves(params))))))
  name = model_label(model)
  mlp = isinstance(model, fnn.MLP)
  cell = {"arch": arch_of(model), "model": name,
          "sizes": list(model.sizes) if mlp else None,
          "batch": int(x.shape[0]),
          "loadavg_start": os.getloadavg()[0]}
  t0 = time.perf_counter()
  if hvp_proto_on and "hvp" in fns:
    fns = {**fns, "hvp_proto": hvp_proto_fn(model, params, x, y, v)}
  if trace_proto_on:
    fns = {**fns, **TRACE_PROTO}
  cell["max_abs_diff"] = check_curvature(model, params, x, y, v, fns, refs)
  keys = ["grad"] + [k for k, *_ in CURVATURE if k in fns or k in refs]
  calls = [(fns[k] if k in fns else refs[k],
            (model, params, x, y, v) if k in fns else (params, x, y, v))
           for k in keys]
  for fn, args in calls:
    jax.block_until_ready(fn(*args))  # compile every contender
  if mlp:  # XLA's count of the compiled programs, over fnn.grad's
    flops = {k: compiled_flops(
        fn if k not in fns or hasattr(fn, "compiled") else
        functools.partial(fn, model), args if k not in fns or hasattr(
            fn, "compiled") else args[1:])
        for k, (fn, args) in zip(keys, calls)}
    cell["compiled_flops_ratio"] = (
        {k: f / flops["grad"] for k, f in flops.items() if k != "grad"}
        if all(f is not None for f in flops.values()) else None)
  cell["warmup_s"] = time.perf_counter() - t0
  with _other_load() as load:
    samples = time_rounds(calls, max_repeats, budget_s * len(calls) / 2)
  ms = {k: 1e3 * statistics.median(s) for k, s in zip(keys, samples)}
  grad_s = samples[0]
  cell.update(
      ms=ms, repeats=len(grad_s),
      samples_ms={k: [1e3 * t for t in s] for k, s in zip(keys, samples)},
      ratio={k: ms[k] / ms["grad"] for k in keys if k != "grad"},
      round_ratio_range={k: [min(r := [a / g for a, g in zip(s, grad_s)]),
                             max(r)]
                         for k, s in zip(keys, samples) if k != "grad"},
      work_bound=(curvature_work_bounds(model.sizes, x.shape[0]) if mlp
                  else None),
      other_load_cpus=load.cpus, steal_cpus=load.steal,
      loadavg_end=os.getloadavg()[0])
  for key in ("hvp", "hvp_proto"):
    if key in ms and "jax_hvp" in ms:
      cell[f"{key}_vs_jax"] = ms[key] / ms["jax_hvp"]
      cell[f"{key}_vs_jax_range"] = [min(r := [a / b for a, b in zip(
          samples[keys.index(key)], samples[keys.index("jax_hvp")])]), max(r)]
  log(f"  {name:>18} batch {x.shape[0]:>5}: grad {ms['grad']:.3g} ms; "
      + ", ".join(f"{k} {cell['ratio'][k]:.2f}x" for k in keys[1:])
      + f"; x{cell['repeats']}, load {cell['loadavg_start']:.1f}"
      f"->{cell['loadavg_end']:.1f}")
  return cell


@functools.lru_cache(maxsize=None)
def _bench_train():
  r"""``scripts/bench_train.py`` as a module (its ``OtherLoad``)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "bench_train.py")
  spec = importlib.util.spec_from_file_location("bench_train", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _other_load():
  r"""``bench_train.OtherLoad``: other processes' CPU use while timing."""
  return _bench_train().OtherLoad()


def curvature_targets(cells: list[dict]) -> list[dict]:
  r"""The targets at ``CURV_TARGET_CELL`` (None where it was not run)."""
  sizes, batch = CURV_TARGET_CELL
  cell = next((c for c in cells if c["sizes"] == list(sizes)
               and c["batch"] == batch), None)
  where = f"{_sizes_text(sizes)}, batch {batch}"
  out = []
  for key, title, least in CURVATURE:
    if least is None:
      continue
    value = None if cell is None else cell["ratio"].get(key)
    out.append({
        "name": f"{title} <= {least:g}x fnn.grad ({where})", "key": key,
        "value": value, "holds": None if value is None else value <= least,
        "round_range": cell and cell["round_ratio_range"].get(key),
        "work_bound": cell and cell["work_bound"][key],
        "compiled_flops_ratio": cell and (
            cell.get("compiled_flops_ratio") or {}).get(key)})
  value = None if cell is None else cell.get("hvp_vs_jax")
  out.append({
      "name": f"hvp no slower than jax.jvp(jax.grad(mean_loss)) ({where})",
      "key": "hvp_vs_jax", "value": value,
      "holds": None if value is None else value <= HVP_VS_JAX_MAX,
      "round_range": cell and cell.get("hvp_vs_jax_range"),
      "work_bound": cell and (cell["work_bound"]["hvp"]
                              / cell["work_bound"]["jax_hvp"]),
      "compiled_flops_ratio": _flops_vs_jax(cell, "hvp")})
  if cell is not None and "hvp_proto_vs_jax" in cell:
    value = cell["hvp_proto_vs_jax"]
    out.append({
        "name": f"(prototype, --hvp-proto) hvp no slower than "
                f"jax.jvp(jax.grad(mean_loss)) ({where})",
        "key": "hvp_proto_vs_jax", "value": value,
        "holds": value <= HVP_VS_JAX_MAX,
        "round_range": cell["hvp_proto_vs_jax_range"], "work_bound": 1.0,
        "compiled_flops_ratio": _flops_vs_jax(cell, "hvp_proto")})
  return out


def _flops_vs_jax(cell, key: str) -> Optional[float]:
  r"""XLA's flops of fnn's ``key`` over ``jax.jvp(jax.grad)``'s."""
  r = (cell or {}).get("compiled_flops_ratio") or {}
  return r[key] / r["jax_hvp"] if key in r and "jax_hvp" in r else None


CURV_HEADER = ("model", "batch", "fnn.grad ms",
               *(title for _, title, _ in CURVATURE), "hvp/jax",
               "proto/jax", "load", "repeats")


def curvature_rows(cells: list[dict]) -> list[tuple[str, ...]]:
  rows = []
  for c in cells:
    row = [c["model"], str(c["batch"]), _ms(c["ms"]["grad"])]
    for key, _, _ in CURVATURE:
      r = c["ratio"].get(key)
      bound = (c["work_bound"] or {}).get(key)
      row.append("-" if r is None else f"{r:.2f}x" + (
          f" ({bound:.2f})" if bound is not None else ""))
    for key in ("hvp_vs_jax", "hvp_proto_vs_jax"):
      row.append(f"{c[key]:.2f}" if key in c else "-")
    row.append(f"{c['loadavg_start']:.1f}-{c['loadavg_end']:.1f}")
    row.append(str(c["repeats"]))
    rows.append(tuple(row))
  return rows


def format_curvature(cells: list[dict], targets: list[dict],
                     markdown: bool) -> str:
  rows = curvature_rows(cells)
  if markdown:
    lines = ["| " + " | ".join(CURV_HEADER) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(CURV_HEADER) - 2))
             + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
  else:
    widths = [max(len(h), *(len(r[i]) for r in rows))
              for i, h in enumerate(CURV_HEADER)]
    fmt = lambda r: "  ".join(  # noqa: E731
        v.ljust(w) if i < 1 else v.rjust(w)
        for i, (v, w) in enumerate(zip(r, widths)))
    lines = [fmt(CURV_HEADER), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
  bullet = "- " if markdown else "  "
  lines += ["", "Each ratio is the quantity's median time over fnn.grad's in "
            "the same interleaved rounds (in parentheses, MLPs: the work "
            "bound, multiply-adds over fnn.grad's); hvp/jax = fnn.hvp over "
            "jax.jvp(jax.grad(mean_loss)); load = 1-minute load average at "
            "the cell's start-end.", "", "Targets (CPU, float32):"]
  for t in targets:
    if t["holds"] is None:
      lines.append(f"{bullet}NOT MEASURED (cell or function not in this "
                   f"run): {t['name']}")
      continue
    lo, hi = t["round_range"]
    xla = t.get("compiled_flops_ratio")
    lines.append(f"{bullet}{'HOLDS' if t['holds'] else 'MISSED'}: "
                 f"{t['name']}: measured {t['value']:.2f}x (rounds "
                 f"{lo:.2f}-{hi:.2f}x), work bound {t['work_bound']:.2f}x"
                 + (f", XLA's flops of the compiled program "
                    f"{xla:.2f}x" if xla is not None else ""))
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Summary and output.


def _stats(cells: list[dict]) -> dict:
  grad = [c["grad"]["ratio"] for c in cells]
  per_ex = [c["per_example"]["ratio"] for c in cells]
  norms = [c["norms"]["speedup"] for c in cells]
  worst_grad = max(cells, key=lambda c: c["grad"]["ratio"])
  return {
      "cells": len(cells),
      "grad_ratio_median": statistics.median(grad),
      "grad_ratio_max": max(grad),
      "grad_ratio_max_cell": [worst_grad["model"], worst_grad["batch"]],
      "per_example_ratio_median": statistics.median(per_ex),
      "per_example_ratio_max": max(per_ex),
      "norms_speedup_median": statistics.median(norms),
      "norms_speedup_min": min(norms),
  }


def _targets(arch: str, st: dict) -> list[dict]:
  out = [
      {"name": f"{arch}: fnn.grad / jax.grad median <= "
               f"{GRAD_RATIO_MEDIAN_MAX:.2f}",
       "value": st["grad_ratio_median"],
       "holds": st["grad_ratio_median"] <= GRAD_RATIO_MEDIAN_MAX},
      {"name": f"{arch}: fnn.grad / jax.grad every cell <= "
               f"{GRAD_RATIO_CELL_MAX:.2f}",
       "value": st["grad_ratio_max"],
       "holds": st["grad_ratio_max"] <= GRAD_RATIO_CELL_MAX},
  ]
  if arch == "mlp":  # the per-example target is defined for the MLPs only
    out.append(
        {"name": "mlp: per_example_grads / vmap(grad) median <= "
                 f"{PER_EXAMPLE_RATIO_MEDIAN_MAX:.2f}",
         "value": st["per_example_ratio_median"],
         "holds": (st["per_example_ratio_median"]
                   <= PER_EXAMPLE_RATIO_MEDIAN_MAX)})
  out.append(
      {"name": f"{arch}: per_example_grad_norms speedup median >= "
               f"{NORMS_SPEEDUP_MEDIAN_MIN:.1f}x",
       "value": st["norms_speedup_median"],
       "holds": st["norms_speedup_median"] >= NORMS_SPEEDUP_MEDIAN_MIN})
  return out


def summarize(cells: list[dict]) -> dict:
  r"""The statistics over all cells (top level) and per architecture
  (``by_arch``), and the targets, each over one architecture's cells."""
  summary = _stats(cells)
  archs = list(dict.fromkeys(c["arch"] for c in cells))
  summary["by_arch"] = {a: _stats([c for c in cells if c["arch"] == a])
                        for a in archs}
  summary["targets"] = [t for a in archs
                        for t in _targets(a, summary["by_arch"][a])]
  return summary


def _sizes_text(sizes) -> str:
  return "-".join(str(s) for s in sizes)


def _ms(v: float) -> str:
  return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


HEADER = ("model", "batch",
          "fnn.grad ms", "jax.grad ms", "ratio",
          "fnn.per_ex ms", "vmap(grad) ms", "ratio",
          "fnn.norms ms", "vmap+norm ms", "speedup",
          "repeats")


def table_rows(cells: list[dict]) -> list[tuple[str, ...]]:
  rows = []
  for c in cells:
    g, p, n = c["grad"], c["per_example"], c["norms"]
    rows.append((
        c["model"], str(c["batch"]),
        _ms(g["fnn_ms"]), _ms(g["ref_ms"]), f"{g['ratio']:.2f}",
        _ms(p["fnn_ms"]), _ms(p["ref_ms"]), f"{p['ratio']:.2f}",
        _ms(n["fnn_ms"]), _ms(n["ref_ms"]), f"{n['speedup']:.1f}x",
        f"{g['repeats']}/{p['repeats']}/{n['repeats']}"))
  return rows


def format_table(cells: list[dict], markdown: bool) -> str:
  rows = table_rows(cells)
  if markdown:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADER) - 2)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
  widths = [max(len(h), *(len(r[i]) for r in rows))
            for i, h in enumerate(HEADER)]
  fmt = lambda r: "  ".join(  # noqa: E731
      v.ljust(w) if i < 1 else v.rjust(w)
      for i, (v, w) in enumerate(zip(r, widths)))
  lines = [fmt(HEADER), "  ".join("-" * w for w in widths)]
  lines += [fmt(r) for r in rows]
  return "\n".join(lines)


def format_summary(summary: dict, n_cells: int, full_grid: bool,
                   markdown: bool) -> str:
  bullet = "- " if markdown else "  "
  lines = [f"Summary over {n_cells} cells (ratio = fnn / jax, lower is "
           "better; speedup = jax / fnn, higher is better), per "
           "architecture:"]
  for arch, st in summary["by_arch"].items():
    worst_model, worst_batch = st["grad_ratio_max_cell"]
    lines += [
        f"{bullet}{arch} ({st['cells']} cells): fnn.grad / jax.grad median "
        f"{st['grad_ratio_median']:.2f}, max {st['grad_ratio_max']:.2f} "
        f"({worst_model}, batch {worst_batch}); per_example_grads / "
        f"vmap(jax.grad) median {st['per_example_ratio_median']:.2f}, max "
        f"{st['per_example_ratio_max']:.2f}; per_example_grad_norms speedup "
        f"over vmap(jax.grad) + norm median "
        f"{st['norms_speedup_median']:.1f}x, min "
        f"{st['norms_speedup_min']:.1f}x"]
  lines += ["", "Targets, per architecture" + (
      "" if full_grid else " (defined over the full grid; this run is a "
      "subset)") + ":"]
  for t in summary["targets"]:
    lines.append(f"{bullet}{'HOLDS' if t['holds'] else 'MISSED'}: "
                 f"{t['name']} (measured {t['value']:.2f})")
  return "\n".join(lines)


def machine_info() -> dict:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  device = jax.devices()[0]
  return {
      "cpu": cpu or platform.machine(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "usable_cpus": usable,
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
      "backend": jax.default_backend(),
      "device": f"{device.device_kind} ({device})",
      "dtype": "float32",
  }


def _jaxlib_version():
  try:
    import jaxlib
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def write_json_atomic(path: str, payload: dict) -> None:
  r"""Writes ``payload`` to ``path`` via a temporary file and ``os.replace``."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory,
                             prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  try:
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600)
    with os.fdopen(fd, "w") as f:
      json.dump(payload, f, indent=2)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# --------------------------------------------------------------------------
# Command line.


def _parse_sizes(values: list[str] | None):
  if not values:
    return DEFAULT_SIZES
  out = []
  for value in values:
    for part in value.replace(";", " ").split():
      try:
        sizes = tuple(int(s) for s in part.split(",") if s.strip())
      except ValueError:
        raise argparse.ArgumentTypeError(f"bad --sizes {part!r}") from None
      if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"--sizes {part!r}: need at least n_in,n_out, all >= 1")
      out.append(sizes)
  return tuple(out)


def _parse_batches(value: str | None):
  if not value:
    return DEFAULT_BATCHES
  try:
    batches = tuple(int(b) for b in value.split(",") if b.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"bad --batches {value!r}") from None
  if not batches or min(batches) < 1:
    raise argparse.ArgumentTypeError(f"--batches {value!r}: need ints >= 1")
  return batches


def _min_preactivation(model, params, x):
  r"""Per example, the smallest ``|z|`` entering any ``Activation`` layer
  (ReLU kinks), walking the layers on the batch (residual blocks too)."""
  low = jnp.full((x.shape[0],), jnp.inf, x.dtype)

  def walk(layers, ps, a, low):
    for layer, p in zip(layers, ps):
      if isinstance(layer, fnn.layers.Residual):
        y, low = walk(layer.layers, p, a, low)
        a = a + y
        continue
      if isinstance(layer, fnn.layers.Activation):
        low = jnp.minimum(low, jnp.min(jnp.abs(a).reshape(a.shape[0], -1),
                                       -1))
      a = layer.apply(p, a)
    return a, low

  return walk(model.layers, model.expand(params), x, low)[1]


def kink_safe_inputs(model, params, key, batch: int):
  r"""``x ~ N(0, 1)`` of ``[batch, *model.in_shape]``, rows redrawn until no
  pre-activation of any ``Activation`` layer has ``|z| < KINK_MARGIN``.

  Any fnn network (an MLP walks its Dense, activation, ... view)."""
  x = jax.random.normal(key, (batch, *model.in_shape), jnp.float32)
  low_fn = jax.jit(_min_preactivation, static_argnums=0)
  for _ in range(100):
    bad = low_fn(model, params, x) < KINK_MARGIN
    if not bool(jnp.any(bad)):
      return x
    key, sub = jax.random.split(key)
    mask = bad.reshape((batch,) + (1,) * (x.ndim - 1))
    x = jnp.where(mask, jax.random.normal(sub, x.shape, x.dtype), x)
  raise RuntimeError("could not draw inputs away from the ReLU kinks")


def _parse_archs(value: str | None, sizes_given: bool):
  if not value:
    return ("mlp",) if sizes_given else ARCHS
  archs = tuple(dict.fromkeys(a.strip() for a in value.split(",")
                              if a.strip()))
  bad = [a for a in archs if a not in ARCHS]
  if bad or not archs:
    raise argparse.ArgumentTypeError(
        f"--arch {value!r}: unknown {bad}; choose from {','.join(ARCHS)}")
  return archs


def build_models(archs, all_sizes):
  r"""``[model]`` in run order: the MLPs of ``all_sizes`` (for ``mlp``),
  then MNIST-1D's residual MLP and CNN (40 inputs, 10 classes)."""
  models = []
  for arch in archs:
    if arch == "mlp":
      models += [fnn.MLP(sizes, activation="relu", output="softmax",
                         loss="categorical_cross_entropy")
                 for sizes in all_sizes]
    else:
      models.append(getattr(fnn.arch, arch)(40, 10))
  return models


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--arch", metavar="A,...",
      help="architectures, any of " + ",".join(ARCHS) + ": the MLPs of "
           "--sizes, MNIST-1D's residual MLP and CNN. Default: all, or only "
           "mlp when --sizes is given")
  parser.add_argument(
      "--sizes", action="append", metavar="N_IN,...,N_OUT",
      help="MLP sizes to run, e.g. 40,100,100,10; repeat the flag (or "
           "separate with ';') for several. Default: "
           + " ".join(",".join(map(str, s)) for s in DEFAULT_SIZES))
  parser.add_argument(
      "--batches", metavar="B,...",
      help="batch sizes, e.g. 32,128. Default: "
           + ",".join(map(str, DEFAULT_BATCHES)))
  parser.add_argument(
      "--repeats", type=int, default=100,
      help="most timed repeats per comparison and cell; fewer for slow cells"
           f" but at least {MIN_REPEATS} ({MIN_REPEATS_SLOW} where one pair of "
           "calls exceeds --budget) unless this is smaller; default 100")
  parser.add_argument(
      "--budget", type=float, default=2.0,
      help="seconds of timing per comparison and cell, which sets the "
           "repeats; default 2.0")
  parser.add_argument("--markdown", action="store_true",
                      help="print the table as markdown")
  parser.add_argument("--conv-proto", action="store_true",
                      help="time a prototype of faster Conv1d contractions "
                           "(one 2-D matmul for the mean, unscaled norms with "
                           "a scaled fallback) in place of fnn's; for the "
                           "owners of fnn/layers/kinds.py")
  parser.add_argument("--curvature", action="store_true",
                      help="time the curvature group (exact GGN diagonal, "
                           "GGN traces, gradient Gram, GGN- and "
                           "Hessian-vector products) instead of the "
                           "gradient comparisons")
  parser.add_argument("--hvp-proto", action="store_true",
                      help="with --curvature: also time a prototype of "
                           "fnn.hvp without the products by R{x} = 0 and "
                           "T(0, d) (hvp_proto); for the owners of "
                           "fnn/curvature_vp.py")
  parser.add_argument("--trace-proto", action="store_true",
                      help="with --curvature: also time a prototype of "
                           "ggn_trace that reduces each example's input "
                           "factor once, not once per column; for the "
                           "owners of fnn/curvature.py")
  parser.add_argument("--json", metavar="PATH",
                      help="also write the results as JSON to PATH")
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    all_sizes = _parse_sizes(args.sizes)
    batches = _parse_batches(args.batches)
    archs = _parse_archs(args.arch, bool(args.sizes))
  except argparse.ArgumentTypeError as e:
    parser.error(str(e))
  if args.sizes and "mlp" not in archs:
    parser.error("--sizes sets the MLPs; add mlp to --arch")
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")
  if (args.hvp_proto or args.trace_proto) and not args.curvature:
    parser.error("--hvp-proto and --trace-proto need --curvature")
  if args.conv_proto:
    install_conv_proto()
  if args.budget < 0:
    parser.error("--budget must be >= 0")

  start = time.perf_counter()
  info = machine_info()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  print(f"fnn gradient benchmark (scripts/bench_grads.py), fnn "
        f"{fnn.__version__}")
  print(f"machine: {info['cpu']} ({info['machine']}), cpu count "
        f"{info['cpu_count']} ({info['usable_cpus']} usable), "
        f"{info['platform']}")
  print(f"jax {info['jax']} (jaxlib {info['jaxlib']}), backend "
        f"{info['backend']}, device {info['device']}, dtype float32")
  print(f"models ({','.join(archs)}): fnn.MLP(sizes, activation='relu', "
        "output='softmax', loss='categorical_cross_entropy') (glorot init), "
        "fnn.arch.resmlp(40, 10), fnn.arch.cnn(40, 10) (pytorch init); "
        "params model.init(key(0))")
  if not args.curvature:
    print(f"times: median ms of interleaved repeats (repeats column: grad/"
          f"per_ex/norms), budget {args.budget:g} s per comparison, at most "
          f"{args.repeats} repeats")
  if info["backend"] != "cpu":
    print(f"WARNING: backend is {info['backend']}, not cpu")
  if args.conv_proto:
    print("--conv-proto: fnn's Conv1d total/norms replaced by this script's "
          "prototype (not fnn's code)")
  print(flush=True)

  if args.curvature:
    return curvature_main(args, archs, all_sizes, batches, info, log, start)
  cells = []
  for model, params, x, y in cell_inputs(archs, all_sizes, batches):
    cells.append(bench_cell(model, params, x, y, args.repeats, args.budget,
                            log))

  full_grid = (set(batches) == set(DEFAULT_BATCHES) and
               ("mlp" not in archs or set(all_sizes) == set(DEFAULT_SIZES)))
  summary = summarize(cells)
  print(format_table(cells, args.markdown))
  print()
  print(format_summary(summary, len(cells), full_grid, args.markdown))
  wall_s = time.perf_counter() - start
  print()
  print(f"Total wall time: {wall_s:.1f} s")

  if args.json:
    write_json_atomic(args.json, {
        "benchmark": "scripts/bench_grads.py",
        "fnn": fnn.__version__,
        "machine": info,
        "config": {"archs": list(archs),
                   "sizes": [list(s) for s in all_sizes],
                   "batches": list(batches), "max_repeats": args.repeats,
                   "min_repeats": MIN_REPEATS,
                   "min_repeats_slow": MIN_REPEATS_SLOW,
                   "budget_s": args.budget,
                   "rtol": RTOL, "atol": ATOL, "full_grid": full_grid,
                   "conv_proto": args.conv_proto},
        "cells": cells,
        "summary": summary,
        "wall_s": wall_s,
    })
    print(f"Wrote {args.json}")
  return 0


def cell_inputs(archs, all_sizes, batches):
  r"""``(model, params, x, y)`` per cell in run order: params
  ``model.init(key(0))``, kink-safe ``x`` and labels ``y`` per batch."""
  for model in build_models(archs, all_sizes):
    params = model.init(jax.random.key(0))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    for batch in batches:
      kx, ky = jax.random.split(jax.random.fold_in(jax.random.key(1), batch))
      x = kink_safe_inputs(model, params, kx, batch)
      y = jax.random.randint(ky, (batch,), 0, model.n_out)
      yield model, params, x, y


def curvature_main(args, archs, all_sizes, batches, info, log,
                   start) -> int:
  r"""``--curvature``: checks and times the curvature group per cell."""
  fns = curvature_fns()
  for name in ("ggn_vp", "hvp"):
    if name not in fns:
      print(f"fnn.{name} not present in this fnn: skipped (its column "
            f"reads -)")
  print(f"curvature group: fnn.grad, diag_ggn (exact), ggn_trace (batch, "
        f"per_example=True), grad_gram, ggn_vp, hvp, and JAX's GGN-vector "
        f"(jvp/vjp) and Hessian-vector (jax.jvp(jax.grad)) products, one "
        f"call each per interleaved round, budget {args.budget:g} s per "
        f"function; checked first against brute force on the first "
        f"{CURV_CHECK_N} examples (Jacobians, vmap(jax.grad)) and JAX's "
        f"products on the batch\n", flush=True)
  cells = []
  for model, params, x, y in cell_inputs(archs, all_sizes, batches):
    cells.append(bench_curvature_cell(model, params, x, y, args.repeats,
                                      args.budget, log, fns,
                                      args.hvp_proto, args.trace_proto))
  targets = curvature_targets(cells)
  print(format_curvature(cells, targets, args.markdown))
  wall_s = time.perf_counter() - start
  print(f"\nTotal wall time: {wall_s:.1f} s")
  if args.json:
    write_json_atomic(args.json, {
        "benchmark": "scripts/bench_grads.py --curvature",
        "fnn": fnn.__version__, "machine": info,
        "config": {"archs": list(archs),
                   "sizes": [list(s) for s in all_sizes],
                   "batches": list(batches), "max_repeats": args.repeats,
                   "min_repeats": MIN_REPEATS,
                   "min_repeats_slow": MIN_REPEATS_SLOW,
                   "budget_s_per_function": args.budget,
                   "rtol": RTOL, "atol_rel": CURV_ATOL_REL,
                   "consistency_rtol": CURV_CONSISTENCY_RTOL,
                   "check_examples": CURV_CHECK_N,
                   "tangent_key": TANGENT_KEY,
                   "target_cell": [list(CURV_TARGET_CELL[0]),
                                   CURV_TARGET_CELL[1]],
                   "functions": sorted(fns), "hvp_proto": args.hvp_proto,
                   "trace_proto": args.trace_proto},
        "cells": cells, "targets": targets, "wall_s": wall_s,
    })
    print(f"Wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

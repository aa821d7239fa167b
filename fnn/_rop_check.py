r"""Every layer's hand-derived R-operators against autodiff of its own code.

:func:`fnn.hvp` and :func:`fnn.ggn_vp` chain each layer's ``jvp`` and
``backward_jvp`` (:mod:`fnn.layers.base`); a wrong one makes the whole
product wrong without saying where. :func:`check_layer_rops` checks them one
layer at a time, at the real caches of a forward pass of the first
example(s), against ``jax.jvp`` of the SAME layer's first-order code (which
:func:`fnn.check_grads` checks)::

  jvp           layer.jvp(p, cache, v, r_x)[0]
                vs  jax.jvp(x, p -> layer.forward(p, x)[0]) along (v, r_x)
  backward_jvp  layer.backward_jvp(p, cache, v, r_cache, g, r_g)
                vs  jax.jvp((p, x, g) -> layer.backward(p, forward(p, x)[1], g))
                    along (v, r_x, r_g)   (r_cache from the hand jvp)

with random tangents (uniform in ``[-1, 1]``, from ``key``) ``v`` (the
layer's params entry), ``r_x`` (its input), and random ``g``, ``r_g`` (its
output). A container (``Residual``) gets its
own two rows, which run its block (a wrong block layer fails them too), then
a row pair per block layer: the innermost failing row names the layer.

The output level has its own rows (path ``"output"``): the loss's Hessian
``H_z r`` (fused pairs) or ``H_a r`` (others) against ``jax.jvp`` of the
hand-derived ``delta_z`` or ``loss.grad``, and, for the non-fused pairs, the
whole ``R{delta_L}`` (the output activation's R included) against ``jax.jvp``
of ``out.backward(z, out.fn(z), loss.grad(out.fn(z), y))``.

Autodiff as the reference is right here: the question is whether the hand
derivation of the second order is the R of the first order fnn runs.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _checks, _compile
from fnn import _loss_hessians as lh
from fnn.layers.dense import is_int

Array = jax.Array

# Pass iff max |hand - ref| <= rtol * max |ref| (over the row's leaves and
# examples). float64: the hand R and autodiff sum the same terms in other
# orders and agree to ~1e-14 (a LayerNorm over 2 features ~1e-12); a missing
# or wrong term is 1e-3 relative or more, so 1e-8 separates them widely.
# float32 (without jax_enable_x64): rounding of ~1e-6; 1e-4 leaves room.
TOLERANCES = {"float64": 1e-8, "float32": 1e-4}

# What a user's layer may raise while being traced: a missing jvp
# (NotImplementedError), a missing grad2 (ValueError), a wrong shape.
_USER_ERRORS = (NotImplementedError, ValueError, TypeError)


class RopRow(NamedTuple):
  r"""One hand-derived R-operator against ``jax.jvp`` of first-order code.

  Attributes:
    path: the layer's index in ``model.layers`` as a string (``"3"``), dotted
      inside a container (``"3.1"``: block layer 1 of the ``Residual`` at
      index 3); ``"output"`` for the output level. For an :class:`fnn.MLP`
      ``model.layers`` is ``Dense, Activation, ..., Dense``.
    layer: ``repr`` of the layer (``"Activation('tanh')"``); at the output
      level ``"<output> + <loss>"``.
    what: ``"jvp"`` or ``"backward_jvp"``; at the output level
      ``"hessian"`` (``H_z r`` fused, ``H_a r`` otherwise) and, non-fused,
      ``"backward_jvp"`` (``R{delta_L}``).
    max_abs_err: ``max |hand - ref|`` over the row's leaves and examples.
    rel_err: ``max_abs_err / max |ref|`` (0 when both are 0).
    ok: ``rel_err <= rtol`` (and the hand code ran and matched the
      reference's structure and shapes).
    note: why a row failed without numbers (an exception, a shape), or
      ``"autodiff (no closed form)"`` where the hand side is itself
      ``jax.jvp`` of a user's loss.
  """
  path: str
  layer: str
  what: str
  max_abs_err: float
  rel_err: float
  ok: bool
  note: str = ""

  def __str__(self):
    status = "ok" if self.ok else "FAIL"
    note = f" ({self.note})" if self.note else ""
    return (f"{self.path} {self.layer} {self.what}: max abs "
            f"{self.max_abs_err:.2e}, rel {self.rel_err:.2e} {status}{note}")


class _Tangents:
  r"""Random tangents taken in order from one flat draw ``[N]``
  (:func:`_count` gives ``N``).

  One draw, not one per array: XLA:CPU compiles each draw (threefry)
  slowly, 25 s for test_layers' every_layer net with one draw per tangent
  against 2 s for the rest of the program.
  """

  def __init__(self, flat):
    self.flat, self.used = flat, 0

  def like(self, tree):
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for u in leaves:
      shape, dtype = jnp.shape(u), jnp.result_type(u)
      n = math.prod(shape)
      out.append(self.flat[self.used:self.used + n].reshape(shape)
                 .astype(dtype))
      self.used += n
    return jax.tree.unflatten(treedef, out)


def _errors(hand, ref):
  r"""``(max |hand - ref|, max |ref|)`` as scalars, or a note (str) when the
  structures or shapes differ (known at trace time)."""
  if jax.tree.structure(hand) != jax.tree.structure(ref):
    return (f"returned structure {jax.tree.structure(hand)}, expected "
            f"{jax.tree.structure(ref)}")
  err = scale = jnp.zeros(())
  for h, r in zip(jax.tree.leaves(hand), jax.tree.leaves(ref)):
    if r.dtype == jax.dtypes.float0:
      continue
    if jnp.shape(h) != jnp.shape(r):
      return f"returned shape {jnp.shape(h)}, expected {jnp.shape(r)}"
    err = jnp.maximum(err, jnp.max(jnp.abs(h - r), initial=0.0))
    scale = jnp.maximum(scale, jnp.max(jnp.abs(r), initial=0.0))
  return err, scale


class _Rows:
  r"""Collects ``(path, layer, what)`` and the traced errors (or a note)."""

  def __init__(self):
    self.meta, self.values = [], []

  def add(self, path, layer, what, hand_fn, ref, note=""):
    try:
      out = _errors(hand_fn(), ref)
    except _USER_ERRORS as e:
      out = f"{type(e).__name__}: {e}"
    if isinstance(out, str):
      note, out = out, None
    self.meta.append((path, layer, what, note))
    self.values.append(out)


def _layer_rows(rows, layers, params, x, src, prefix=""):
  r"""Rows for every layer of ``layers`` (recursing into containers) on
  one example whose input to ``layers`` is ``x``; tangents from ``src``."""
  for i, (layer, p) in enumerate(zip(layers, params)):
    path, name = f"{prefix}{i}", repr(layer)
    y, cache = layer.forward(p, x)
    v, r_x, g, r_g = src.like((p, x, y, y))
    # (add calls each hand function at once: the loop's variables are live)
    rows.add(path, name, "jvp", lambda: layer.jvp(p, cache, v, r_x)[0],
             jax.jvp(lambda p_, x_: layer.forward(p_, x_)[0], (p, x),
                     (v, r_x))[1])

    def hand_back():
      r_cache = layer.jvp(p, cache, v, r_x)[1]
      return layer.backward_jvp(p, cache, v, r_cache, g, r_g)

    def back(p_, x_, g_):
      return layer.backward(p_, layer.forward(p_, x_)[1], g_)

    rows.add(path, name, "backward_jvp", hand_back,
             jax.jvp(back, (p, x, g), (v, r_x, r_g))[1])
    if layer.sublayers():
      _layer_rows(rows, layer.sublayers(), p, x, src, path + ".")
    x = y
  return x


def _count(layers, params, x):
  r"""How many tangent entries :func:`_layer_rows` takes (by shapes only:
  each layer's forward under ``jax.eval_shape``), and the output's shape."""
  n = 0
  for layer, p in zip(layers, params):
    y = jax.eval_shape(lambda p_, x_: layer.forward(p_, x_)[0], p, x)
    n += sum(math.prod(jnp.shape(u)) for u in jax.tree.leaves((p, x, y, y)))
    if layer.sublayers():
      n += _count(layer.sublayers(), p, x)[0]
    x = y
  return n, x


def _output_rows(rows, model, z, y, src):
  out, loss = model.output, model.loss
  name = f"{out.name} + {loss.name}"
  a, r_z = out.fn(z), src.like(z)
  if model.fused:
    note = "" if loss in lh.FUSED_HESSIANS else "autodiff (no closed form)"
    delta = lambda z_: loss.delta_z(z_, out.fn(z_), y)
    rows.add("output", name, "hessian",
             lambda: lh.fused_hessian(model, z, a, y, r_z),
             jax.jvp(delta, (z,), (r_z,))[1], note)
    return
  note = "" if loss in lh.LOSS_HESSIANS else "autodiff (no closed form)"
  r_a = jax.jvp(out.fn, (z,), (r_z,))[1]  # the reference's R{a}
  rows.add("output", name, "hessian", lambda: lh.loss_hessian(loss, a, y, r_a),
           jax.jvp(lambda a_: loss.grad(a_, y), (a,), (r_a,))[1], note)

  def hand_delta():
    g = loss.grad(a, y)
    r_g = lh.loss_hessian(loss, a, y, lh.output_jvp(out, z, a, r_z))
    return lh.output_backward_jvp(out, z, a, g, r_z, r_g)

  def delta(z_):
    a_ = out.fn(z_)
    return out.backward(z_, a_, loss.grad(a_, y))

  rows.add("output", name, "backward_jvp", hand_delta,
           jax.jvp(delta, (z,), (r_z,))[1])


def check_layer_rops(model, params, x, y, *, key, examples: int = 1,
                     rtol: float | None = None) -> list[RopRow]:
  r"""Checks every layer's ``jvp`` and ``backward_jvp`` and the output
  level's second derivatives, one row each (see :mod:`fnn._rop_check`).

  Runs in float64 when ``jax_enable_x64`` is on (params and ``x`` are cast:
  the check is of the derivation, not of rounding), else in float32. One
  compiled program; the rows of a layer that raises while traced (no
  ``jvp``, an activation without ``grad2``) fail with the message in
  ``note``.

  Args:
    model: an :class:`fnn.MLP` or :class:`fnn.Sequential`.
    params: from ``model.init``.
    x: ``[B, *in_shape]``; y: targets or labels (as for ``model.mean_loss``).
    key: a PRNG key for the random tangents.
    examples: how many of the first examples to check (``1 <= examples <=
      B``); each row is the worst over them.
    rtol: the pass threshold on ``rel_err``; default :data:`TOLERANCES` of
      the dtype.

  Returns:
    A list of :class:`RopRow`: for each layer of ``model.layers`` in order
    (a container's block after the container) ``"jvp"`` then
    ``"backward_jvp"``, then the output level's rows.

  Raises:
    ValueError: bad ``x``/``y``/``examples``/``rtol``, or no ``key``.
  """
  if key is None:
    raise ValueError("check_layer_rops needs key=jax.random.key(...) for the "
                     "random tangents")
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  if not is_int(examples) or not 1 <= examples <= x.shape[0]:
    raise ValueError(f"examples must be an int in [1, {x.shape[0]}] (the "
                     f"batch size), got {examples!r}")
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  if rtol is None:
    rtol = TOLERANCES[jnp.dtype(dtype).name]
  if not isinstance(rtol, (int, float)) or not 0 < rtol < math.inf:
    raise ValueError(f"rtol must be a float > 0, got {rtol!r}")
  cast = lambda t: jax.tree.map(lambda u: jnp.asarray(u, dtype), t)
  params, x, y = cast(params), cast(x[:examples]), cast(y[:examples])
  rows = _Rows()

  def one(params, x, y, src):
    del rows.meta[:], rows.values[:]  # every trace refills them
    z = _layer_rows(rows, model.layers, model.expand(params), x, src)
    _output_rows(rows, model, z, y, src)
    return rows.values

  n, z = _count(model.layers, model.expand(params), x[0])
  n += math.prod(z.shape)

  def program(params, x, y, key):
    # The draw inside (an eager one compiles anew for every N: 1.3 s on
    # XLA:CPU), uniform: XLA fuses a normal's erfinv into each slice of it
    # (8 s to compile test_hvp's stack of every layer, 2 s with uniform).
    flat = jax.random.uniform(key, (examples, n), dtype, -1.0, 1.0)
    if examples == 1:  # no vmap: a third less to trace
      return jax.tree.map(lambda u: u[None],
                          one(params, x[0], y[0], _Tangents(flat[0])))
    return jax.vmap(lambda x, y, f: one(params, x, y, _Tangents(f)))(
        x, y, flat)

  values = _compile.jit_once(program)(params, x, y, key)
  out = []
  for (path, layer, what, note), val in zip(rows.meta, values):
    if val is None:
      out.append(RopRow(path, layer, what, math.nan, math.nan, False, note))
      continue
    err, scale = (float(np.max(np.asarray(u))) for u in val)
    rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    out.append(RopRow(path, layer, what, err, rel, bool(rel <= rtol), note))
  return out

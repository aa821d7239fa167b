r"""The layer protocol and the one forward loop and one backward loop.

A layer type is a frozen, hashable dataclass (static under ``jit``) with:

* ``out_shape(in_shape) -> shape``: one example's output shape; raises
  ``ValueError`` for an input it cannot take.
* ``param_shapes(in_shape)``: its params entry with every leaf replaced by
  its shape (``()`` for a parameterless layer).
* ``init(key, in_shape, dtype) -> params``: the params entry.
* ``forward(params, x) -> (y, cache)``: ONE example; ``cache`` is what the
  backward needs.
* ``backward(params, cache, g) -> (g_in, factors)``: ONE example, by hand:
  ``g = dL/dy`` to ``g_in = dL/dx`` and the factors of ``dL/dparams``
  (``()`` for a parameterless layer).
* ``apply(params, x) -> y``: a batch, in plain batched ``jnp``/``lax``; this
  is the independent reference that ``jax.grad(model.mean_loss)`` uses.
* ``kind``: the factor kind (:mod:`fnn.layers.kinds`) that contracts its
  factors, ``None`` for a parameterless layer.

Second order (:func:`fnn.ggn_vp`, :func:`fnn.hvp`), ONE example, by hand;
``R{q}`` is Pearlmutter's (1994) directional derivative of ``q`` along the
params tangent ``v`` (``R{x} = 0`` at the network's input):

* ``jvp(params, cache, v, r_x) -> (r_y, r_cache)``: the R-forward,
  ``R{y}`` from ``R{x}`` and the layer's own tangent ``v`` (its params entry's
  structure, ``()`` for a parameterless layer); ``r_cache`` is the R of what
  ``backward_jvp`` needs (usually ``R{x}``).
* ``backward_jvp(params, cache, v, r_cache, g, r_g) -> (r_g_in, r_factors)``:
  the R of ``backward``, given the backward's ``g`` and ``R{g}``: ``R{g_in}``
  and the R of every factor (same structure as the factors).

:class:`Layer` gives the defaults of a parameterless, shape-preserving layer.
The loops below run a tuple of layers; a container (``Residual``) runs them
on its block, so nesting needs nothing else.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax

Array = jax.Array
Shape = tuple[int, ...]


class Layer:
  r"""Base of every layer type: parameterless and shape-preserving defaults.

  Subclasses are ``@dataclasses.dataclass(frozen=True)`` and override what
  they need. ``forward``, ``backward`` see ONE example (no batch axis);
  ``apply`` sees a batch.
  """
  kind: Any = None

  def out_shape(self, in_shape: Shape) -> Shape:
    return tuple(in_shape)

  def param_shapes(self, in_shape: Shape):
    del in_shape
    return ()

  def init(self, key, in_shape: Shape, dtype):
    del key, in_shape, dtype
    return ()

  def forward(self, params, x):
    raise NotImplementedError

  def backward(self, params, cache, g):
    raise NotImplementedError

  def apply(self, params, x):
    raise NotImplementedError

  def jvp(self, params, cache, v, r_x):
    raise NotImplementedError(
        f"layer {self!r} has no hand-derived jvp (the R-forward that "
        f"fnn.ggn_vp and fnn.hvp need); see fnn.layers.base")

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    raise NotImplementedError(
        f"layer {self!r} has no hand-derived backward_jvp (the R of its "
        f"backward that fnn.hvp needs); see fnn.layers.base")

  def sublayers(self) -> tuple:
    r"""Layers nested inside (a container's block), else ``()``."""
    return ()


def chain_shapes(layers: Sequence[Layer], in_shape: Shape,
                 where: str = "layers") -> list[Shape]:
  r"""Every layer's input shape, then the output shape (``len + 1``).

  Raises:
    ValueError: naming the layer index and both shapes where they do not
      chain.
  """
  shapes = [tuple(in_shape)]
  for i, layer in enumerate(layers):
    if not isinstance(layer, Layer):
      raise TypeError(f"{where}[{i}] must be an fnn.layers layer (e.g. "
                      f"fnn.layers.Dense(10)), got {layer!r}")
    try:
      shapes.append(tuple(layer.out_shape(shapes[-1])))
    except ValueError as e:
      raise ValueError(f"{where}[{i}] {layer!r} cannot take input shape "
                       f"{shapes[-1]}: {e}") from None
  return shapes


def run_forward(layers, params, x, masks=None, slots=()):
  r"""One example through ``layers``: ``(output, caches)``.

  ``masks`` (optional) multiply the outputs of the layers at indices
  ``slots`` (inverted dropout); the caches keep what each layer's own
  backward needs.
  """
  caches = []
  for i, (layer, p) in enumerate(zip(layers, params)):
    x, cache = layer.forward(p, x)
    caches.append(cache)
    if masks is not None and i in slots:
      x = x * masks[slots.index(i)]
  return x, tuple(caches)


def run_backward(layers, params, caches, g, masks=None, slots=()):
  r"""``g = dL/d(output)`` back through ``layers``: ``(dL/dx, factors)``.

  ``factors`` has one entry per layer (``()`` for parameterless ones). An
  input gradient nobody uses (the network's ``dL/dx`` inside ``fnn.grad``)
  is removed by XLA under ``jit``.
  """
  factors = [None] * len(layers)
  for i in range(len(layers) - 1, -1, -1):
    if masks is not None and i in slots:
      g = g * masks[slots.index(i)]
    g, factors[i] = layers[i].backward(params[i], caches[i], g)
  return g, tuple(factors)


def run_jvp(layers, params, caches, v, r):
  r"""The R-forward of one example through ``layers``: ``(R{output},
  r_caches)`` from ``r = R{input}`` and the tangents ``v`` (params-shaped)."""
  r_caches = []
  for layer, p, c, vp in zip(layers, params, caches, v):
    r, rc = layer.jvp(p, c, vp, r)
    r_caches.append(rc)
  return r, tuple(r_caches)


def run_backward_jvp(layers, params, caches, v, r_caches, g, r_g):
  r"""The backward and its R together, last layer first:
  ``(dL/dx, factors, R{dL/dx}, R{factors})`` from ``g = dL/d(output)`` and
  ``R{g}`` (each layer's ``backward_jvp`` needs its own ``g``)."""
  n = len(layers)
  factors, r_factors = [None] * n, [None] * n
  for i in range(n - 1, -1, -1):
    args = (params[i], caches[i])
    g_in, factors[i] = layers[i].backward(*args, g)
    r_g, r_factors[i] = layers[i].backward_jvp(*args, v[i], r_caches[i], g,
                                               r_g)
    g = g_in
  return g, tuple(factors), r_g, tuple(r_factors)


def map_kinds(fn, layers, factors):
  r"""``fn(kind, f)`` for every parameter layer's factors ``f``, nested like
  the params (``()`` for parameterless layers, tuples for containers)."""
  out = []
  for layer, f in zip(layers, factors):
    if layer.kind is not None:
      out.append(fn(layer.kind, f))
    elif layer.sublayers():
      out.append(map_kinds(fn, layer.sublayers(), f))
    else:
      out.append(())
  return tuple(out)


def kind_leaves(layers, factors, path=()):
  r"""``[(path, layer, kind, f)]`` for every parameter layer, in params
  order; ``path`` is the index path (``(2, 0)``: block layer 0 of layer 2)."""
  out = []
  for i, (layer, f) in enumerate(zip(layers, factors)):
    if layer.kind is not None:
      out.append((path + (i,), layer, layer.kind, f))
    elif layer.sublayers():
      out.extend(kind_leaves(layer.sublayers(), f, path + (i,)))
  return out

r"""``Residual``: ``y = a + block(a)``.

Backward, given ``g = dL/dy``: the block's own backward from ``g`` gives its
factors and ``dL/da`` through the block; the skip adds ``g`` itself::

  dL/da = g + block_backward(g)

The params entry is the tuple of the block's entries, in order; the factors
likewise, each contracted by its own layer's kind.

Second order: ``R{y} = R{a} + R{block(a)}`` and
``R{dL/da} = R{g} + R{block_backward(g)}``, the block's own R loops.
"""
from __future__ import annotations

import dataclasses

import jax

from fnn.layers.base import (Layer, chain_shapes, run_backward,
                             run_backward_jvp, run_forward, run_jvp)


@dataclasses.dataclass(frozen=True, init=False)
class Residual(Layer):
  r"""``a + block(a)``; the block's output shape must equal its input's.

  Args:
    *layers: the block, one or more layers.
  """
  layers: tuple

  def __init__(self, *layers):
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
      layers = tuple(layers[0])
    if not layers:
      raise ValueError("Residual needs at least one layer in its block")
    for i, layer in enumerate(layers):
      if not isinstance(layer, Layer):
        raise TypeError(f"Residual block[{i}] must be an fnn.layers layer, "
                        f"got {layer!r}")
    object.__setattr__(self, "layers", tuple(layers))

  def __repr__(self):
    return f"Residual({', '.join(map(repr, self.layers))})"

  def sublayers(self):
    return self.layers

  def out_shape(self, in_shape):
    shapes = chain_shapes(self.layers, in_shape, "Residual block")
    if shapes[-1] != tuple(in_shape):
      raise ValueError(f"the Residual block maps {tuple(in_shape)} to "
                       f"{shapes[-1]}; a + block(a) needs equal shapes")
    return tuple(in_shape)

  def param_shapes(self, in_shape):
    shapes = chain_shapes(self.layers, in_shape, "Residual block")
    return tuple(l.param_shapes(s) for l, s in zip(self.layers, shapes))

  def init(self, key, in_shape, dtype):
    shapes = chain_shapes(self.layers, in_shape, "Residual block")
    keys = jax.random.split(key, len(self.layers))
    return tuple(l.init(k, s, dtype)
                 for l, k, s in zip(self.layers, keys, shapes))

  def forward(self, params, x):
    y, caches = run_forward(self.layers, params, x)
    return x + y, caches

  def backward(self, params, cache, g):
    g_block, factors = run_backward(self.layers, params, cache, g)
    return g + g_block, factors

  def jvp(self, params, cache, v, r_x):
    r_y, r_caches = run_jvp(self.layers, params, cache, v, r_x)
    return r_x + r_y, r_caches

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    *_, r_block, r_factors = run_backward_jvp(self.layers, params, cache, v,
                                              r_cache, g, r_g)
    return r_g + r_block, r_factors

  def apply(self, params, x):
    y = x
    for layer, p in zip(self.layers, params):
      y = layer.apply(p, y)
    return x + y

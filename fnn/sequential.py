r"""``Sequential``: any stack of :mod:`fnn.layers`, with an output and a loss.

The network is ``layers`` (one example's input shape ``in_shape``), ending in
a ``Dense`` whose pre-activation ``z`` goes through ``output`` into ``loss``,
as in :class:`fnn.MLP`. Every function of fnn (``fnn.grad``,
``fnn.per_example_grad_norms``, ``fnn.grad_stats``, ``fnn.dp_grad``,
``fnn.check_grads``, ``fnn.fit``, ...) takes it in place of an ``MLP``.

Example::

  L = fnn.layers
  model = fnn.Sequential((40,), [
      L.Conv1d(25, 5, stride=2, padding=1), L.Activation("relu"),
      L.Flatten(), L.Dense(10)])
  params = model.init(jax.random.key(0))
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _checks, _compile
from fnn import layers as layer_lib
from fnn.model import batch_mean_loss, floating_dtype, output_and_loss

Array = jax.Array


def _shape(in_shape) -> tuple[int, ...]:
  if isinstance(in_shape, (int, np.integer)) and not isinstance(in_shape, bool):
    in_shape = (in_shape,)
  if (not isinstance(in_shape, Sequence) or isinstance(in_shape, str)
      or not in_shape or any(isinstance(n, bool) or not isinstance(
          n, (int, np.integer)) or n < 1 for n in in_shape)):
    raise ValueError(f"in_shape must be one example's shape of positive ints, "
                     f"e.g. (40,) or (40, 1), got {in_shape!r}")
  return tuple(int(n) for n in in_shape)


@dataclasses.dataclass(frozen=True, init=False)
class Sequential:
  r"""A frozen, hashable stack of layers (static under ``jit``).

  Args:
    in_shape: one example's input shape, e.g. ``(40,)`` (an int is one axis).
    layers: :mod:`fnn.layers` instances; the last must be a ``Dense`` (the
      output layer).
    output: the output activation, as for :class:`fnn.MLP`.
    loss: the per-example loss; must fit ``output``.

  Attributes:
    shapes: one example's shape before every layer, then the output's.

  Raises:
    ValueError: shapes that do not chain (naming the layer index and both
      shapes), a last layer that is not ``Dense``, a bad (output, loss).
    TypeError: an entry that is not a layer.
  """
  in_shape: tuple
  layers: tuple
  output: Any
  loss: Any

  def __init__(self, in_shape, layers, output: Any = "softmax",
               loss: Any = "categorical_cross_entropy"):
    in_shape = _shape(in_shape)
    if isinstance(layers, layer_lib.Layer) or not isinstance(layers, Sequence):
      raise TypeError(f"layers must be a list of fnn.layers layers, got "
                      f"{layers!r}")
    layers = tuple(layers)
    if not layers or not isinstance(layers[-1], layer_lib.Dense):
      raise ValueError(f"the last layer must be fnn.layers.Dense (the output "
                       f"layer), got {layers[-1] if layers else 'no layers'!r}")
    shapes = layer_lib.chain_shapes(layers, in_shape)
    output, loss = output_and_loss(output, loss, shapes[-1][0],
                                   f"a last Dense of {shapes[-1][0]}")
    for k, v in (("in_shape", in_shape), ("layers", layers),
                 ("output", output), ("loss", loss)):
      object.__setattr__(self, k, v)
    object.__setattr__(self, "_shapes", tuple(shapes))

  def __repr__(self):
    return (f"Sequential({self.in_shape}, [{', '.join(map(repr, self.layers))}]"
            f", output={self.output.name!r}, loss={self.loss.name!r})")

  def __hash__(self):
    h = self.__dict__.get("_hash")
    if h is None:
      h = hash((self.in_shape, self.layers, self.output, self.loss))
      object.__setattr__(self, "_hash", h)
    return h

  @property
  def shapes(self) -> tuple[tuple[int, ...], ...]:
    return self._shapes

  @property
  def n_out(self) -> int:
    return self._shapes[-1][0]

  @property
  def num_layers(self) -> int:
    return len(self.layers)

  @property
  def fused(self) -> bool:
    from fnn import losses as loss_lib
    return loss_lib.is_fused(self.loss, self.output.name)

  @property
  def mask_slots(self) -> tuple[int, ...]:
    r"""Dropout applies to the output of every top-level ``Activation``."""
    return tuple(i for i, l in enumerate(self.layers)
                 if isinstance(l, layer_lib.Activation))

  @property
  def dropout_shapes(self) -> tuple[tuple[int, ...], ...]:
    return tuple(self._shapes[i + 1] for i in self.mask_slots)

  @property
  def param_shapes(self) -> tuple:
    r"""The params structure with every leaf replaced by its shape."""
    return tuple(l.param_shapes(s) for l, s in zip(self.layers, self._shapes))

  def expand(self, params):
    return params

  def compress(self, tree):
    return tree

  def parameter_count(self) -> int:
    return sum(math.prod(s) for s in _shape_leaves(self.param_shapes))

  def init(self, key: Array, dtype=jnp.float32, scheme=None) -> tuple:
    r"""Draws parameters: one key per layer, each layer's own init.

    Args:
      key: a PRNG key, split once per layer.
      dtype: a floating dtype for every leaf.
      scheme: ``None`` (each layer's own ``init=``) or a scheme of
        ``fnn.INIT_SCHEMES`` for every Dense and Conv1d layer.

    Returns:
      A tuple with one entry per layer (``()`` for parameterless layers).
    """
    dt = floating_dtype(dtype)
    layers = self.layers if scheme is None else _with_scheme(self.layers,
                                                             scheme)
    # One compiled program (op-by-op, every layer's draws compiled apart:
    # seconds for a CNN); the draws are the same.
    return _init(layers, self._shapes, key, dt)

  def _logits(self, params, x: Array, masks=None) -> Array:
    slots = self.mask_slots
    for i, (layer, p) in enumerate(zip(self.layers, params)):
      x = layer.apply(p, x)
      if masks is not None and i in slots:
        x = x * masks[slots.index(i)]
    return x

  def apply(self, params, x: Array) -> Array:
    r"""Forward pass of a batch ``x: [batch, *in_shape]``: the outputs."""
    x = _checks.check_x(self, params, x, batched=True)
    return self.output.fn(self._logits(params, x))

  def mean_loss(self, params, x: Array, y: Array, masks=None) -> Array:
    r"""The batch mean of the per-example loss, in plain batched ``jnp``/
    ``lax`` (each layer's ``apply``): the independent reference for
    ``jax.grad``. Arguments as for :meth:`fnn.MLP.mean_loss`."""
    return batch_mean_loss(self, params, x, y, masks)


@_compile.jit_once(static_argnums=(0, 1, 3))
def _init(layers, shapes, key, dtype):
  keys = jax.random.split(key, len(layers))
  return tuple(l.init(k, s, dtype) for l, k, s in zip(layers, keys, shapes))


def _with_scheme(layers, scheme: str) -> tuple:
  r"""``layers`` with every ``init_scheme`` set to ``scheme`` (recursively)."""
  layer_lib.dense.check_scheme(scheme)
  out = []
  for l in layers:
    if l.sublayers():
      l = layer_lib.Residual(*_with_scheme(l.sublayers(), scheme))
    elif hasattr(l, "init_scheme"):
      l = _rescheme(l, scheme)
    out.append(l)
  return tuple(out)


def _rescheme(layer, scheme):
  new = object.__new__(type(layer))
  for f in dataclasses.fields(layer):
    object.__setattr__(new, f.name, getattr(layer, f.name))
  object.__setattr__(new, "init_scheme", scheme)
  return new


def _shape_leaves(tree):
  r"""The shape tuples of a :attr:`Sequential.param_shapes` tree."""
  if type(tree) is tuple:
    return [s for t in tree for s in _shape_leaves(t)]
  return list(tree)  # a NamedTuple of shapes

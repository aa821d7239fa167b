r"""Parameterless layers: ``Activation`` and ``Flatten``.

``Activation``'s backward is BP2's elementwise factor,
``dL/dz = dL/da * sigma'(z)`` (or the activation's vector-Jacobian product
for one that mixes units); ``Flatten``'s is a reshape back.

Second order: ``Activation`` (elementwise) has ``R{a} = sigma'(z) R{z}`` and
``R{dL/dz} = R{g} sigma'(z) + g sigma''(z) R{z}`` (the activation's
``grad2``); ``Flatten``'s R is the same reshape (it is linear).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from fnn import activations as act_lib
from fnn.layers.base import Layer


@dataclasses.dataclass(frozen=True, init=False)
class Activation(Layer):
  r"""``a = sigma(z)`` elementwise, any registered activation.

  Args:
    name: a registered name (``fnn.ACTIVATIONS``, user-registered ones
      included) or an :class:`fnn.Activation`.

  Attributes:
    activation: the resolved :class:`fnn.Activation` (``fn`` and its
      hand-derived ``grad``).
  """
  activation: Any

  def __init__(self, name):
    object.__setattr__(self, "activation",
                       act_lib.get_activation(name, hidden=True))

  @property
  def name(self) -> str:
    return self.activation.name

  def forward(self, params, x):
    a = self.activation.fn(x)
    return a, (x, a)

  def backward(self, params, cache, g):
    z, a = cache
    return self.activation.backward(z, a, g), ()

  def jvp(self, params, cache, v, r_x):
    z, a = cache
    return r_x * self.activation.grad(z, a), r_x  # keep R{z}

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    z, a = cache
    return self.activation.backward_jvp(z, a, g, r_cache, r_g), ()

  def apply(self, params, x):
    return self.activation.fn(x)

  def __repr__(self):
    return f"Activation({self.name!r})"


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
  r"""``[length, channels] -> [length * channels]``, row-major (index
  ``t * channels + c``)."""

  def out_shape(self, in_shape):
    return (math.prod(in_shape),)

  def forward(self, params, x):
    return x.reshape(-1), x

  def backward(self, params, cache, g):
    return g.reshape(cache.shape), ()

  def jvp(self, params, cache, v, r_x):
    return r_x.reshape(-1), ()

  def backward_jvp(self, params, cache, v, r_cache, g, r_g):
    return r_g.reshape(cache.shape), ()

  def apply(self, params, x):
    return x.reshape(x.shape[0], -1)

  def __repr__(self):
    return "Flatten()"

r"""Per-example losses, each bundled with its hand-derived derivative.

A :class:`Loss` holds ``fn(a, y)``, the loss of one example from the output
activations (summed over output units), and ``grad(a, y) = dL/da``. Both work
on any leading batch shape (they reduce over the last axis only).

A loss may also be *canonical* for one output activation (its "matching"
link). For those pairs the backward skips ``dL/da * sigma'(z)`` and uses the
fused output error ``delta_z(z, a, y) = dL/dz``, ``a - y`` in the write-ups,
and the loss is computed from the pre-activation ``z`` (``fn_z``), which stays
finite for any ``|z|``:

=======================  ==========  =================================
loss                     output      dL/dz
=======================  ==========  =================================
binary_cross_entropy     sigmoid     ``a - y`` (seeds 000, 001)
categorical_cross_entr.  softmax     ``a sum(y) - y`` (``a - y`` for
                                     probability rows)
half_squared_error       identity    ``a - y`` (Nielsen, ch. 2)
=======================  ==========  =================================

References:
  Seeds 000/001 (binary cross-entropy with a sigmoid output), 002 (squared
  error ``(a - y)^2``), 003 / Nielsen ch. 2 (quadratic cost ``1/2 |a - y|^2``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


class Loss(NamedTuple):
  r"""A per-example loss and its hand-derived derivative.

  Attributes:
    name: the registry name.
    fn: ``(a, y) -> L``, reducing over the last axis.
    grad: ``(a, y) -> dL/da``.
    outputs: the output activations this loss accepts; ``None`` for any.
    canonical: the output activation whose pair is fused, or ``None``.
    fn_z: ``(z, y) -> L`` from the pre-activation, for the canonical pair.
    delta_z: ``(z, a, y) -> dL/dz``, the fused output error of the pair.
    targets: ``"probability"`` (values in [0, 1]) or ``"real"``.
  """
  name: str
  fn: Callable[[Array, Array], Array]
  grad: Callable[[Array, Array], Array]
  outputs: Optional[tuple[str, ...]] = None
  canonical: Optional[str] = None
  fn_z: Optional[Callable[[Array, Array], Array]] = None
  delta_z: Optional[Callable[[Array, Array, Array], Array]] = None
  targets: str = "real"


def binary_cross_entropy(a: Array, y: Array) -> Array:
  r"""``-sum_j [y_j log a_j + (1 - y_j) log(1 - a_j)]`` (seed 001)."""
  return -jnp.sum(y * jnp.log(a) + (1 - y) * jnp.log1p(-a), axis=-1)


def binary_cross_entropy_grad(a: Array, y: Array) -> Array:
  r"""``dL/da = -y/a + (1 - y)/(1 - a)`` (seed 000, step 1)."""
  return -y / a + (1 - y) / (1 - a)


def binary_cross_entropy_from_logits(z: Array, y: Array) -> Array:
  r"""The same loss from ``z``: ``sum_j softplus(z_j) - y_j z_j``.

  Uses ``-log sigmoid(z) = softplus(-z)`` and ``-log(1 - sigmoid(z)) =
  softplus(z)``; finite for any ``z``.
  """
  return jnp.sum(jnp.logaddexp(z, 0) - y * z, axis=-1)


def sigmoid_cross_entropy_delta(z: Array, a: Array, y: Array) -> Array:
  r"""``dL/dz = a - y`` for sigmoid + binary cross-entropy (seed 000, eq. 1)."""
  del z
  return a - y


def categorical_cross_entropy(a: Array, y: Array) -> Array:
  r"""``-sum_j y_j log a_j``."""
  return -jnp.sum(y * jnp.log(a), axis=-1)


def categorical_cross_entropy_grad(a: Array, y: Array) -> Array:
  r"""``dL/da_j = -y_j / a_j``."""
  return -y / a


def categorical_cross_entropy_from_logits(z: Array, y: Array) -> Array:
  r"""``-sum_j y_j log softmax(z)_j = sum(y) logsumexp(z) - <y, z>``."""
  lse = jax.nn.logsumexp(z, axis=-1)
  return jnp.sum(y, axis=-1) * lse - jnp.sum(y * z, axis=-1)


def softmax_cross_entropy_delta(z: Array, a: Array, y: Array) -> Array:
  r"""``dL/dz = a sum(y) - y``; ``a - y`` when the row of ``y`` sums to 1.

  The ``sum(y)`` factor keeps the result exact for unnormalized targets.
  """
  del z
  return a * jnp.sum(y, axis=-1, keepdims=True) - y


def squared_error(a: Array, y: Array) -> Array:
  r"""``C = sum_j (a_j - y_j)^2`` (seed 002)."""
  return jnp.sum((a - y) ** 2, axis=-1)


def squared_error_grad(a: Array, y: Array) -> Array:
  r"""``dC/da = 2 (a - y)`` (seed 002)."""
  return 2 * (a - y)


def half_squared_error(a: Array, y: Array) -> Array:
  r"""``C = 1/2 sum_j (a_j - y_j)^2`` (seed 003, Nielsen's quadratic cost)."""
  return 0.5 * jnp.sum((a - y) ** 2, axis=-1)


def half_squared_error_grad(a: Array, y: Array) -> Array:
  r"""``grad_a C = a - y`` (Nielsen, eq. 30 / BP1)."""
  return a - y


def identity_half_squared_error_delta(z: Array, a: Array, y: Array) -> Array:
  r"""``dL/dz = a - y`` for an identity output (linear regression)."""
  del z
  return a - y


BINARY_CROSS_ENTROPY = Loss(
    "binary_cross_entropy", binary_cross_entropy, binary_cross_entropy_grad,
    outputs=("sigmoid",), canonical="sigmoid",
    fn_z=binary_cross_entropy_from_logits,
    delta_z=sigmoid_cross_entropy_delta, targets="probability")
CATEGORICAL_CROSS_ENTROPY = Loss(
    "categorical_cross_entropy", categorical_cross_entropy,
    categorical_cross_entropy_grad, outputs=("softmax",), canonical="softmax",
    fn_z=categorical_cross_entropy_from_logits,
    delta_z=softmax_cross_entropy_delta, targets="probability")
SQUARED_ERROR = Loss("squared_error", squared_error, squared_error_grad)
HALF_SQUARED_ERROR = Loss(
    "half_squared_error", half_squared_error, half_squared_error_grad,
    canonical="identity", fn_z=half_squared_error,
    delta_z=identity_half_squared_error_delta)

LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (BINARY_CROSS_ENTROPY, CATEGORICAL_CROSS_ENTROPY,
                 SQUARED_ERROR, HALF_SQUARED_ERROR)
}


_BUILTIN = frozenset(LOSSES)
TARGETS = ("real", "probability")


def register_loss(name: str, fn: Callable[[Array, Array], Array],
                  grad: Callable[[Array, Array], Array], *,
                  outputs: Optional[tuple[str, ...]] = None,
                  canonical: Optional[str] = None,
                  fn_z: Optional[Callable[[Array, Array], Array]] = None,
                  delta_z: Optional[Callable[[Array, Array, Array], Array]] = None,
                  targets: str = "real", replace: bool = False) -> Loss:
  r"""Adds a hand-derived per-example loss to the registry, usable by name.

  Args:
    name: the new name; built-in names cannot be replaced.
    fn: ``(a, y) -> L``, summing over the last axis (output units).
    grad: ``(a, y) -> dL/da``, the derivative you derived by hand.
    outputs: the output activations it accepts (``None``: any).
    canonical: an output activation whose pair uses the fused ``delta_z``
      (give ``fn_z`` and ``delta_z`` with it).
    fn_z: ``(z, y) -> L`` from the output pre-activation, for that pair.
    delta_z: ``(z, a, y) -> dL/dz`` for that pair.
    targets: ``"real"`` or ``"probability"`` (targets checked to lie in
      [0, 1]).
    replace: allow replacing an earlier registration of ``name``.

  Returns:
    The registered :class:`Loss`.

  Raises:
    ValueError: bad or taken name, inconsistent canonical settings, unknown
      ``targets``, functions that return the wrong shape.
    TypeError: a function that is not callable.
  """
  from fnn import activations as act_lib
  act_lib._check_name("loss", name, LOSSES, _BUILTIN, replace)
  for what, f in (("fn", fn), ("grad", grad)):
    act_lib._check_callable(what, f, name)
  if targets not in TARGETS:
    raise ValueError(f"targets of loss {name!r} must be one of {TARGETS}, got "
                     f"{targets!r}")
  if outputs is not None:
    outputs = tuple(outputs)
    unknown = [o for o in outputs if o not in act_lib.ACTIVATIONS]
    if unknown:
      raise ValueError(f"loss {name!r}: unknown output activations {unknown}")
  if canonical is not None:
    if fn_z is None or delta_z is None:
      raise ValueError(f"loss {name!r}: canonical={canonical!r} needs fn_z and "
                       f"delta_z")
    if canonical not in act_lib.ACTIVATIONS:
      raise ValueError(f"loss {name!r}: unknown canonical output {canonical!r}")
    for what, f in (("fn_z", fn_z), ("delta_z", delta_z)):
      act_lib._check_callable(what, f, name)
  elif fn_z is not None or delta_z is not None:
    raise ValueError(f"loss {name!r}: fn_z and delta_z need canonical=<output>")
  a = jnp.full((2, 3), 0.3)
  y = jnp.full((2, 3), 0.6)
  for what, v, want in (("fn", fn(a, y), (2,)), ("grad", grad(a, y), (2, 3))):
    if jnp.shape(v) != want:
      raise ValueError(f"{what} of loss {name!r} must return shape {want} for "
                       f"a, y of shape (2, 3), got {jnp.shape(v)}")
  loss = Loss(name, fn, grad, outputs, canonical, fn_z, delta_z, targets)
  LOSSES[name] = loss
  return loss


def get_loss(spec: str | Loss) -> Loss:
  r"""Resolves a loss name (or passes a :class:`Loss` through).

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything that is neither a string nor a Loss.
  """
  if isinstance(spec, Loss):
    return spec
  if isinstance(spec, str):
    if spec not in LOSSES:
      raise ValueError(f"unknown loss {spec!r}; choose from {sorted(LOSSES)}")
    return LOSSES[spec]
  raise TypeError(
      f"loss must be a name or fnn.Loss, got {type(spec).__name__} {spec!r}")


def is_fused(loss: Loss, output_name: str) -> bool:
  r"""Whether the (output, loss) pair uses the fused ``dL/dz``."""
  return loss.canonical is not None and loss.canonical == output_name


def valid_pairs(output_names) -> list[tuple[str, str]]:
  r"""All (output activation, loss) pairs accepted among ``output_names``."""
  return [(o, l.name) for l in LOSSES.values() for o in output_names
          if l.outputs is None or o in l.outputs]

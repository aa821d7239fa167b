r"""Activations, each bundled with its hand-derived derivative.

An :class:`Activation` pairs a forward function ``fn(z) -> a`` with the
derivative used by the backward pass. Elementwise activations give
``grad(z, a) = sigma'(z)`` (both the pre-activation ``z`` and the activation
``a = fn(z)`` are passed, so that e.g. the sigmoid can use ``a (1 - a)``);
BP2 of Nielsen, ch. 2, then reads ``delta = g * sigma'(z)`` with ``g = dL/da``.
Softmax is not elementwise and gives a vector-Jacobian product instead.

Every ``fn`` works on arrays of any shape (softmax on the last axis), so the
same function serves one example and a batch. The built-in closed forms
(``tanh``, ``tanh_grad``, ``tanh_grad2``, ...) live in
:mod:`fnn._activation_fns` and are re-exported here.

References:
  Nielsen, *Neural Networks and Deep Learning*, ch. 2 (BP1-BP4).
  Hendrycks & Gimpel (2016), "Gaussian Error Linear Units (GELUs)".
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from fnn._activation_fns import (  # noqa: F401 (re-exported)
    identity, identity_grad, identity_grad2, sigmoid, sigmoid_grad,
    sigmoid_grad2, tanh, tanh_grad, tanh_grad2, relu, relu_grad,
    piecewise_linear_grad2, leaky_relu, leaky_relu_grad, elu, elu_grad,
    elu_grad2, softplus, softplus_grad, softplus_grad2, gelu, gelu_grad,
    gelu_grad2, gelu_tanh, gelu_tanh_grad, gelu_tanh_grad2, silu, silu_grad,
    silu_grad2, softmax, softmax_vjp, LEAKY_RELU_SLOPE)

Array = jax.Array


class Activation(NamedTuple):
  r"""A forward function and its hand-derived derivative.

  Attributes:
    name: the registry name, e.g. ``"tanh"``.
    fn: ``z -> a``, applied elementwise (softmax: over the last axis).
    grad: ``(z, a) -> sigma'(z)`` elementwise, for elementwise activations;
      ``None`` for activations that mix units (softmax).
    vjp: ``(z, a, g) -> g^T (da/dz)``, the vector-Jacobian product; required
      when ``grad`` is ``None``, derived from ``grad`` otherwise.
    kinks: points where ``fn`` is not differentiable (0 for ReLU); a
      finite-difference check near them is not meaningful.
    hidden: whether the activation may be used in a hidden layer.
    grad2: ``(z, a) -> sigma''(z)`` elementwise, the second derivative that
      :func:`fnn.hvp` needs (Pearlmutter's R{.} of BP2 reads
      ``R{dL/dz} = R{g} sigma'(z) + g sigma''(z) R{z}``); ``None`` where not
      derived (``fnn.hvp`` then raises), and for softmax (its second-order
      terms are closed forms in :mod:`fnn.curvature_vp`).
  """
  name: str
  fn: Callable[[Array], Array]
  grad: Optional[Callable[[Array, Array], Array]] = None
  vjp: Optional[Callable[[Array, Array, Array], Array]] = None
  kinks: tuple[float, ...] = ()
  hidden: bool = True
  grad2: Optional[Callable[[Array, Array], Array]] = None

  def backward(self, z: Array, a: Array, g: Array) -> Array:
    r"""Returns ``dL/dz`` given ``g = dL/da``: ``g * sigma'(z)`` (BP1/BP2)."""
    if self.grad is not None:
      return g * self.grad(z, a)
    return self.vjp(z, a, g)

  def backward_jvp(self, z: Array, a: Array, g: Array, r_z: Array,
                   r_g: Array) -> Array:
    r"""Pearlmutter's ``R{.}`` of :meth:`backward` (elementwise only).

    ``dL/dz = g * sigma'(z)``, so by the product rule
    ``R{dL/dz} = R{g} sigma'(z) + g sigma''(z) R{z}``.

    Raises:
      ValueError: for an activation without ``grad2`` (or a mixer).
    """
    if self.grad is None or self.grad2 is None:
      raise ValueError(
          f"activation {self.name!r} has no second derivative grad2 (needed "
          f"by fnn.hvp); derive sigma''(z) and pass grad2=... to "
          f"fnn.register_activation or fnn.Activation")
    if self.grad2 in _ZERO_GRAD2:  # piecewise linear: sigma'' = 0
      # The term g * 0 * R{z} is left out (XLA keeps it under IEEE rules,
      # and with it the primal delta this product would not otherwise
      # need); it differs only where g or R{z} is inf or NaN.
      return r_g * self.grad(z, a)
    return r_g * self.grad(z, a) + g * self.grad2(z, a) * r_z


# Built-in second derivatives that are identically 0.
_ZERO_GRAD2 = (identity_grad2, piecewise_linear_grad2)

IDENTITY = Activation("identity", identity, identity_grad,
                      grad2=identity_grad2)
SIGMOID = Activation("sigmoid", sigmoid, sigmoid_grad, grad2=sigmoid_grad2)
TANH = Activation("tanh", tanh, tanh_grad, grad2=tanh_grad2)
RELU = Activation("relu", relu, relu_grad, kinks=(0.0,),
                  grad2=piecewise_linear_grad2)
LEAKY_RELU = Activation("leaky_relu", leaky_relu, leaky_relu_grad,
                        kinks=(0.0,), grad2=piecewise_linear_grad2)
ELU = Activation("elu", elu, elu_grad, grad2=elu_grad2)
SOFTPLUS = Activation("softplus", softplus, softplus_grad,
                      grad2=softplus_grad2)
GELU = Activation("gelu", gelu, gelu_grad, grad2=gelu_grad2)
GELU_TANH = Activation("gelu_tanh", gelu_tanh, gelu_tanh_grad,
                       grad2=gelu_tanh_grad2)
SILU = Activation("silu", silu, silu_grad, grad2=silu_grad2)
SOFTMAX = Activation("softmax", softmax, vjp=softmax_vjp, hidden=False)

ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, ELU, SOFTPLUS,
                GELU, GELU_TANH, SILU, SOFTMAX)
}
# The built-in names; :func:`hidden_activations` and :func:`output_activations`
# also list the ones added with :func:`register_activation`.
HIDDEN_ACTIVATIONS = tuple(n for n, a in ACTIVATIONS.items() if a.hidden)
OUTPUT_ACTIVATIONS = tuple(ACTIVATIONS)
_BUILTIN = frozenset(ACTIVATIONS)


def hidden_activations() -> tuple[str, ...]:
  r"""Names usable in hidden layers, built-in and registered."""
  return tuple(n for n, a in ACTIVATIONS.items() if a.hidden)


def output_activations() -> tuple[str, ...]:
  r"""Names usable as the output activation, built-in and registered."""
  return tuple(ACTIVATIONS)


def _check_callable(what: str, f, name: str) -> None:
  if not callable(f):
    raise TypeError(f"{what} of {name!r} must be callable, got "
                    f"{type(f).__name__} {f!r}")


def _check_name(kind: str, name, registry, builtin, replace: bool) -> None:
  if not isinstance(name, str) or not name.strip() or "," in name:
    raise ValueError(f"{kind} name must be a non-empty string without commas, "
                     f"got {name!r}")
  if name in builtin:
    raise ValueError(f"{name!r} is a built-in {kind}; register yours under "
                     f"another name")
  if name in registry and not replace:
    raise ValueError(f"{kind} {name!r} is already registered; pass "
                     f"replace=True to replace it")


def register_activation(name: str, fn: Callable[[Array], Array],
                        grad: Optional[Callable[[Array, Array], Array]] = None,
                        *, vjp=None, kinks=(), hidden: bool = True,
                        replace: bool = False, grad2=None) -> Activation:
  r"""Adds a hand-derived activation to the registry, usable by name.

  After ``register_activation("swish2", fn, grad)``, ``fnn.MLP(...,
  activation="swish2")``, ``fnn.check_grads`` and ``fnn gradcheck
  --activation swish2`` (with ``--import`` of the registering module) use it.
  To avoid the registry, build ``fnn.Activation(name, fn, grad)`` and pass
  the object to ``fnn.MLP`` instead; nothing else changes.

  Args:
    name: the new name; built-in names cannot be replaced.
    fn: ``z -> a``, elementwise.
    grad: ``(z, a) -> sigma'(z)``, the derivative you derived by hand.
    vjp: ``(z, a, g) -> dL/dz`` instead of ``grad`` for activations that mix
      units (output only).
    kinks: points where ``fn`` is not differentiable, e.g. ``(0.0,)``;
      gradient checks report finite differences that straddle them as
      ``kink`` instead of failing.
    hidden: whether the activation may be used in hidden layers.
    replace: allow replacing an earlier registration of ``name``.
    grad2: ``(z, a) -> sigma''(z)``, the second derivative (elementwise
      activations only); :func:`fnn.hvp` needs it, nothing else does.

  Returns:
    The registered :class:`Activation`.

  Raises:
    ValueError: bad or taken name; neither ``grad`` nor ``vjp``; ``grad2``
      without ``grad``; ``fn``, ``grad`` or ``grad2`` do not keep the shape
      of ``z``.
    TypeError: ``fn``, ``grad``, ``vjp`` or ``grad2`` not callable.
  """
  _check_name("activation", name, ACTIVATIONS, _BUILTIN, replace)
  _check_callable("fn", fn, name)
  if grad is None and vjp is None:
    raise ValueError(f"activation {name!r} needs grad (elementwise) or vjp")
  if grad is not None:
    _check_callable("grad", grad, name)
  if vjp is not None:
    _check_callable("vjp", vjp, name)
  if grad2 is not None:
    _check_callable("grad2", grad2, name)
    if grad is None:
      raise ValueError(f"activation {name!r}: grad2 is for elementwise "
                       f"activations and needs grad")
  if hidden and grad is None:
    raise ValueError(f"activation {name!r} has only a vjp (it mixes units); "
                     f"register it with hidden=False")
  try:
    kinks = tuple(float(k) for k in kinks)
  except (TypeError, ValueError):
    raise TypeError(f"kinks of {name!r} must be a sequence of numbers, got "
                    f"{kinks!r}") from None
  act = Activation(name, fn, grad, vjp, kinks, bool(hidden), grad2)
  z = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)  # a quick shape check
  a = jnp.asarray(fn(z))
  out = (grad(z, a) if grad is not None
         else act.backward(z, a, jnp.ones_like(z)))
  checks = [("fn", a), ("grad" if grad is not None else "vjp", out)]
  if grad2 is not None:
    checks.append(("grad2", grad2(z, a)))
  for what, v in checks:
    if jnp.shape(v) != z.shape:
      raise ValueError(f"{what} of activation {name!r} must return an array "
                       f"of z's shape {z.shape}, got {jnp.shape(v)}")
  ACTIVATIONS[name] = act
  return act


def get_activation(spec: str | Activation, *, hidden: bool) -> Activation:
  r"""Resolves a name (or passes an :class:`Activation` through).

  Raises:
    ValueError: for an unknown name, or softmax in a hidden layer.
    TypeError: for anything that is neither a string nor an Activation.
  """
  where = "hidden" if hidden else "output"
  if isinstance(spec, Activation):
    act = spec
    if act.grad is None and act.vjp is None:
      raise ValueError(
          f"activation {act.name!r} needs a grad (elementwise) or a vjp")
  elif isinstance(spec, str):
    if spec not in ACTIVATIONS:
      choices = hidden_activations() if hidden else output_activations()
      raise ValueError(
          f"unknown {where} activation {spec!r}; choose from {sorted(choices)}")
    act = ACTIVATIONS[spec]
  else:
    raise TypeError(
        f"{where} activation must be a name or fnn.Activation, got "
        f"{type(spec).__name__} {spec!r}")
  if hidden and not act.hidden:
    raise ValueError(
        f"activation {act.name!r} mixes units and is only valid as the output; "
        f"hidden activations: {sorted(hidden_activations())}")
  return act

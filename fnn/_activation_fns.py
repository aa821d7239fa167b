r"""The built-in activations' closed forms, each forward next to its
hand-derived derivatives: ``fn(z)``, ``grad(z, a) = sigma'(z)`` and
``grad2(z, a) = sigma''(z)`` (softmax: its vjp). :mod:`fnn.activations`
bundles them into :class:`fnn.Activation` objects and re-exports every name.

References:
  Nielsen, *Neural Networks and Deep Learning*, ch. 2 (BP1-BP4).
  Hendrycks & Gimpel (2016), "Gaussian Error Linear Units (GELUs)".
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

Array = jax.Array


def identity(z: Array) -> Array:
  return z


def identity_grad(z: Array, a: Array) -> Array:
  del a
  return jnp.ones_like(z)


def identity_grad2(z: Array, a: Array) -> Array:
  r"""``0``."""
  del a
  return jnp.zeros_like(z)


def sigmoid(z: Array) -> Array:
  return jax.nn.sigmoid(z)


def sigmoid_grad(z: Array, a: Array) -> Array:
  r"""``sigma'(z) = a (1 - a)`` (seed 000, step 2.1)."""
  del z
  return a * (1 - a)


def sigmoid_grad2(z: Array, a: Array) -> Array:
  r"""``sigma''(z) = d/dz [a (1 - a)] = a (1 - a) (1 - 2a)``."""
  del z
  return a * (1 - a) * (1 - 2 * a)


def tanh(z: Array) -> Array:
  return jnp.tanh(z)


def tanh_grad(z: Array, a: Array) -> Array:
  r"""``tanh'(z) = 1 - a^2``."""
  del z
  return 1 - a * a


def tanh_grad2(z: Array, a: Array) -> Array:
  r"""``tanh''(z) = d/dz (1 - a^2) = -2 a (1 - a^2)``."""
  del z
  return -2 * a * (1 - a * a)


def relu(z: Array) -> Array:
  # jax.nn.relu: its derivative at 0 is 0, like relu_grad (jnp.maximum gives 0.5).
  return jax.nn.relu(z)


def relu_grad(z: Array, a: Array) -> Array:
  r"""``1`` where ``z > 0``, else ``0`` (the subgradient 0 at the kink)."""
  del a
  return (z > 0).astype(z.dtype)


def piecewise_linear_grad2(z: Array, a: Array) -> Array:
  r"""``0``: ReLU and leaky ReLU are linear on each side of the kink (the
  kink's delta is left out, as autodiff does)."""
  del a
  return jnp.zeros_like(z)


LEAKY_RELU_SLOPE = 0.01  # jax.nn.leaky_relu's and PyTorch's default slope.


def leaky_relu(z: Array) -> Array:
  return jnp.where(z >= 0, z, LEAKY_RELU_SLOPE * z)


def leaky_relu_grad(z: Array, a: Array) -> Array:
  r"""``1`` where ``z >= 0``, else the slope 0.01."""
  del a
  return jnp.where(z >= 0, 1.0, LEAKY_RELU_SLOPE).astype(z.dtype)


@jax.custom_jvp
def elu(z: Array) -> Array:
  r"""ELU with alpha = 1: ``z`` for ``z > 0``, ``exp(z) - 1`` otherwise.

  Its JVP is :func:`elu_grad`'s ``exp(z)``: autodiff of ``expm1`` would give
  ``expm1(z) + 1``, which cancels to 0 for ``z <= -18`` in float32, so
  ``jax.grad`` and the hand-derived backward agree there too.
  """
  safe = jnp.where(z > 0, 0, z)  # keeps expm1 from overflowing on the unused branch
  return jnp.where(z > 0, z, jnp.expm1(safe))


def elu_grad(z: Array, a: Array) -> Array:
  r"""``1`` for ``z > 0``, ``exp(z)`` otherwise.

  Not ``a + 1``: that equals ``exp(z)`` in exact arithmetic but cancels, and
  is ``0`` in float32 for ``z <= -18`` (``expm1(z)`` rounds to ``-1``) while
  ``exp(z)`` is still representable. ``exp`` of ``min(z, 0)`` keeps the
  unused branch from overflowing.
  """
  del a
  return jnp.where(z > 0, 1, jnp.exp(jnp.minimum(z, 0))).astype(z.dtype)


def elu_grad2(z: Array, a: Array) -> Array:
  r"""``0`` for ``z > 0``, ``exp(z)`` otherwise (alpha = 1; as
  :func:`elu_grad`, ``exp`` of ``min(z, 0)`` rather than ``a + 1``)."""
  del a
  return jnp.where(z > 0, 0, jnp.exp(jnp.minimum(z, 0))).astype(z.dtype)


@elu.defjvp
def _elu_jvp(primals, tangents):
  (z,), (t,) = primals, tangents
  a = elu(z)
  return a, elu_grad(z, a) * t


def softplus(z: Array) -> Array:
  return jnp.logaddexp(z, 0)


def softplus_grad(z: Array, a: Array) -> Array:
  r"""``softplus'(z) = sigmoid(z)``."""
  del a
  return jax.nn.sigmoid(z)


def softplus_grad2(z: Array, a: Array) -> Array:
  r"""``softplus''(z) = sigmoid'(z) = s (1 - s)``, ``s = sigmoid(z)``."""
  del a
  s = jax.nn.sigmoid(z)
  return s * (1 - s)


_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu(z: Array) -> Array:
  r"""Exact GELU ``z Phi(z)``, ``Phi`` the standard normal CDF (erf form).

  This is ``jax.nn.gelu(z, approximate=False)`` and PyTorch's default; the tanh
  approximation is registered separately as ``"gelu_tanh"``.
  """
  return z * 0.5 * (1 + erf(z * _INV_SQRT2))


def gelu_grad(z: Array, a: Array) -> Array:
  r"""``Phi(z) + z phi(z)``, ``phi`` the standard normal density."""
  del a
  cdf = 0.5 * (1 + erf(z * _INV_SQRT2))
  pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
  return cdf + z * pdf


def gelu_grad2(z: Array, a: Array) -> Array:
  r"""``d/dz [Phi + z phi] = phi + phi + z phi' = phi(z) (2 - z^2)``
  (``phi' = -z phi``)."""
  del a
  return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z) * (2 - z * z)


_GELU_C = math.sqrt(2 / math.pi)


def gelu_tanh(z: Array) -> Array:
  r"""GELU's tanh approximation ``z/2 (1 + tanh(c (z + 0.044715 z^3)))``."""
  return 0.5 * z * (1 + jnp.tanh(_GELU_C * (z + 0.044715 * z**3)))


def gelu_tanh_grad(z: Array, a: Array) -> Array:
  r"""``1/2 (1 + t) + z/2 (1 - t^2) c (1 + 3 * 0.044715 z^2)``."""
  del a
  t = jnp.tanh(_GELU_C * (z + 0.044715 * z**3))
  return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * z * z)


def gelu_tanh_grad2(z: Array, a: Array) -> Array:
  r"""With ``u = c (z + k z^3)``, ``t = tanh(u)``, ``k = 0.044715``:
  ``f' = (1 + t)/2 + z/2 (1 - t^2) u'``, so
  ``f'' = (1 - t^2) (u' - z t u'^2 + z u''/2)`` with ``u' = c (1 + 3k z^2)``,
  ``u'' = 6 c k z`` (``t' = (1 - t^2) u'``)."""
  del a
  t = jnp.tanh(_GELU_C * (z + 0.044715 * z**3))
  du = _GELU_C * (1 + 3 * 0.044715 * z * z)
  return (1 - t * t) * (du - z * t * du * du + 3 * _GELU_C * 0.044715 * z * z)


def silu(z: Array) -> Array:
  r"""SiLU (swish) ``z sigmoid(z)``."""
  return z * jax.nn.sigmoid(z)


def silu_grad(z: Array, a: Array) -> Array:
  r"""``s (1 + z (1 - s))`` with ``s = sigmoid(z)``."""
  del a
  s = jax.nn.sigmoid(z)
  return s * (1 + z * (1 - s))


def silu_grad2(z: Array, a: Array) -> Array:
  r"""``d/dz [s + z s (1 - s)] = s (1 - s) (2 + z (1 - 2 s))``
  (``s' = s (1 - s)``)."""
  del a
  s = jax.nn.sigmoid(z)
  return s * (1 - s) * (2 + z * (1 - 2 * s))


def softmax(z: Array) -> Array:
  r"""Softmax over the last axis (max-shifted, so stable for any ``z``)."""
  return jax.nn.softmax(z, axis=-1)


def softmax_vjp(z: Array, a: Array, g: Array) -> Array:
  r"""``g^T J`` with ``J = diag(a) - a a^T``: ``a * (g - <g, a>)``."""
  del z
  return a * (g - jnp.sum(g * a, axis=-1, keepdims=True))

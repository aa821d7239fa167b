r"""Lanczos with full reorthogonalization, for :func:`fnn.hessian_eigs`.

References:
  Golub & Van Loan, *Matrix Computations* (4th ed.), sec. 10.1;
  Parlett, *The Symmetric Eigenvalue Problem*, ch. 6 and 13.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _orth(q_rows: Array, w: Array) -> Array:
  r"""``w`` minus its projection on the rows of ``q_rows`` (zero rows are
  not yet filled and project nothing)."""
  return w - (q_rows @ w) @ q_rows


def lanczos(matvec, n: int, iters: int, key, dtype):
  r"""``iters`` steps of Lanczos with full reorthogonalization.

  ``q_0`` random; per step ``w = A q_j``, ``alpha_j = <q_j, w>``, ``w``
  orthogonalized against every ``q_0..q_j`` twice ("twice is enough",
  Parlett), ``beta_j = |w|``, ``q_{j+1} = w / beta_j``. On breakdown
  (``beta_j <= 1e3 eps max_i |A q_i|``: the Krylov space is invariant, as
  for a low-rank GGN) the next ``q`` is a fresh random direction orthogonal
  to the others and ``beta_j = 0``, so the tridiagonal matrix splits into
  blocks whose eigenvalues are all Ritz values. Memory ``O(iters n)``.

  Returns:
    ``(alpha: [iters], beta: [iters])``: the diagonal and the off-diagonal
    (``beta[:-1]``) of ``T``.
  """
  k0, k1 = jax.random.split(key)
  q = jax.random.normal(k0, (n,), dtype)
  fresh = jax.random.normal(k1, (iters, n), dtype)
  tol = 1e3 * jnp.finfo(dtype).eps

  def step(j, carry):
    qs, alpha, beta, q, scale = carry
    qs = qs.at[j].set(q)
    w = matvec(q)
    scale = jnp.maximum(scale, jnp.linalg.norm(w))
    alpha = alpha.at[j].set(q @ w)
    w = _orth(qs, _orth(qs, w))
    b = jnp.linalg.norm(w)
    r = _orth(qs, _orth(qs, fresh[j]))
    ok = b > tol * scale
    q = jnp.where(ok, w / jnp.where(ok, b, 1), r / jnp.linalg.norm(r))
    return qs, alpha, beta.at[j].set(jnp.where(ok, b, 0)), q, scale

  zeros = jnp.zeros((iters,), dtype)
  init = (jnp.zeros((iters, n), dtype), zeros, zeros,
          q / jnp.linalg.norm(q), jnp.zeros((), dtype))
  _, alpha, beta, _, _ = jax.lax.fori_loop(0, iters, step, init)
  return alpha, beta


def ritz_values(alpha: Array, beta: Array) -> Array:
  r"""The eigenvalues of ``T = tridiag(beta[:-1], alpha, beta[:-1])``,
  largest first."""
  off = beta[:-1]
  t = jnp.diag(alpha) + jnp.diag(off, 1) + jnp.diag(off, -1)
  return jnp.linalg.eigvalsh(t)[::-1]

r"""More from one backward pass: gradient statistics, KFAC factors, DP-SGD.

fnn's backward runs per example (``jax.vmap``) and keeps, per dense layer,
the factors ``a_prev: [B, n_in]`` and ``delta: [B, n_out]`` of every
example's gradient ``g_i = outer(a_prev_i, delta_i)`` (``delta`` of the
example's own loss, not divided by ``B``). Every statistic below contracts
these factors; none forms a ``[B, n_in, n_out]`` array (a test inspects the
jaxpr):

================================  ==========================================
statistic                         per dense layer, from the factors
================================  ==========================================
mean gradient                     ``a.T @ d / B``, ``mean(d)``
second moment ``E[g^2]``          ``(a**2).T @ d**2 / B``, ``mean(d**2)``
per-example squared norm          ``|a_i|^2 |d_i|^2 + |d_i|^2``
KFAC factors                      ``a.T @ a / B``, ``d.T @ d / B``
clipped sum (DP-SGD)              ``a.T @ (c * d)``, ``c_i = min(1, C/|g_i|)``
================================  ==========================================

References:
  Dangel, Kunstner, Hennig (2020), "BackPACK: Packing more into backprop".
  McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of
  Large-Batch Training", appendix A (the unbiased estimators used here).
  Martens & Grosse (2015), "Optimizing Neural Networks with
  Kronecker-factored Approximate Curvature".
  Abadi et al. (2016), "Deep Learning with Differential Privacy".
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from fnn import _checks, _random, gradients
from fnn.model import Dense, MLP, Params

Array = jax.Array


class GradStats(NamedTuple):
  r"""Statistics of the per-example gradients of one batch.

  Attributes:
    loss: the batch-mean loss.
    mean: the mean gradient (params-shaped), ``== fnn.grad``.
    norms: ``[B]`` the L2 norm of each example's whole gradient.
    layer_norms: ``[B, L]`` the same per layer (``w`` and ``b`` together).
    second_moment: params-shaped ``(1/B) sum_i g_i**2``, elementwise.
    variance: params-shaped ``second_moment - mean**2`` (the population
      variance over the batch, elementwise; BackPACK's ``Variance``).
    trace_sigma: unbiased estimate of ``tr(Sigma)``, the trace of the
      per-example gradient covariance: ``B/(B-1) sum(variance)``.
    grad_sq_norm: unbiased estimate of ``|G|^2``, the true gradient's
      squared norm: ``(B |mean|^2 - mean_i |g_i|^2) / (B - 1)``.
    noise_scale: ``B_simple = trace_sigma / grad_sq_norm`` (McCandlish et
      al. 2018); noisy for one batch: average ``trace_sigma`` and
      ``grad_sq_norm`` over batches before dividing (as the trainer does).
  """
  loss: Array
  mean: Params
  norms: Array
  layer_norms: Array
  second_moment: Params
  variance: Params
  trace_sigma: Array
  grad_sq_norm: Array
  noise_scale: Array


class KFACFactors(NamedTuple):
  r"""One dense layer's Kronecker factors (empirical, with the given labels).

  ``a_cov = E[a_prev a_prev^T]: [n_in, n_in]`` and
  ``delta_cov = E[delta delta^T]: [n_out, n_out]``, means over the batch;
  ``kron(a_cov, delta_cov)`` approximates the ``w`` block of
  ``E[vec(g) vec(g)^T]``. ``a_mean = E[a_prev]`` completes the factor of the
  bias-augmented input ``[a_prev, 1]`` (KFAC's usual form).
  """
  a_cov: Array
  delta_cov: Array
  a_mean: Array


def factors(model: MLP, params: Params, x: Array, y: Array, masks=None):
  r"""Per-example losses ``[B]`` and per-layer factors (leading ``B`` axes).

  The one backward pass every function here starts from: the vmapped
  :func:`fnn.backward.loss_and_factors`. ``x`` and ``y`` are validated.
  """
  return gradients._batched_factors(model, params, x, y, masks)


def _sq_norms(fs) -> Array:
  r"""``[B, L]``: ``|g_i^l|^2 = |d_i|^2 (|a_i|^2 + 1)`` per layer."""
  return jnp.stack([jnp.sum(f.delta**2, -1) * (jnp.sum(f.a_prev**2, -1) + 1)
                    for f in fs], axis=-1)


def grad_stats(model: MLP, params: Params, x: Array, y: Array
               ) -> GradStats:
  r"""Mean, per-example norms, second moment, variance and noise scale.

  All from one vmapped backward pass; see :class:`GradStats` and the module
  docstring for the contractions. Equal (float64, to rounding) to the same
  quantities computed from ``jax.vmap(jax.grad)``, which a test checks.

  Args:
    model, params: the network.
    x: ``[B, n_in]`` with ``B >= 2``; y: targets or labels.
  """
  losses, fs = factors(model, params, x, y)
  b = losses.shape[0]
  if b < 2:
    raise ValueError(f"grad_stats needs a batch of at least 2 examples, got "
                     f"{b}")
  mean = tuple(Dense(f.a_prev.T @ f.delta / b, jnp.mean(f.delta, 0))
               for f in fs)
  second = tuple(Dense((f.a_prev**2).T @ f.delta**2 / b,
                       jnp.mean(f.delta**2, 0)) for f in fs)
  variance = jax.tree.map(lambda s, m: s - m * m, second, mean)
  sq = _sq_norms(fs)  # (B, L)
  mean_sq = sum(jnp.sum(l**2) for l in jax.tree.leaves(mean))  # |mean|^2
  per_example_sq = jnp.mean(jnp.sum(sq, -1))  # mean_i |g_i|^2
  trace_sigma = (per_example_sq - mean_sq) * b / (b - 1)
  grad_sq_norm = (b * mean_sq - per_example_sq) / (b - 1)
  return GradStats(jnp.mean(losses), mean, jnp.sqrt(jnp.sum(sq, -1)),
                   jnp.sqrt(sq), second, variance, trace_sigma, grad_sq_norm,
                   trace_sigma / grad_sq_norm)


def kfac_factors(model: MLP, params: Params, x: Array, y: Array
                 ) -> tuple[KFACFactors, ...]:
  r"""KFAC's two Kronecker factors per dense layer, from the same pass."""
  _, fs = factors(model, params, x, y)
  b = fs[0].delta.shape[0]
  return tuple(KFACFactors(f.a_prev.T @ f.a_prev / b,
                           f.delta.T @ f.delta / b, jnp.mean(f.a_prev, 0))
               for f in fs)


class DPGrad(NamedTuple):
  r"""The result of :func:`dp_grad`.

  Attributes:
    grads: the noisy, clipped mean gradient (params-shaped).
    loss: the mean loss over the (weighted) examples.
    norms: ``[B]`` per-example gradient norms before clipping.
    clipped: the fraction of (weighted) examples whose norm exceeded ``C``.
  """
  grads: Params
  loss: Array
  norms: Array
  clipped: Array


def dp_grad(model: MLP, params: Params, x: Array, y: Array, *, clip: float,
            noise: float, key, weights: Optional[Array] = None,
            denominator=None, masks=None) -> DPGrad:
  r"""DP-SGD's gradient in ONE backward pass (Abadi et al. 2016).

  Each example's gradient is clipped to L2 norm ``clip`` (``C``), the
  clipped gradients are summed, Gaussian noise of standard deviation
  ``noise * C`` is added to every coordinate, and the result is divided by
  ``denominator`` (default: the batch size). Clipping never forms a
  per-example gradient: the norms come from the factors
  (``|g_i|^2 = sum_l |d_i|^2 (|a_i|^2 + 1)``), and scaling each example's
  ``delta`` by ``c_i = min(1, C / |g_i|)`` before the contraction gives the
  clipped sum ``sum_i c_i g_i = a.T @ (c * d)`` per layer.

  Args:
    clip: ``C > 0``.
    noise: the noise multiplier ``sigma >= 0``.
    key: PRNG key for the noise.
    weights: optional ``[B]`` example weights in ``{0, 1}``: padding rows of
      a Poisson-sampled batch get 0 and contribute nothing.
    denominator: what the noisy sum is divided by; for Poisson sampling use
      the expected batch size ``q n`` (the trainer does).
    masks: optional dropout masks, as for :func:`fnn.grad`.

  Returns:
    A :class:`DPGrad`.
  """
  if not clip > 0:
    raise ValueError(f"clip must be > 0, got {clip}")
  if not noise >= 0:
    raise ValueError(f"noise multiplier must be >= 0, got {noise}")
  losses, fs = factors(model, params, x, y, masks)
  b = losses.shape[0]
  w = jnp.ones((b,), losses.dtype) if weights is None else jnp.asarray(
      weights, losses.dtype)
  norms = jnp.sqrt(jnp.sum(_sq_norms(fs), -1))  # (B,)
  scale = w * jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))  # (B,)
  clipped_sum = tuple(
      Dense(f.a_prev.T @ (f.delta * scale[:, None]),  # (n_in, n_out)
            jnp.sum(f.delta * scale[:, None], 0)) for f in fs)
  return _privatize(clipped_sum, losses, norms, w, clip, noise, key,
                    b if denominator is None else denominator)


def _privatize(clipped_sum, losses, norms, w, clip, noise, key, denominator
               ) -> DPGrad:
  r"""Adds ``N(0, (noise clip)^2)`` to every coordinate and divides."""
  leaves, treedef = jax.tree.flatten(clipped_sum)
  # The parts of ONE draw jax.random.normal(key, (P,)) over every coordinate,
  # bit for bit; on the CPU each part is computed in place from its own
  # counters, 2-3x faster than JAX's rolled Threefry loop (the noise is most
  # of a small net's step).
  parts = _random.normal_parts(key, [g.size for g in leaves], leaves[0].dtype)
  noisy = [(g + noise * clip * part.reshape(g.shape)) / denominator
           for g, part in zip(leaves, parts)]
  count = jnp.maximum(jnp.sum(w), 1.0)
  return DPGrad(jax.tree.unflatten(treedef, noisy),
                jnp.sum(w * losses) / count, norms,
                jnp.sum(w * (norms > clip)) / count)


def dp_grad_autodiff(model: MLP, params: Params, x: Array, y: Array, *,
                     clip: float, noise: float, key,
                     weights: Optional[Array] = None, denominator=None,
                     masks=None) -> DPGrad:
  r"""The reference for :func:`dp_grad`: materialized per-example gradients.

  ``jax.vmap(jax.grad)`` of each example's loss (every ``[B, n_in, n_out]``
  array formed), clipped, summed, and noised with the same keys as
  :func:`dp_grad`, so the two agree to rounding. Used by the trainer with
  ``grads="autodiff"`` and by the tests.
  """
  if not clip > 0:
    raise ValueError(f"clip must be > 0, got {clip}")
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  b = x.shape[0]

  def one(p, xi, yi, mi):
    m = None if mi is None else tuple(v[None] for v in mi)
    return model.mean_loss(p, xi[None], yi[None], m)

  losses, g = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0, 0))(
      params, x, y, masks)
  leaves = jax.tree.leaves(g)
  norms = jnp.sqrt(sum(jnp.sum(l.reshape(b, -1) ** 2, 1) for l in leaves))
  w = jnp.ones((b,), losses.dtype) if weights is None else jnp.asarray(
      weights, losses.dtype)
  scale = w * jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))
  clipped_sum = jax.tree.map(
      lambda l: jnp.tensordot(scale, l, axes=1), g)  # (B,) . (B, ...)
  return _privatize(clipped_sum, losses, norms, w, clip, noise, key,
                    b if denominator is None else denominator)


def batch_noise_stats(model: MLP, params: Params, x: Array, y: Array):
  r"""Sums over a stack of batches ``x: [K, B, n_in]`` for logging.

  Returns a dict of the means over the ``K`` batches of ``trace_sigma``,
  ``grad_sq_norm``, the mean per-example norm and each layer's summed
  variance; ``noise_scale`` is the ratio of the averaged estimates (the way
  McCandlish et al. average before dividing). Jit with ``model`` static.
  """
  def one(carry, batch):
    s = grad_stats(model, params, *batch)
    layer_var = jnp.stack([jnp.sum(v.w) + jnp.sum(v.b) for v in s.variance])
    out = (s.trace_sigma, s.grad_sq_norm, jnp.mean(s.norms), layer_var)
    return carry, out

  _, (tr, gsq, norm, layer_var) = jax.lax.scan(one, None, (x, y))
  return dict(trace_sigma=jnp.mean(tr), grad_sq_norm=jnp.mean(gsq),
              noise_scale=jnp.mean(tr) / jnp.mean(gsq),
              grad_norm_mean=jnp.mean(norm),
              variance_per_layer=jnp.mean(layer_var, 0))


def dp_epsilon(*, noise: float, sample_rate: float, steps: int,
               delta: float, accountant: str = "rdp") -> float:
  r"""The ``epsilon`` of ``steps`` Poisson-sampled Gaussian mechanisms.

  Uses Google's ``dp-accounting`` library: ``PoissonSampledDpEvent(q,
  GaussianDpEvent(sigma))`` composed ``steps`` times, with its RDP
  accountant (default) or its PLD accountant (``accountant="pld"``, tighter).

  Raises:
    ValueError: parameters outside their ranges.
  """
  from dp_accounting import dp_event
  from dp_accounting.pld import pld_privacy_accountant
  from dp_accounting.rdp import rdp_privacy_accountant
  if not noise > 0:
    raise ValueError(f"epsilon needs a noise multiplier > 0, got {noise}")
  if not 0 < sample_rate <= 1:
    raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
  if not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1), got {delta}")
  if steps < 0:
    raise ValueError(f"steps must be >= 0, got {steps}")
  if accountant == "rdp":
    acc = rdp_privacy_accountant.RdpAccountant()
  elif accountant == "pld":
    acc = pld_privacy_accountant.PLDAccountant()
  else:
    raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
  event = dp_event.PoissonSampledDpEvent(sample_rate,
                                         dp_event.GaussianDpEvent(noise))
  acc.compose(event, int(steps))
  return float(acc.get_epsilon(delta))

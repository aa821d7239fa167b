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
per-example norm                  ``|d_i| hypot(|a_i|, 1)``
KFAC factors                      ``a.T @ a / B``, ``d.T @ d / B``
clipped sum (DP-SGD)              ``a.T @ (c * d)``, ``c_i = min(1, C/|g_i|)``
================================  ==========================================

Finite gradients give finite statistics: norms are scaled
(:func:`fnn.gradients.layer_norms`), the second moment moves each example's
``max |d_i|`` onto ``a_i`` before squaring, variances are clamped at 0 (see
:class:`GradStats`), and DP-SGD drops (and counts) an example whose norm is
not finite instead of letting it poison the sum.

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

from fnn import _checks, _random, curvature, gradients
from fnn.layers.dense import _OUTER
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
    variance: params-shaped ``max(second_moment - mean**2, 0)`` (the
      population variance over the batch, elementwise; BackPACK's
      ``Variance``). The difference cancels: for (nearly) equal examples it
      is rounding noise of either sign (in float32, 64 equal examples gave
      negative entries), so it is clamped at 0: a variance is never
      reported below zero.
    trace_sigma: unbiased estimate of ``tr(Sigma)``, the trace of the
      per-example gradient covariance: ``B/(B-1) sum(variance)``, computed as
      ``max(B/(B-1) (mean_i |g_i|^2 - |mean|^2), 0)`` (clamped like
      ``variance``).
    grad_sq_norm: unbiased estimate of ``|G|^2``, the true gradient's
      squared norm: ``(B |mean|^2 - mean_i |g_i|^2) / (B - 1)``. NOT
      clamped: an unbiased estimate of a small ``|G|^2`` is legitimately
      negative on some batches, and clamping would bias its average over
      batches.
    noise_scale: ``B_simple = trace_sigma / grad_sq_norm`` (McCandlish et
      al. 2018); noisy for one batch: average ``trace_sigma`` and
      ``grad_sq_norm`` over batches before dividing (as the trainer does).
      Never negative from cancellation in ``trace_sigma``; negative only
      when ``grad_sq_norm`` is (a batch too noisy to estimate ``|G|^2``).
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


def factors(model, params, x: Array, y: Array, masks=None):
  r"""Per-example losses ``[B]`` and per-layer factors (leading ``B`` axes):
  :func:`fnn.factors`."""
  return gradients.factors(model, params, x, y, masks)


def _second_moment(f, b: int) -> Dense:
  r"""``(1/B) sum_i g_i**2`` of one dense layer (see
  :meth:`fnn.layers.kinds.Outer.second_moment`)."""
  return _OUTER.second_moment(f, b)


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
  mean = gradients.contract(model, fs,
                            lambda k, f: jax.tree.map(lambda v: v / b,
                                                      k.total(f)))
  second = gradients.contract(model, fs, lambda k, f: k.second_moment(f, b))
  # Clamped: second - mean**2 cancels to rounding noise of either sign.
  variance = jax.tree.map(lambda s, m: jnp.maximum(s - m * m, 0), second,
                          mean)
  layer_norms = gradients.layer_norms_of(model, fs)  # (B, L)
  norms = gradients.l2_norm(layer_norms, -1)  # (B,)
  mean_sq = sum(jnp.sum(l**2) for l in jax.tree.leaves(mean))  # |mean|^2
  per_example_sq = jnp.mean(norms**2)  # mean_i |g_i|^2
  trace_sigma = jnp.maximum((per_example_sq - mean_sq) * b / (b - 1), 0)
  grad_sq_norm = (b * mean_sq - per_example_sq) / (b - 1)
  return GradStats(jnp.mean(losses), mean, norms, layer_norms, second,
                   variance, trace_sigma, grad_sq_norm,
                   trace_sigma / grad_sq_norm)


KFAC_KINDS = ("empirical", "mc", "exact")


def kfac_factors(model: MLP, params: Params, x: Array, y: Array, *,
                 kind: str = "empirical", key=None
                 ) -> tuple[Optional[KFACFactors], ...]:
  r"""KFAC's two Kronecker factors per parameter layer, from one pass.

  ``kind``: which ``delta`` enters ``delta_cov``:

  * ``"empirical"`` (the default, as before): the gradient of the given
    labels' loss (the empirical Fisher's factor);
  * ``"mc"``: of one label per example drawn from the model's predictive
    distribution (KFAC, Martens & Grosse 2015; ``key`` required);
  * ``"exact"``: every column of the loss Hessian's square root propagated
    (KFLR, Botev et al. 2017): ``delta_cov = (1/B) sum_{b,k} d_bk d_bk^T``,
    whose Kronecker product with ``a_cov`` is exact for the GGN's ``w``
    block of a one-layer network.

  ``a_cov`` and ``a_mean`` do not depend on ``kind``. ``None`` for a layer
  kind without Kronecker structure (``LayerNorm``); ``Conv1d`` by KFC
  (positions as extra samples).
  """
  if not isinstance(kind, str) or kind not in KFAC_KINDS:
    raise ValueError(f"kind must be one of {KFAC_KINDS}, got {kind!r}")
  if kind == "mc" and key is None:
    raise ValueError("kind='mc' draws one label per example from the model "
                     "and needs a key (e.g. key=jax.random.key(0))")
  if kind == "empirical":
    losses, fs = factors(model, params, x, y)
    b = losses.shape[0]
    return tuple(_kfac(lkind.kfac(f, b)) for _, _, lkind, f
                 in gradients.kind_leaves(model, fs))
  fs = curvature.sqrt_factors(model, params, x, y,
                              mc_samples=1 if kind == "mc" else 0, key=key)
  b = jax.tree.leaves(fs)[0].shape[0]
  out = []
  for path, layer, lkind, f in gradients.kind_leaves(model, fs):
    # Factors with [B, K] axes: a_cov from the B inputs, delta_cov over the
    # B K (example, column) rows.
    fn = curvature.kind_method(lkind, "kfac_columns",
                               f"layer {path} {layer!r} (kind={kind!r}): ")
    out.append(_kfac(fn(f, b)))
  return tuple(out)


def _kfac(k) -> Optional[KFACFactors]:
  return None if k is None else KFACFactors(*k)


class DPGrad(NamedTuple):
  r"""The result of :func:`dp_grad`.

  Attributes:
    grads: the noisy, clipped mean gradient (params-shaped).
    loss: the mean loss over the (weighted) examples.
    norms: ``[B]`` per-example gradient norms before clipping.
    clipped: the fraction of (weighted) examples whose norm exceeded ``C``
      (a finite norm; dropped examples are not counted here).
    nonfinite: the number of (weighted) examples dropped because their
      gradient norm is not finite (an inf or NaN gradient, or one whose norm
      exceeds the dtype's range): they contribute nothing to the clipped
      sum. 0 on healthy data.
  """
  grads: Params
  loss: Array
  norms: Array
  clipped: Array
  nonfinite: Array


def _check_dp(clip, noise) -> None:
  r"""``clip > 0`` and ``noise >= 0`` when concrete; traced values (one per
  run of :func:`fnn.fit_many`) are the caller's to check."""
  if not _checks._is_tracer(clip) and not clip > 0:
    raise ValueError(f"clip must be > 0, got {clip}")
  if not _checks._is_tracer(noise) and not noise >= 0:
    raise ValueError(f"noise multiplier must be >= 0, got {noise}")


def dp_grad(model: MLP, params: Params, x: Array, y: Array, *, clip: float,
            noise: float, key, weights: Optional[Array] = None,
            denominator=None, masks=None) -> DPGrad:
  r"""DP-SGD's gradient in ONE backward pass (Abadi et al. 2016).

  Each example's gradient is clipped to L2 norm ``clip`` (``C``), the
  clipped gradients are summed, Gaussian noise of standard deviation
  ``noise * C`` is added to every coordinate, and the result is divided by
  ``denominator`` (default: the batch size). Clipping never forms a
  per-example gradient: the norms come from the factors
  (``|g_i|^2 = sum_l |d_i|^2 (|a_i|^2 + 1)``, computed with scaling, see
  :func:`fnn.gradients.layer_norms`), and scaling each example's ``delta``
  by ``c_i = min(1, C / |g_i|)`` before the contraction gives the clipped
  sum ``sum_i c_i g_i = a.T @ (c * d)`` per layer.

  An example whose norm is not finite gets ``c_i = 0`` and its factors are
  zeroed, so it contributes nothing (an inf or NaN in it cannot turn the sum
  into NaN); the (weighted) count of such examples is
  :attr:`DPGrad.nonfinite`. Dropping an example is clipping it to norm 0, so
  the sensitivity, hence the privacy guarantee, is unchanged.

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
  _check_dp(clip, noise)
  losses, fs = factors(model, params, x, y, masks)
  b = losses.shape[0]
  w = jnp.ones((b,), losses.dtype) if weights is None else jnp.asarray(
      weights, losses.dtype)
  norms = gradients.l2_norm(gradients.layer_norms_of(model, fs), -1)  # (B,)
  scale, keep = _clip_scale(norms, w, clip)  # (B,), (B, 1)
  # dense: a.T @ (c * d) with dropped rows zeroed in both factors
  clipped_sum = gradients.contract(
      model, fs, lambda k, f: k.clipped_sum(f, scale, keep))
  return _privatize(clipped_sum, losses, norms, w, clip, noise, key,
                    b if denominator is None else denominator)


def _clip_scale(norms, w, clip):
  r"""``c_i = w_i min(1, C / |g_i|)``, 0 where ``|g_i|`` is not finite.

  Returns ``c: [B]`` and the keep mask ``[B, 1]`` (finite norms).
  """
  keep = jnp.isfinite(norms)
  scale = w * jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))
  return jnp.where(keep, scale, 0), keep[:, None]


def _privatize(clipped_sum, losses, norms, w, clip, noise, key, denominator
               ) -> DPGrad:
  r"""Adds ``N(0, (noise clip)^2)`` to every coordinate and divides.

  Also the weighted mean loss (rows of weight 0 are skipped, even with a NaN
  loss), the clipped fraction and the count of non-finite norms.
  """
  leaves, treedef = jax.tree.flatten(clipped_sum)
  # The parts of ONE draw jax.random.normal(key, (P,)) over every coordinate,
  # bit for bit; on the CPU each part is computed in place from its own
  # counters, 2-3x faster than JAX's rolled Threefry loop (the noise is most
  # of a small net's step).
  parts = _random.normal_parts(key, [g.size for g in leaves], leaves[0].dtype)
  noisy = [(g + noise * clip * part.reshape(g.shape)) / denominator
           for g, part in zip(leaves, parts)]
  count = jnp.maximum(jnp.sum(w), 1.0)
  finite = jnp.isfinite(norms)
  return DPGrad(jax.tree.unflatten(treedef, noisy),
                jnp.sum(jnp.where(w != 0, w * losses, 0)) / count, norms,
                jnp.sum(w * (finite & (norms > clip))) / count,
                jnp.sum(w * ~finite))


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
  _check_dp(clip, noise)
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  b = x.shape[0]

  def one(p, xi, yi, mi):
    m = None if mi is None else tuple(v[None] for v in mi)
    return model.mean_loss(p, xi[None], yi[None], m)

  losses, g = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0, 0))(
      params, x, y, masks)
  leaves = jax.tree.leaves(g)
  norms = gradients.l2_norm(jnp.stack(
      [gradients.l2_norm(l.reshape(b, -1), 1) for l in leaves], 1), 1)  # (B,)
  w = jnp.ones((b,), losses.dtype) if weights is None else jnp.asarray(
      weights, losses.dtype)
  scale, keep = _clip_scale(norms, w, clip)
  clipped_sum = jax.tree.map(  # (B,) . (B, ...); dropped examples zeroed
      lambda l: jnp.tensordot(
          scale, jnp.where(keep.reshape((b,) + (1,) * (l.ndim - 1)), l, 0),
          axes=1), g)
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
    layer_var = jnp.stack([  # summed over each parameter layer's leaves
        sum(jnp.sum(v) for v in jax.tree.leaves(entry))
        for _, _, _, entry in gradients.kind_leaves(model, s.variance)])
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

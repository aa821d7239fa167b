r"""Training: a pure, jitted step and ``fit``, an epoch in one ``lax.scan``.

The step takes the model and any optax ``GradientTransformation``; gradients
come from the hand-derived :func:`fnn.value_and_grad` (``grads="hand"``) or
from ``jax.grad(model.mean_loss)`` (``grads="autodiff"``), so the two can be
compared on the same run.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from fnn import _checks, _compile, gradients, parallel, regularize, stats
from fnn.model import MLP, Params

GRADS = ("hand", "autodiff")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine")


class TrainState(NamedTuple):
  r"""Everything a run needs to continue: params, optimizer state, step, key."""
  params: Params
  opt_state: Any
  step: jax.Array
  key: jax.Array


class StepConfig(NamedTuple):
  r"""Static (hashable) settings of a train step.

  Attributes:
    grads: ``"hand"`` or ``"autodiff"``.
    weight_decay: L2 coefficient ``lambda`` of ``(lambda/2) sum |w|^2`` added
      to the loss (0: none). For ``adamw`` use the optimizer's decoupled decay
      instead (see :func:`make_optimizer`).
    dropout: inverted-dropout rate on hidden layers during training.
    dp_clip: DP-SGD's per-example clipping norm ``C`` (0: no DP-SGD).
    dp_noise: DP-SGD's noise multiplier ``sigma`` (noise std ``sigma C``).
    dp_sampling: with DP-SGD, ``"poisson"`` (each example joins each step's
      batch independently with probability ``batch_size / n``; what the
      accountant assumes) or ``"shuffle"`` (fixed-size shuffled batches).
    mesh: a :func:`fnn.parallel.make_mesh` mesh: each batch is sharded over
      its ``data`` axis (params and optimizer state replicated; XLA inserts
      the all-reduce of the batch contractions). ``None``: one device.
    compute_dtype: mixed precision, e.g. ``"bfloat16"``: forward and
      backward run in it on a cast of the params; gradients come back in
      the params' (master) dtype, and the optimizer state stays in it.
  """
  grads: str = "hand"
  weight_decay: float = 0.0
  dropout: float = 0.0
  dp_clip: float = 0.0
  dp_noise: float = 0.0
  dp_sampling: str = "poisson"
  mesh: Optional[Mesh] = None
  compute_dtype: Optional[str] = None


def decayed(params):
  r"""AdamW's decay mask: True on every weight ``w`` (Dense, Conv1d), False
  on biases and LayerNorm's scale and shift, as for the L2 term
  (:func:`fnn.regularize.l2_penalty`). Any params tree."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: regularize._is_weight(path), params)


@functools.lru_cache(maxsize=64)
def make_optimizer(name: str, lr: float, *, schedule: str = "constant",
                   total_steps: int = 1, weight_decay: float = 0.0
                   ) -> optax.GradientTransformation:
  r"""An optax optimizer by name.

  ``sgd`` is Nielsen's plain mini-batch SGD, ``momentum`` SGD with momentum
  0.9, ``adam`` Adam, ``adamw`` AdamW whose ``weight_decay`` is optax's
  decoupled decay (applied to weights only, not biases, like the L2 term).
  ``cosine`` decays the learning rate to 0 over ``total_steps``. The decay
  mask is :func:`decayed`: every ``w`` leaf, of any network.

  Equal arguments return the same (immutable) transformation, so that jitted
  steps, which take it as a static argument, compile once across runs.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; choose from "
                     f"{list(SCHEDULES)}")
  if not lr > 0:
    raise ValueError(f"learning rate must be > 0, got {lr}")
  return build_optimizer(name, lr, schedule=schedule, total_steps=total_steps,
                         weight_decay=weight_decay)


def build_optimizer(name: str, lr, *, schedule: str = "constant",
                    total_steps: int = 1, weight_decay=0.0
                    ) -> optax.GradientTransformation:
  r""":func:`make_optimizer` without its checks or cache: ``lr`` and
  ``weight_decay`` may be traced (one per run under ``vmap``, see
  :func:`fnn.fit_many`). Its state's structure depends on ``name`` and
  ``schedule`` only, not on the values."""
  rate = (optax.cosine_decay_schedule(lr, max(total_steps, 1))
          if schedule == "cosine" else lr)
  if name == "sgd":
    return optax.sgd(rate)
  if name == "momentum":
    return optax.sgd(rate, momentum=0.9)
  if name == "adam":
    return optax.adam(rate)
  return optax.adamw(rate, weight_decay=weight_decay, mask=decayed)


# The same integer hashing as an eager split, compiled without LLVM's passes
# (fnn._compile): a fresh process's first split took 0.25-0.4 s to compile.
_split = _compile.jit_once(jax.random.split)


def init_state(model: MLP, opt: optax.GradientTransformation, key,
               dtype=jnp.float32, scheme: Optional[str] = None) -> TrainState:
  r"""Initial params (from one half of ``key``) and optimizer state.

  ``scheme``: ``None`` is the model's default (``"glorot"`` for an MLP, each
  layer's own ``init=`` for a Sequential)."""
  k_init, k_train = _split(key)
  params = (model.init(k_init, dtype) if scheme is None
            else model.init(k_init, dtype, scheme))
  return TrainState(params, opt.init(params), jnp.zeros((), jnp.int32), k_train)


def uses(value) -> bool:
  r"""Whether a :class:`StepConfig` setting is in use: a number is when it is
  not 0; anything else (a traced per-run value, a
  :class:`fnn.regularize.Keep`) always is (the step's structure is static)."""
  if isinstance(value, (int, float)):
    return value != 0
  return value is not None


def loss_and_grads(model: MLP, cfg: StepConfig, params, x, y, key,
                   weights=None, denominator=None):
  r"""The training loss (with L2) and its gradient, hand or autodiff.

  With ``cfg.dp_clip > 0`` the data term is DP-SGD's clipped, noised
  gradient (:func:`fnn.dp_grad`, or its materialized reference for
  ``grads="autodiff"``); ``weights`` and ``denominator`` are those of a
  Poisson-sampled batch.
  """
  if uses(cfg.dp_clip):
    key, k_noise = jax.random.split(key)
  hand = cfg.grads == "hand"
  master = params
  if cfg.compute_dtype is not None:  # mixed precision: compute in low dtype
    low = jnp.dtype(cfg.compute_dtype)
    params = jax.tree.map(lambda p: p.astype(low), params)
    x = x.astype(low)
    if jnp.issubdtype(y.dtype, jnp.floating):
      y = y.astype(low)
  masks = (regularize.dropout_masks(model, key, x.shape[0], cfg.dropout,
                                    _checks.param_dtype(params))
           if uses(cfg.dropout) else None)  # in the compute dtype
  if uses(cfg.dp_clip):
    fn = stats.dp_grad if hand else stats.dp_grad_autodiff
    out = fn(model, params, x, y, clip=cfg.dp_clip, noise=cfg.dp_noise,
             key=k_noise, weights=weights, denominator=denominator,
             masks=masks)
    loss, grads = out.loss, out.grads
  elif hand:
    loss, grads = gradients.value_and_grad(model, params, x, y, masks=masks)
  else:
    loss, grads = jax.value_and_grad(model.mean_loss)(params, x, y, masks)
  if cfg.compute_dtype is not None:  # gradients back in the master dtype
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, master)
    loss = loss.astype(_checks.param_dtype(master))
  if uses(cfg.weight_decay):  # on the master params
    loss = loss + regularize.l2_penalty(master, cfg.weight_decay)
    l2 = (regularize.l2_grad(master, cfg.weight_decay) if hand else
          jax.grad(regularize.l2_penalty)(master, cfg.weight_decay))
    grads = jax.tree.map(jnp.add, grads, l2)
  return loss, grads


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def train_step(model: MLP, opt: optax.GradientTransformation, cfg: StepConfig,
               state: TrainState, x, y, weights=None, denominator=None
               ) -> tuple[TrainState, jax.Array]:
  r"""One optimizer step on the batch ``(x, y)``: pure and jitted.

  ``model``, ``opt`` and ``cfg`` are static (hashable); ``x: [batch, n_in]``,
  ``y`` labels or targets. The dropout (and DP noise) key comes from
  ``state.key``, which the step splits and advances. ``weights`` and
  ``denominator``: see :func:`loss_and_grads`. Returns the new state and the
  batch loss (before the update).
  """
  return _step(model, opt, cfg, state, x, y, weights, denominator)


def _step(model, opt, cfg, state, x, y, weights=None, denominator=None):
  r""":func:`train_step` unjitted: ``opt`` and ``cfg`` may hold traced
  per-run values (:func:`fnn.fit_many`)."""
  key, k_step = jax.random.split(state.key)
  if cfg.mesh is not None:  # examples where they live: batch over "data"
    shard = lambda a: None if a is None else jax.lax.with_sharding_constraint(
        a, parallel.batch_sharding(cfg.mesh))
    x, y, weights = shard(x), shard(y), shard(weights)
  loss, grads = loss_and_grads(model, cfg, state.params, x, y, k_step,
                               weights, denominator)
  updates, opt_state = opt.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(params, opt_state, state.step + 1, key), loss


def poisson_capacity(n: int, batch_size: int, multiple: int = 1) -> int:
  r"""The fixed size of a Poisson-sampled batch buffer.

  The expected batch is ``q n = batch_size``; the buffer holds that plus six
  standard deviations (an overflow, which would drop the extra examples,
  has probability below 1e-9 per step), rounded up to a ``multiple`` (the
  device count) and capped at ``n``.
  """
  q = batch_size / n
  cap = math.ceil(batch_size + 6 * math.sqrt(n * q * (1 - q))) + 1
  return int(min(n, -(-cap // multiple) * multiple))


def _poisson_batches(key, n: int, batch_size: int, steps: int,
                     multiple: int = 1):
  r"""Per step: ``cap`` indices of the sampled examples and their weights."""
  cap = poisson_capacity(n, batch_size, multiple)

  def one(k):
    chosen = jax.random.uniform(k, (n,)) < batch_size / n
    idx = jnp.nonzero(chosen, size=cap, fill_value=0)[0]
    return idx, (jnp.arange(cap) < jnp.sum(chosen)).astype(jnp.float32)

  return jax.vmap(one)(jax.random.split(key, steps))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def train_epoch(model: MLP, opt, cfg: StepConfig, batch_size: int,
                state: TrainState, x, y) -> tuple[TrainState, jax.Array]:
  r"""One epoch of ``n // batch_size`` steps inside one compiled ``lax.scan``.

  Batches come from the state's key: a shuffled permutation (the last
  partial batch dropped), or, for DP-SGD with ``dp_sampling="poisson"``,
  an independent Poisson sample per step (a fixed-size buffer of
  :func:`poisson_capacity` rows with 0/1 weights; the noisy sum is divided
  by the expected batch size). Returns the new state and the epoch's mean
  training loss.
  """
  return _epoch(cfg, batch_size, functools.partial(train_step, model, opt, cfg),
                state, x, y)


def _epoch(cfg, batch_size, step_fn, state, x, y):
  r""":func:`train_epoch`'s body with the step ``step_fn(state, x, y[,
  weights, denominator])`` (per run under ``vmap`` in :func:`fnn.fit_many`)."""
  n = x.shape[0]
  steps = n // batch_size
  key, k_perm = jax.random.split(state.key)
  if uses(cfg.dp_clip) and cfg.dp_sampling == "poisson":
    idx, weights = _poisson_batches(
        k_perm, n, batch_size, steps,
        1 if cfg.mesh is None else cfg.mesh.size)

    def body(s, batch):
      i, w = batch
      return step_fn(s, x[i], y[i], w.astype(x.dtype), batch_size)

    state, losses = jax.lax.scan(body, state._replace(key=key),
                                 (idx, weights))
    return state, jnp.mean(losses)
  perm = jax.random.permutation(k_perm, n)[: steps * batch_size]
  xb = x[perm].reshape((steps, batch_size) + x.shape[1:])
  yb = y[perm].reshape((steps, batch_size) + y.shape[1:])

  def body(s, batch):
    return step_fn(s, *batch)

  state, losses = jax.lax.scan(body, state._replace(key=key), (xb, yb))
  return state, jnp.mean(losses)


@functools.partial(jax.jit, static_argnums=0)
def evaluate(model: MLP, params: Params, x, y) -> tuple[jax.Array, jax.Array]:
  r"""Mean loss and accuracy (argmax; threshold 0.5 for one output)."""
  out = model.apply(params, x)
  loss = model.mean_loss(params, x, y)
  if out.shape[-1] == 1:
    pred = (out[:, 0] > 0.5).astype(y.dtype)
  else:
    pred = jnp.argmax(out, axis=-1).astype(y.dtype)
  return loss, jnp.mean(pred == y)


class Diverged(RuntimeError):
  r"""The training loss became NaN or infinite; ``state`` is the last good."""

  def __init__(self, epoch: int, state: TrainState):
    super().__init__(f"training loss became NaN or infinite in epoch {epoch}")
    self.epoch = epoch
    self.state = state


_noise_stats = jax.jit(stats.batch_noise_stats, static_argnums=0)
STATS_BATCHES = 10  # batches the per-epoch gradient statistics average over


def check_config(cfg: StepConfig) -> None:
  r"""Validates a :class:`StepConfig` (ValueError naming the bad value)."""
  if cfg.grads not in GRADS:
    raise ValueError(f"grads must be one of {list(GRADS)}, got {cfg.grads!r}")
  if not 0 <= cfg.dropout < 1:
    raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
  if cfg.weight_decay < 0:
    raise ValueError(f"weight decay must be >= 0, got {cfg.weight_decay}")
  if cfg.dp_clip < 0 or cfg.dp_noise < 0:
    raise ValueError(f"DP clip and noise must be >= 0, got clip "
                     f"{cfg.dp_clip}, noise {cfg.dp_noise}")
  if cfg.dp_noise and not cfg.dp_clip:
    raise ValueError(f"DP noise {cfg.dp_noise} needs a clipping norm "
                     f"(dp_clip > 0)")
  if cfg.dp_sampling not in ("poisson", "shuffle"):
    raise ValueError(f"dp_sampling must be 'poisson' or 'shuffle', got "
                     f"{cfg.dp_sampling!r}")


def check_data(model: MLP, data) -> None:
  r"""Validates a dataset against ``model`` before anything is compiled.

  Inside the jitted epoch labels are traced, so a label outside
  ``[0, n_out)`` would one-hot to a zero row and train silently with loss
  and gradient 0; here they are concrete and get the API's errors
  (:func:`fnn._checks.check_y`), prefixed with the split.

  Raises:
    ValueError: ``x`` or ``x_test`` not ``[n, *model.in_shape]``; ``y`` or
      ``y_test`` of the wrong shape or length, or labels (targets) outside
      their range.
    TypeError: non-numeric data.
  """
  want = tuple(model.in_shape)
  for x_name, y_name in (("x", "y"), ("x_test", "y_test"),
                         ("x_val", "y_val")):
    xs, ys = getattr(data, x_name, None), getattr(data, y_name, None)
    if xs is None and x_name == "x_val":
      continue
    shape = tuple(np.shape(xs))
    if len(shape) != 1 + len(want) or shape[1:] != want:
      if hasattr(model, "sizes"):
        raise ValueError(
            f"data.{x_name} has shape {shape}, model {model.sizes} expects "
            f"[n, {want[0]}] ({want[0]} input features)")
      raise ValueError(f"data.{x_name} has shape {shape}, the model expects "
                       f"[n, {', '.join(map(str, want))}]")
    try:
      _checks.check_y(model, ys, shape[:1], jnp.float32)
    except (ValueError, TypeError) as e:
      raise type(e)(f"data.{y_name}: {e}") from e


def validation(data, dtype, mesh=None):
  r"""``(x_val, y_val)`` as arrays when ``data`` has a validation split
  (:func:`fnn.data.split_validation`), else None."""
  if getattr(data, "x_val", None) is None:
    return None
  val = (jnp.asarray(data.x_val.astype(dtype)), jnp.asarray(data.y_val))
  return val if mesh is None else parallel.replicate(mesh, val)


def fit(model: MLP, opt: optax.GradientTransformation, state: TrainState,
        data, *, epochs: int, batch_size: int, cfg: StepConfig = StepConfig(),
        start_epoch: int = 0,
        callback: Optional[Callable[[dict, TrainState], None]] = None,
        log_grad_stats: bool = False) -> tuple[TrainState, list[dict]]:
  r"""Trains from ``start_epoch`` up to ``epochs`` (the run's total).

  Args:
    data: a :class:`fnn.data.Dataset` (``x, y, x_test, y_test``).
    callback: called on the host after each epoch with the epoch's metrics
      (epoch, step, train_loss, test_loss, test_accuracy, then val_loss and
      val_accuracy when ``data`` has a validation split, seconds) and state.
    log_grad_stats: also log, per epoch, gradient statistics of the current
      params (no dropout) averaged over the first :data:`STATS_BATCHES`
      training batches: ``grad_norm_mean`` (mean per-example norm),
      ``noise_scale`` (B_simple), ``trace_sigma``, ``grad_sq_norm`` and
      ``variance_per_layer`` (see :func:`fnn.grad_stats`).
    (DP-SGD's epsilon is not logged per epoch: one accountant call takes
    about a second; see :func:`fnn.dp_epsilon` and the run summary.)

  Returns:
    The final state and the list of per-epoch metrics.

  Raises:
    ValueError: bad settings, or data that does not fit the model (see
      :func:`check_data`), before anything is compiled.
    Diverged: when an epoch's loss is not finite; it holds the last good
      state (from before that epoch).
  """
  if epochs < 1:
    raise ValueError(f"epochs must be at least 1, got {epochs}")
  check_data(model, data)
  n = len(data.x)
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch size must be in [1, {n}] (the training set), got "
                     f"{batch_size}")
  check_config(cfg)
  dtype = _checks.param_dtype(state.params)
  x, y = data.x.astype(dtype), data.y
  x_test, y_test = data.x_test.astype(dtype), data.y_test
  if cfg.mesh is not None:
    parallel.check_divisible(cfg.mesh, batch_size)
    if cfg.dp_clip and cfg.dp_sampling == "poisson" and poisson_capacity(
        n, batch_size, cfg.mesh.size) % cfg.mesh.size:
      raise ValueError(f"the Poisson batch buffer for n={n} does not divide "
                       f"over {cfg.mesh.size} devices")
    # The data and state whole on every device; each step's batch is then
    # sharded over "data" inside the compiled epoch.
    x, y, x_test, y_test, state = parallel.replicate(
        cfg.mesh, (x, y, x_test, y_test, state))
  else:
    x, y = jnp.asarray(x), jnp.asarray(y)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
  val = validation(data, dtype, cfg.mesh)
  if log_grad_stats:
    if batch_size < 2:
      raise ValueError("log_grad_stats needs a batch size of at least 2")
    k = min(STATS_BATCHES, n // batch_size)
    xs = x[:k * batch_size].reshape((k, batch_size) + x.shape[1:])
    ys = y[:k * batch_size].reshape((k, batch_size) + y.shape[1:])
  history = []
  for epoch in range(start_epoch + 1, epochs + 1):
    t0 = time.perf_counter()
    new_state, train_loss = train_epoch(model, opt, cfg, batch_size, state, x,
                                        y)
    train_loss = float(train_loss)  # one host sync per epoch
    if not np.isfinite(train_loss):
      raise Diverged(epoch, state)
    state = new_state
    test_loss, test_acc = evaluate(model, state.params, x_test, y_test)
    metrics = dict(epoch=epoch, step=int(state.step), train_loss=train_loss,
                   test_loss=float(test_loss), test_accuracy=float(test_acc))
    if val is not None:
      val_loss, val_acc = evaluate(model, state.params, *val)
      metrics.update(val_loss=float(val_loss), val_accuracy=float(val_acc))
    metrics["seconds"] = time.perf_counter() - t0
    if log_grad_stats:
      got = jax.device_get(_noise_stats(model, state.params, xs, ys))
      metrics.update({k: (v.tolist() if np.ndim(v) else float(v))
                      for k, v in got.items()})
    history.append(metrics)
    if callback is not None:
      callback(metrics, state)
  return state, history

r"""Training: a pure, jitted step and ``fit``, an epoch in one ``lax.scan``.

The step takes the model and any optax ``GradientTransformation``; gradients
come from the hand-derived :func:`fnn.value_and_grad` (``grads="hand"``) or
from ``jax.grad(model.mean_loss)`` (``grads="autodiff"``), so the two can be
compared on the same run.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import gradients, regularize
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
  """
  grads: str = "hand"
  weight_decay: float = 0.0
  dropout: float = 0.0


def make_optimizer(name: str, lr: float, *, schedule: str = "constant",
                   total_steps: int = 1, weight_decay: float = 0.0
                   ) -> optax.GradientTransformation:
  r"""An optax optimizer by name.

  ``sgd`` is Nielsen's plain mini-batch SGD, ``momentum`` SGD with momentum
  0.9, ``adam`` Adam, ``adamw`` AdamW whose ``weight_decay`` is optax's
  decoupled decay (applied to weights only, not biases, like the L2 term).
  ``cosine`` decays the learning rate to 0 over ``total_steps``.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; choose from "
                     f"{list(SCHEDULES)}")
  if not lr > 0:
    raise ValueError(f"learning rate must be > 0, got {lr}")
  rate = (optax.cosine_decay_schedule(lr, max(total_steps, 1))
          if schedule == "cosine" else lr)
  if name == "sgd":
    return optax.sgd(rate)
  if name == "momentum":
    return optax.sgd(rate, momentum=0.9)
  if name == "adam":
    return optax.adam(rate)
  weights_only = lambda params: tuple(
      type(layer)(True, False) for layer in params)
  return optax.adamw(rate, weight_decay=weight_decay, mask=weights_only)


def init_state(model: MLP, opt: optax.GradientTransformation, key,
               dtype=jnp.float32, scheme: str = "glorot") -> TrainState:
  r"""Initial params (from one half of ``key``) and optimizer state."""
  k_init, k_train = jax.random.split(key)
  params = model.init(k_init, dtype, scheme)
  return TrainState(params, opt.init(params), jnp.zeros((), jnp.int32), k_train)


def loss_and_grads(model: MLP, cfg: StepConfig, params, x, y, key):
  r"""The training loss (with L2) and its gradient, hand or autodiff."""
  masks = (regularize.dropout_masks(model, key, x.shape[0], cfg.dropout,
                                    params[0].w.dtype)
           if cfg.dropout else None)
  if cfg.grads == "hand":
    loss, grads = gradients.value_and_grad(model, params, x, y, masks=masks)
  else:
    loss, grads = jax.value_and_grad(model.mean_loss)(params, x, y, masks)
  if cfg.weight_decay:
    loss = loss + regularize.l2_penalty(params, cfg.weight_decay)
    if cfg.grads == "hand":
      grads = jax.tree.map(jnp.add, grads,
                           regularize.l2_grad(params, cfg.weight_decay))
    else:
      grads = jax.tree.map(
          jnp.add, grads,
          jax.grad(regularize.l2_penalty)(params, cfg.weight_decay))
  return loss, grads


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def train_step(model: MLP, opt: optax.GradientTransformation, cfg: StepConfig,
               state: TrainState, x, y) -> tuple[TrainState, jax.Array]:
  r"""One optimizer step on the batch ``(x, y)``: pure and jitted.

  ``model``, ``opt`` and ``cfg`` are static (hashable); ``x: [batch, n_in]``,
  ``y`` labels or targets. The dropout key comes from ``state.key``, which
  the step splits and advances. Returns the new state and the batch loss
  (before the update).
  """
  key, k_drop = jax.random.split(state.key)
  loss, grads = loss_and_grads(model, cfg, state.params, x, y, k_drop)
  updates, opt_state = opt.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(params, opt_state, state.step + 1, key), loss


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def train_epoch(model: MLP, opt, cfg: StepConfig, batch_size: int,
                state: TrainState, x, y) -> tuple[TrainState, jax.Array]:
  r"""One shuffled epoch, every step inside one compiled ``lax.scan``.

  The permutation comes from the state's key; the last partial batch is
  dropped. Returns the new state and the mean training loss of the epoch.
  """
  n = x.shape[0]
  steps = n // batch_size
  key, k_perm = jax.random.split(state.key)
  perm = jax.random.permutation(k_perm, n)[: steps * batch_size]
  xb = x[perm].reshape((steps, batch_size) + x.shape[1:])
  yb = y[perm].reshape((steps, batch_size) + y.shape[1:])

  def body(s, batch):
    return train_step(model, opt, cfg, s, *batch)

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


def fit(model: MLP, opt: optax.GradientTransformation, state: TrainState,
        data, *, epochs: int, batch_size: int, cfg: StepConfig = StepConfig(),
        start_epoch: int = 0,
        callback: Optional[Callable[[dict, TrainState], None]] = None
        ) -> tuple[TrainState, list[dict]]:
  r"""Trains from ``start_epoch`` up to ``epochs`` (the run's total).

  Args:
    data: a :class:`fnn.data.Dataset` (``x, y, x_test, y_test``).
    callback: called on the host after each epoch with the epoch's metrics
      (epoch, step, train_loss, test_loss, test_accuracy, seconds) and state.

  Returns:
    The final state and the list of per-epoch metrics.

  Raises:
    Diverged: when an epoch's loss is not finite; it holds the last good
      state (from before that epoch).
  """
  if epochs < 1:
    raise ValueError(f"epochs must be at least 1, got {epochs}")
  n = len(data.x)
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch size must be in [1, {n}] (the training set), got "
                     f"{batch_size}")
  x, y = jnp.asarray(data.x), jnp.asarray(data.y)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  dtype = state.params[0].w.dtype
  x, x_test = x.astype(dtype), x_test.astype(dtype)
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
                   test_loss=float(test_loss), test_accuracy=float(test_acc),
                   seconds=time.perf_counter() - t0)
    history.append(metrics)
    if callback is not None:
      callback(metrics, state)
  return state, history

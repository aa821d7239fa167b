r"""Many runs in one program: seeds and hyperparameter grids under ``vmap``.

``K`` runs of one network share its shapes; their :class:`fnn.TrainState`\ s
are stacked along a leading run axis and one compiled epoch
(:func:`train_epoch_many`: ``jax.vmap`` over :func:`fnn.train.train_epoch`'s
scan) trains them all. The learning rate, weight decay, dropout rate and
DP-SGD's clip norm and noise multiplier are data (:class:`Hyper`, one value
per run), so a grid of them compiles once; what changes shapes (widths,
depth, batch size, architecture, optimizer, schedule) is a separate program.

Each run equals the same run trained alone by :func:`fnn.fit` (its own key,
batches, dropout masks and noise), to float rounding: the per-run values
enter as arrays instead of Python floats (tested in float64).

A setting is in the program when any run uses it: a run with dropout 0 in a
grid with dropout 0.2 draws masks of ones, which equal no dropout exactly;
weight decay 0 adds 0. DP-SGD is all runs or none (a clip norm of 0 is not
DP-SGD's limit of anything).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _checks, regularize, train
from fnn.train import StepConfig, TrainState

FIELDS = ("lr", "weight_decay", "dropout", "dp_clip", "dp_noise")


class Hyper(NamedTuple):
  r"""Per-run hyperparameters, each a ``[K]`` float array.

  Attributes:
    lr: learning rate (the peak of a cosine schedule).
    weight_decay: the L2 coefficient, or AdamW's decoupled decay for
      ``adamw`` (as ``fnn train --weight-decay``).
    dropout: inverted-dropout rate on hidden layers.
    dp_clip: DP-SGD's clip norm ``C`` (all runs > 0, or all 0: no DP-SGD).
    dp_noise: DP-SGD's noise multiplier.
  """
  lr: Any
  weight_decay: Any
  dropout: Any
  dp_clip: Any
  dp_noise: Any

  @property
  def size(self) -> int:
    return len(self.lr)

  def run(self, k: int) -> dict:
    r"""Run ``k``'s values as Python floats."""
    return {f: float(getattr(self, f)[k]) for f in FIELDS}


def _real(name: str, v) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float, np.integer,
                                               np.floating)):
    raise TypeError(f"{name} must be a real number, got {v!r}")
  v = float(v)
  if not np.isfinite(v):
    raise ValueError(f"{name} must be finite, got {v}")
  return v


def hyper(k: int, *, lr, weight_decay=0.0, dropout=0.0, dp_clip=0.0,
          dp_noise=0.0) -> Hyper:
  r"""A :class:`Hyper` for ``k`` runs: each value a number (every run) or a
  sequence of ``k`` numbers (one per run).

  Raises:
    ValueError: a sequence not of length ``k``; ``lr <= 0``, a negative
      weight decay, clip or noise, dropout outside ``[0, 1)``, noise without
      a clip, some runs with DP-SGD (clip > 0) and some without.
    TypeError: a value that is not a real number.
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"the number of runs must be an integer >= 1, got {k!r}")
  given = dict(lr=lr, weight_decay=weight_decay, dropout=dropout,
               dp_clip=dp_clip, dp_noise=dp_noise)
  out = {}
  for name, v in given.items():
    if isinstance(v, (list, tuple, np.ndarray, jax.Array)):
      values = list(v) if isinstance(v, (list, tuple)) else list(
          np.asarray(v).reshape(-1))
      if len(values) != k:
        raise ValueError(f"{name} has {len(values)} values for {k} runs")
    else:
      values = [v] * k
    out[name] = np.array([_real(name, x) for x in values], np.float64)
  h = Hyper(**out)
  bad = [(n, c) for n, c in (("lr", h.lr <= 0), ("weight_decay",
                             h.weight_decay < 0), ("dp_clip", h.dp_clip < 0),
                             ("dp_noise", h.dp_noise < 0)) if c.any()]
  for name, c in bad:
    want = "> 0" if name == "lr" else ">= 0"
    raise ValueError(f"{name} must be {want}, got {getattr(h, name)[c][0]:g}")
  if ((h.dropout < 0) | (h.dropout >= 1)).any():
    rate = h.dropout[(h.dropout < 0) | (h.dropout >= 1)][0]
    raise ValueError(f"dropout must be in [0, 1), got {rate:g}")
  dp = h.dp_clip > 0
  if dp.any() and not dp.all():
    raise ValueError(f"DP-SGD is all runs or none: dp_clip "
                     f"{h.dp_clip.tolist()} mixes 0 (no DP-SGD) with > 0")
  if ((h.dp_noise > 0) & ~dp).any():
    raise ValueError(f"dp_noise {h.dp_noise[h.dp_noise > 0][0]:g} needs a "
                     f"clipping norm (dp_clip > 0)")
  return h


class Spec(NamedTuple):
  r"""The static part of many runs' step (hashable; one program per Spec)."""
  optimizer: str
  schedule: str
  total_steps: int
  cfg: StepConfig  # structure: grads, dp_sampling, ...; values from Hyper
  l2: bool  # the L2 term is in the program
  dropout: bool
  dp: bool


def _traced(spec: Spec, h, dtype) -> tuple:
  r"""One run's optimizer and step config from its (traced) values."""
  decoupled = spec.optimizer == "adamw"
  opt = train.build_optimizer(
      spec.optimizer, h["lr"].astype(dtype), schedule=spec.schedule,
      total_steps=spec.total_steps,
      weight_decay=h["weight_decay"].astype(dtype) if decoupled else 0.0)
  cfg = spec.cfg._replace(
      weight_decay=h["weight_decay"].astype(dtype) if spec.l2 else 0.0,
      dropout=regularize.Keep(h["threshold"], h["kept"]) if spec.dropout
      else 0.0,
      dp_clip=h["dp_clip"].astype(dtype) if spec.dp else 0.0,
      dp_noise=h["dp_noise"].astype(dtype) if spec.dp else 0.0)
  return opt, cfg


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def train_epoch_many(model, spec: Spec, batch_size: int, states: TrainState,
                     values: dict, x, y) -> tuple[TrainState, jax.Array]:
  r"""One epoch of every run: ``jax.vmap`` of :func:`fnn.train_epoch` over
  the stacked ``states`` and per-run ``values`` (see :func:`_values`); the
  data are shared. Returns the new states and the ``[K]`` mean losses."""
  dtype = _checks.param_dtype(jax.tree.map(lambda p: p[0], states.params))

  def one(state, h):
    opt, cfg = _traced(spec, h, dtype)
    return train._epoch(cfg, batch_size, functools.partial(
        train._step, model, opt, cfg), state, x, y)

  return jax.vmap(one)(states, values)


@functools.partial(jax.jit, static_argnums=0)
def evaluate_many(model, params, x, y) -> tuple[jax.Array, jax.Array]:
  r"""``[K]`` mean losses and accuracies of stacked ``params`` on one set."""
  return jax.vmap(lambda p: train.evaluate(model, p, x, y))(params)


def stack(trees: Sequence) -> Any:
  r"""Stacks pytrees of one structure along a new leading (run) axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree, k: int) -> Any:
  r"""Run ``k`` of a stacked pytree."""
  return jax.tree.map(lambda leaf: leaf[k], tree)


def init_many(model, optimizer: str, keys: Sequence, dtype=jnp.float32,
              scheme: Optional[str] = None, *, schedule: str = "constant",
              total_steps: int = 1) -> TrainState:
  r"""The stacked initial states of one run per key: run ``k`` equals
  ``fnn.init_state(model, make_optimizer(optimizer, lr, ...), keys[k],
  dtype, scheme)`` bit for bit (whatever ``lr``: an optimizer's initial
  state depends on its name and schedule only)."""
  opt = train.make_optimizer(optimizer, 1.0, schedule=schedule,
                             total_steps=total_steps)
  return stack([train.init_state(model, opt, k, dtype, scheme) for k in keys])


def _values(h: Hyper, dtype) -> dict:
  r"""The per-run arrays the program reads (dropout as its Keep)."""
  wide = jnp.promote_types(dtype, jnp.float32)
  keeps = [regularize.keep(float(r), wide) for r in h.dropout]
  # float64 values here; each is cast to the params' dtype inside.
  return dict(lr=h.lr, weight_decay=h.weight_decay, dp_clip=h.dp_clip,
              dp_noise=h.dp_noise,
              threshold=np.array([k.threshold for k in keeps], np.uint32),
              kept=np.array([k.kept for k in keeps], wide))


def fit_many(model, optimizer: str, states: TrainState, data, *, epochs: int,
             batch_size: int, hyper: Hyper, schedule: str = "constant",
             cfg: StepConfig = StepConfig(), start_epoch: int = 0,
             callback: Optional[Callable[[dict, TrainState], None]] = None,
             diverged: Optional[Sequence] = None
             ) -> tuple[TrainState, list[dict]]:
  r"""Trains ``K`` runs in one program from ``start_epoch`` up to ``epochs``.

  Args:
    model: any network (:class:`fnn.MLP`, :class:`fnn.Sequential`).
    optimizer: a name of :data:`fnn.train.OPTIMIZERS`.
    states: the stacked states (:func:`init_many`), leading axis ``K``.
    data: a :class:`fnn.data.Dataset`, shared by the runs (with a validation
      split, each epoch also reports ``val_loss`` and ``val_accuracy``).
    hyper: :func:`hyper` of ``K`` runs.
    schedule: ``"constant"`` or ``"cosine"`` (over all ``epochs``).
    cfg: the structure of the step: ``grads``, ``dp_sampling``,
      ``compute_dtype`` (its numeric fields are ignored: they come from
      ``hyper``). Sharding (``cfg.mesh``) is not supported here.
    callback: called on the host after each epoch with the epoch's metrics
      (``epoch``, ``step``, then ``train_loss``, ``test_loss``,
      ``test_accuracy``, ``val_loss``, ``val_accuracy`` as lists of ``K``
      floats, NaN for a run that has diverged, ``diverged``: per run the
      epoch its loss became NaN or infinite or None, ``seconds``) and the
      states.
    diverged: when resuming, the last epoch's ``diverged`` list (those runs
      stay frozen).

  A run whose loss becomes NaN or infinite keeps its last good state (from
  before that epoch) and stops changing; the others go on.

  Returns:
    The final states and the per-epoch metrics.

  Raises:
    ValueError: bad settings or data (as :func:`fnn.fit`), ``states`` and
      ``hyper`` of different run counts.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be at least 1, got {epochs}")
  if not isinstance(hyper, Hyper):
    raise TypeError(f"hyper must be a fnn.many.Hyper (fnn.many.hyper(k, "
                    f"lr=...)), got {type(hyper).__name__}")
  if optimizer not in train.OPTIMIZERS:
    raise ValueError(f"unknown optimizer {optimizer!r}; choose from "
                     f"{list(train.OPTIMIZERS)}")
  if schedule not in train.SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; choose from "
                     f"{list(train.SCHEDULES)}")
  if cfg.mesh is not None:
    raise ValueError("fit_many runs on one device (cfg.mesh must be None)")
  # The step's structure; its numeric settings come from hyper.
  structure = cfg._replace(weight_decay=0.0, dropout=0.0, dp_clip=0.0,
                           dp_noise=0.0)
  train.check_config(structure)
  k = int(np.shape(states.step)[0]) if np.ndim(states.step) == 1 else None
  if k != hyper.size:
    raise ValueError(f"states hold {k} runs (a leading run axis) and hyper "
                     f"{hyper.size}; they must match")
  train.check_data(model, data)
  n = len(data.x)
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch size must be in [1, {n}] (the training set), got "
                     f"{batch_size}")
  decoupled = optimizer == "adamw"
  # The step count enters a cosine schedule only: a constant one keeps one
  # program whatever the number of epochs.
  spec = Spec(optimizer, schedule,
              (n // batch_size) * epochs if schedule == "cosine" else 1,
              structure, l2=not decoupled and bool((hyper.weight_decay > 0).any()),
              dropout=bool((hyper.dropout > 0).any()),
              dp=bool((hyper.dp_clip > 0).any()))
  dtype = _checks.param_dtype(unstack(states.params, 0))
  values = _values(hyper, dtype)
  x, y = jnp.asarray(data.x.astype(dtype)), jnp.asarray(data.y)
  x_test, y_test = jnp.asarray(data.x_test.astype(dtype)), jnp.asarray(
      data.y_test)
  val = train.validation(data, dtype)
  diverged = [None] * k if diverged is None else list(diverged)
  if len(diverged) != k:
    raise ValueError(f"diverged has {len(diverged)} entries for {k} runs")
  history = []
  for epoch in range(start_epoch + 1, epochs + 1):
    t0 = time.perf_counter()
    new, losses = train_epoch_many(model, spec, batch_size, states, values, x,
                                   y)
    losses = np.asarray(losses, np.float64)  # one host sync per epoch
    bad = ~np.isfinite(losses)
    for i in np.flatnonzero(bad):
      if diverged[i] is None:
        diverged[i] = epoch
    live = np.array([d is None for d in diverged])
    if live.all():
      states = new
    else:  # diverged runs keep their last good state
      keep = jnp.asarray(live)
      states = jax.tree.map(
          lambda a, b: jnp.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)),
                                 a, b), new, states)
    nan = lambda v: np.where(live, np.asarray(v, np.float64), np.nan).tolist()
    test_loss, test_acc = evaluate_many(model, states.params, x_test, y_test)
    metrics = dict(epoch=epoch, step=int(np.max(states.step)),
                   train_loss=nan(losses), test_loss=nan(test_loss),
                   test_accuracy=nan(test_acc))
    if val is not None:
      val_loss, val_acc = evaluate_many(model, states.params, *val)
      metrics.update(val_loss=nan(val_loss), val_accuracy=nan(val_acc))
    metrics.update(diverged=list(diverged), seconds=time.perf_counter() - t0)
    history.append(metrics)
    if callback is not None:
      callback(metrics, states)
  return states, history

r"""The network description :class:`MLP`, its parameters and forward pass.

Convention: row vectors. A dense layer maps ``a_prev: [n_in]`` to
``z = a_prev @ w + b`` with ``w: [n_in, n_out]`` and ``b: [n_out]``, then
``a = sigma(z)``. Seed 003 (Nielsen) writes the same layer in column form
``z = W a + b`` with ``W: [n_out, n_in]``: our ``w`` is its ``W^T``, so its
``dC/dW_{jk} = delta_j a_k`` becomes our ``dw = outer(a_prev, delta)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _checks
from fnn import activations as act_lib
from fnn import losses as loss_lib
from fnn import layers as layer_lib
from fnn.layers import dense as _dense

Array = jax.Array


# The params of a dense layer and the init schemes live with the Dense layer
# type (fnn.layers.dense); they are re-exported here under their old names.
Dense = _dense.Dense
INIT_SCHEMES = _dense.INIT_SCHEMES

Params = tuple[Dense, ...]


ActivationSpec = Union[str, act_lib.Activation]


@dataclasses.dataclass(frozen=True)
class MLP:
  r"""A frozen, hashable description of a feedforward network.

  Being hashable, a model is a valid static argument of ``jax.jit``:
  ``jax.jit(fnn.grad, static_argnums=0)``. It holds no parameters.

  Args:
    sizes: ``(n_in, h_1, ..., n_out)``, at least two entries; two entries is
      a single dense layer (logistic regression, seeds 000/001).
    activation: hidden activation, one name (or :class:`fnn.Activation`) for
      all hidden layers or a sequence with one per hidden layer.
    output: the output layer's activation (hidden ones or ``"softmax"``).
    loss: the per-example loss; must fit the output (see
      :func:`fnn.valid_pairs`).

  After construction ``activation`` is a tuple of :class:`fnn.Activation`,
  one per hidden layer, ``output`` an :class:`fnn.Activation` and ``loss`` an
  :class:`fnn.Loss`.

  Raises:
    ValueError: for sizes below 1, too few sizes, unknown names, a wrong
      number of hidden activations or an (output, loss) pair that makes no
      sense.
    TypeError: for sizes that are not integers.
  """
  sizes: tuple[int, ...]
  activation: Any = "relu"
  output: Any = "softmax"
  loss: Any = "categorical_cross_entropy"

  def __post_init__(self):
    sizes = self.sizes
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
      raise TypeError(f"sizes must be a sequence of ints like (4, 5, 3), "
                      f"got {sizes!r}")
    for s in sizes:
      if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
        raise TypeError(f"sizes must be ints, got {s!r} in {tuple(sizes)}")
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
      raise ValueError(f"sizes needs at least (n_in, n_out), got {sizes}")
    if min(sizes) < 1:
      raise ValueError(f"every size must be at least 1, got {sizes}")
    n_hidden = len(sizes) - 2
    acts = self.activation
    if isinstance(acts, (str, act_lib.Activation)):
      acts = (acts,) * n_hidden
    elif isinstance(acts, Sequence):
      acts = tuple(acts)
      if len(acts) != n_hidden:
        raise ValueError(
            f"activation has {len(acts)} entries but sizes {sizes} has "
            f"{n_hidden} hidden layers; give one name or one per hidden layer")
    else:
      raise TypeError(f"activation must be a name or a sequence of names, "
                      f"got {acts!r}")
    acts = tuple(act_lib.get_activation(a, hidden=True) for a in acts)
    output, loss = output_and_loss(self.output, self.loss, sizes[-1],
                                   f"sizes {sizes}")
    object.__setattr__(self, "sizes", sizes)
    object.__setattr__(self, "activation", acts)
    object.__setattr__(self, "output", output)
    object.__setattr__(self, "loss", loss)

  def _key(self):
    return (self.sizes, self.activation, self.output, self.loss)

  # jit compares a static argument with the cached one on every call; an
  # identity fast path and a cached hash keep that off the dispatch path.
  def __eq__(self, other):
    if self is other:
      return True
    if not isinstance(other, MLP):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self):
    h = self.__dict__.get("_hash")
    if h is None:
      h = hash(self._key())
      object.__setattr__(self, "_hash", h)
    return h

  def __repr__(self):
    hidden = tuple(a.name for a in self.activation)
    return (f"MLP(sizes={self.sizes}, activation={hidden}, "
            f"output={self.output.name!r}, loss={self.loss.name!r})")

  # The layer view every generic function runs on: Dense, Activation, ...,
  # Dense; the params hold only the Dense entries (expand/compress map).
  @property
  def layers(self) -> tuple[layer_lib.Layer, ...]:
    out = self.__dict__.get("_layers")
    if out is None:
      out = []
      for n, act in zip(self.sizes[1:-1], self.activation):
        out += [layer_lib.Dense(n), layer_lib.Activation(act)]
      out = tuple(out) + (layer_lib.Dense(self.sizes[-1]),)
      object.__setattr__(self, "_layers", out)
    return out

  @property
  def mask_slots(self) -> tuple[int, ...]:
    r"""Indices in :attr:`layers` whose output takes a dropout mask."""
    return tuple(range(1, 2 * self.num_layers - 2, 2))

  @property
  def in_shape(self) -> tuple[int, ...]:
    return (self.sizes[0],)

  @property
  def n_out(self) -> int:
    return self.sizes[-1]

  @property
  def dropout_shapes(self) -> tuple[tuple[int, ...], ...]:
    r"""One example's shape of every dropout mask (one per hidden layer)."""
    return tuple((h,) for h in self.sizes[1:-1])

  def expand(self, params):
    r"""Params (Dense entries only) to one entry per layer of :attr:`layers`."""
    out = []
    for p in params[:-1]:
      out += [p, ()]
    return tuple(out) + (params[-1],)

  def compress(self, tree):
    r"""One entry per layer back to the params' structure (Dense entries)."""
    return tuple(tree[0::2])

  @property
  def activations(self) -> tuple[act_lib.Activation, ...]:
    r"""The activation of every layer, the output's last."""
    return self.activation + (self.output,)

  @property
  def num_layers(self) -> int:
    return len(self.sizes) - 1

  @property
  def fused(self) -> bool:
    r"""Whether (output, loss) is a canonical pair with ``dL/dz = a - y``."""
    return loss_lib.is_fused(self.loss, self.output.name)

  def init(self, key: Array, dtype=jnp.float32, scheme: str = "glorot"
           ) -> Params:
    r"""Draws parameters.

    Args:
      key: a PRNG key; one key is split per layer.
      dtype: a floating dtype for every leaf.
      scheme: ``"glorot"`` (uniform, zero biases), ``"he"`` (normal std
        ``sqrt(2/n_in)``, zero biases), ``"lecun"`` (normal std
        ``1/sqrt(n_in)``, zero biases), ``"nielsen"`` (``w ~ N(0, 1/n_in)``,
        ``b ~ N(0, 1)``; network2.py) or ``"normal"`` (all ``N(0, 1)``;
        network.py) or ``"pytorch"`` (``w, b ~ U(+-1/sqrt(n_in))``,
        torch.nn.Linear's default).

    Returns:
      A tuple of :class:`Dense`, one per layer.
    """
    _dense.check_scheme(scheme)
    dt = floating_dtype(dtype)
    keys = jax.random.split(key, self.num_layers)
    return tuple(
        Dense(*INIT_SCHEMES[scheme](k, n_in, n_out, dt))
        for k, n_in, n_out in zip(keys, self.sizes[:-1], self.sizes[1:]))

  def apply(self, params: Params, x: Array) -> Array:
    r"""Forward pass of a batch.

    Args:
      params: from :meth:`init`.
      x: ``[batch, n_in]`` inputs.

    Returns:
      ``[batch, n_out]`` output activations.
    """
    x = _checks.check_x(self, params, x, batched=True)
    return self.output.fn(self._logits(params, x))

  def _logits(self, params: Params, x: Array, masks=None) -> Array:
    a = x
    for l, (layer, act) in enumerate(zip(params[:-1], self.activation)):
      a = act.fn(a @ layer.w + layer.b[None, :])  # (B, n_out)
      if masks is not None:
        a = a * masks[l]
    return a @ params[-1].w + params[-1].b[None, :]

  def mean_loss(self, params: Params, x: Array, y: Array, masks=None
                ) -> Array:
    r"""The batch mean of the per-example loss, in plain batched ``jnp``.

    This is the independent reference: ``jax.grad(model.mean_loss)`` is what
    :func:`fnn.grad` must equal. Canonical pairs use the loss computed from
    the pre-activation (log-sigmoid, log-softmax), which stays finite.

    Args:
      params: from :meth:`init`.
      x: ``[batch, n_in]`` inputs.
      y: ``[batch, n_out]`` targets, or ``[batch]`` integer class labels
        (one-hot encoded), or ``[batch]`` targets when ``n_out == 1``.
      masks: optional inverted-dropout masks, ``[batch, h_l]`` per hidden
        layer, multiplying each hidden layer's output.

    Returns:
      A scalar.
    """
    return batch_mean_loss(self, params, x, y, masks)


def batch_mean_loss(model, params, x, y, masks=None):
  r"""``mean_loss`` of any network from its batched ``model._logits``:
  canonical pairs from the pre-activation (log-sigmoid, log-softmax)."""
  x, y = _checks.check_batch(model, params, x, y, batched=True)
  _checks.check_masks(model, masks, x.shape[0])
  z = model._logits(params, x, masks)
  if model.fused:
    per_example = model.loss.fn_z(z, y)
  else:
    per_example = model.loss.fn(model.output.fn(z), y)
  return jnp.mean(per_example)


def floating_dtype(dtype):
  r"""``jnp.dtype(dtype)``, which must be floating (else TypeError)."""
  try:
    dt = jnp.dtype(dtype)
  except TypeError as e:
    raise TypeError(f"dtype must be a floating dtype, got {dtype!r}") from e
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"dtype must be a floating dtype, got {dt}")
  return dt


def output_and_loss(output, loss, n_out: int, where: str):
  r"""Resolves the output activation and the loss and checks they fit.

  Raises:
    ValueError: unknown names, an (output, loss) pair that makes no sense,
      or a softmax over fewer than 2 outputs (``where`` names the model).
  """
  output = act_lib.get_activation(output, hidden=False)
  loss = loss_lib.get_loss(loss)
  if loss.outputs is not None and output.name not in loss.outputs:
    raise ValueError(
        f"loss {loss.name!r} needs output {' or '.join(loss.outputs)}, got "
        f"output {output.name!r}; valid (output, loss) pairs: "
        f"{_pairs_text()}")
  if output.name == "softmax" and n_out < 2:
    raise ValueError(f"a softmax output needs n_out >= 2, got {where}")
  return output, loss


def _pairs_text() -> str:
  outputs = act_lib.output_activations()
  pairs = loss_lib.valid_pairs(outputs)
  by_loss: dict[str, list[str]] = {}
  for out, loss in pairs:
    by_loss.setdefault(loss, []).append(out)
  return "; ".join(
      f"{loss}: {'any output' if len(outs) == len(outputs) else ', '.join(outs)}"
      for loss, outs in by_loss.items())

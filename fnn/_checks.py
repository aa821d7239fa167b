r"""Validation of user input, done in Python before (or while) tracing.

Shapes and dtypes are static under ``jax.jit``, so they are always checked;
values (class labels, binary targets) are checked only where they are
concrete, i.e. outside ``jit``. Every error names the expected and the actual
value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _is_tracer(v) -> bool:
  return isinstance(v, jax.core.Tracer)


def _as_array(v, what: str):
  if _is_tracer(v) or isinstance(v, (jax.Array, np.ndarray)):
    arr = v
  else:
    try:
      arr = np.asarray(v)
    except Exception as e:  # ragged lists and the like
      raise TypeError(f"{what} must be an array, got {type(v).__name__}") from e
  if not (jnp.issubdtype(arr.dtype, jnp.number) or arr.dtype == bool):
    raise TypeError(f"{what} must be numeric, got dtype {arr.dtype}")
  return arr


def param_dtype(params):
  r"""The dtype of the first parameter leaf (every leaf shares it)."""
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError("params has no arrays")
  return leaves[0].dtype


def _check_entry(p, shapes, where: str) -> None:
  r"""One params entry against its shapes (see ``Sequential.param_shapes``)."""
  if type(shapes) is tuple:  # a container's entries, or () for no params
    if not isinstance(p, (tuple, list)) or hasattr(p, "_fields") or len(
        p) != len(shapes):
      want = "()" if not shapes else f"a tuple of {len(shapes)} entries"
      raise TypeError(f"{where} must be {want}, got {type(p).__name__}")
    for i, (q, t) in enumerate(zip(p, shapes)):
      _check_entry(q, t, f"{where}[{i}]")
    return
  kind = type(shapes)
  if not isinstance(p, kind):
    raise TypeError(f"{where} must be fnn {kind.__name__}"
                    f"{tuple(shapes._fields)}, got {type(p).__name__}")
  for name, want in zip(shapes._fields, shapes):
    got = tuple(getattr(getattr(p, name), "shape", ()))
    if got != tuple(want):
      raise ValueError(f"{where}.{name} has shape {got}, the model expects "
                       f"{tuple(want)}")


def check_params(model, params) -> None:
  r"""Checks that ``params`` fit ``model`` (a tuple of Dense, right shapes)."""
  if not hasattr(model, "sizes"):  # fnn.Sequential
    _check_entry(params, model.param_shapes, "params")
    return
  if not isinstance(params, (tuple, list)):
    raise TypeError(f"params must be a tuple of fnn.Dense from model.init, got "
                    f"{type(params).__name__}")
  if len(params) != model.num_layers:
    raise ValueError(f"params has {len(params)} layers, model {model!r} has "
                     f"{model.num_layers}")
  for i, (layer, n_in, n_out) in enumerate(
      zip(params, model.sizes[:-1], model.sizes[1:])):
    w, b = getattr(layer, "w", None), getattr(layer, "b", None)
    if w is None or b is None:
      raise TypeError(f"params[{i}] must be fnn.Dense(w, b), got "
                      f"{type(layer).__name__}")
    if tuple(w.shape) != (n_in, n_out) or tuple(b.shape) != (n_out,):
      raise ValueError(
          f"params[{i}] has w {tuple(w.shape)}, b {tuple(b.shape)}; model "
          f"sizes {model.sizes} expect w ({n_in}, {n_out}), b ({n_out},)")


def check_x(model, params, x, *, batched: bool):
  r"""Validates inputs and casts them to the parameters' dtype.

  Returns:
    ``x`` as an array of the parameters' dtype.
  """
  check_params(model, params)
  x = _as_array(x, "x")
  if not hasattr(model, "sizes"):
    want = model.in_shape
    got = tuple(x.shape[1:] if batched else x.shape)
    if got != want or (batched and x.ndim < 1):
      lead = "[batch, *in_shape]" if batched else "in_shape (one example)"
      raise ValueError(f"x must have shape {lead} with in_shape={want}, got "
                       f"shape {tuple(x.shape)}")
    return jnp.asarray(x, param_dtype(params))
  n_in = model.sizes[0]
  want = "[batch, n_in]" if batched else "[n_in] (one example)"
  if x.ndim != (2 if batched else 1):
    raise ValueError(f"x must have shape {want} with n_in={n_in}, got shape "
                     f"{tuple(x.shape)}")
  if x.shape[-1] != n_in:
    raise ValueError(f"x has {x.shape[-1]} features, model expects n_in={n_in} "
                     f"(sizes {model.sizes}); got shape {tuple(x.shape)}")
  return jnp.asarray(x, param_dtype(params))


def check_y(model, y, batch_shape: tuple[int, ...], dtype):
  r"""Validates targets and returns them as ``[*batch_shape, n_out]``.

  Accepted: targets ``[*batch, n_out]``; integer class labels ``[*batch]``
  (one-hot encoded) when ``n_out >= 2``; targets ``[*batch]`` when
  ``n_out == 1``.
  """
  y = _as_array(y, "y")
  n_out = model.n_out
  full, labels = batch_shape + (n_out,), batch_shape
  shape = tuple(y.shape)
  integer = jnp.issubdtype(y.dtype, jnp.integer)
  concrete = not _is_tracer(y)
  if shape == labels and n_out >= 2:
    if not integer:
      raise ValueError(
          f"y of shape {shape} is read as class labels and must be integer, got "
          f"dtype {y.dtype}; pass targets of shape {full} instead")
    if concrete and y.size:
      lo, hi = int(np.min(y)), int(np.max(y))
      if lo < 0 or hi >= n_out:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"class label {bad} is outside [0, {n_out}) for n_out={n_out}")
    return jax.nn.one_hot(y, n_out, dtype=dtype)
  if shape == labels and n_out == 1:
    y = y[..., None]
  elif shape != full:
    hint = (f"{full} or integer class labels {labels}" if n_out >= 2
            else f"{full} or {labels}")
    raise ValueError(f"y must have shape {hint} for loss {model.loss.name!r}, "
                     f"got shape {shape}")
  if model.loss.targets == "probability" and concrete and y.size:
    lo, hi = float(np.min(y)), float(np.max(y))
    if lo < 0 or hi > 1:
      bad = lo if lo < 0 else hi
      raise ValueError(f"loss {model.loss.name!r} needs targets in [0, 1], got "
                       f"{bad}")
  return jnp.asarray(y, dtype)


def check_batch(model, params, x, y, *, batched: bool):
  r"""Validates ``(x, y)`` together; the leading axes must agree."""
  x = check_x(model, params, x, batched=batched)
  y = _as_array(y, "y")
  y_shape = tuple(y.shape)
  if batched and (len(y_shape) < 1 or y_shape[0] != x.shape[0]):
    raise ValueError(f"x has batch size {x.shape[0]} but y has shape {y_shape}")
  return x, check_y(model, y, tuple(x.shape[:1]) if batched else (), x.dtype)


def check_masks(model, masks, batch: int) -> None:
  r"""Dropout masks: one ``[batch, h_l]`` array per hidden layer, or None."""
  if masks is None:
    return
  if not hasattr(model, "sizes"):
    shapes = model.dropout_shapes
    if not isinstance(masks, (tuple, list)) or len(masks) != len(shapes):
      raise ValueError(f"masks must be a tuple of {len(shapes)} arrays, one "
                       f"per top-level Activation layer")
    for l, (m, sh) in enumerate(zip(masks, shapes)):
      if tuple(m.shape) != (batch, *sh):
        raise ValueError(f"masks[{l}] must have shape {(batch, *sh)}, got "
                         f"{tuple(m.shape)}")
    return
  hidden = model.sizes[1:-1]
  if not isinstance(masks, (tuple, list)) or len(masks) != len(hidden):
    raise ValueError(f"masks must be a tuple of {len(hidden)} arrays, one per "
                     f"hidden layer of sizes {model.sizes}")
  for l, (m, h) in enumerate(zip(masks, hidden)):
    if tuple(m.shape) != (batch, h):
      raise ValueError(f"masks[{l}] must have shape {(batch, h)}, got "
                       f"{tuple(m.shape)}")

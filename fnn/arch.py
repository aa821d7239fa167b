r"""Architectures by name or spec string: ``fnn train --arch``.

Named architectures (``n_in`` inputs, ``n_out`` classes):

* ``mlp``: :class:`fnn.MLP` from the hidden sizes (``--hidden``).
* ``resmlp``: MNIST-1D's ``MLPBase``: ``n_in -> 100 ReLU -> residual
  [100 -> 100 ReLU] -> n_out``.
* ``cnn``: MNIST-1D's ``ConvBase``: ``Conv1d(1 -> 25, kernel 5, stride 2,
  padding 1)``, ReLU, twice ``Conv1d(25 -> 25, kernel 3, stride 2, padding
  1)``, ReLU, flatten (``125`` for ``n_in = 40``), ``Dense(n_out)``.

Both MNIST-1D models use PyTorch's default initialization (``"pytorch"``).

A spec string is comma-separated layers (:data:`SPEC_HELP`), e.g.
``"conv1d:25:5:2:1,relu,flatten,dense:10"``; a final ``dense:n_out`` is
appended when the spec does not end in ``dense``.

References:
  Greydanus (2020), "Scaling down deep learning" (MNIST-1D), and its
  repository's ``notebooks/models.py``.
"""
from __future__ import annotations

from fnn import activations as act_lib
from fnn import layers as L
from fnn.model import MLP
from fnn.sequential import Sequential

NAMED = ("mlp", "resmlp", "cnn")

SPEC_HELP = ("comma-separated layers: dense:N, conv1d:C:K[:STRIDE[:PAD]], "
             "layernorm[:EPS], flatten, res(LAYERS...), or an activation "
             "name (relu, tanh, ...); e.g. "
             "'conv1d:25:5:2:1,relu,flatten,dense:10'")


def resmlp(n_in: int, n_out: int, hidden: int = 100, **kw) -> Sequential:
  r"""MNIST-1D's ``MLPBase``: ``h = relu(l1 x); h = h + relu(l2 h); l3 h``."""
  init = "pytorch"
  return Sequential((n_in,), [
      L.Dense(hidden, init=init), L.Activation("relu"),
      L.Residual(L.Dense(hidden, init=init), L.Activation("relu")),
      L.Dense(n_out, init=init)], **kw)


def cnn(n_in: int, n_out: int, channels: int = 25, **kw) -> Sequential:
  r"""MNIST-1D's ``ConvBase`` (three strided convolutions and a dense)."""
  init = "pytorch"
  return Sequential((n_in,), [
      L.Conv1d(channels, 5, stride=2, padding=1, init=init),
      L.Activation("relu"),
      L.Conv1d(channels, 3, stride=2, padding=1, init=init),
      L.Activation("relu"),
      L.Conv1d(channels, 3, stride=2, padding=1, init=init),
      L.Activation("relu"), L.Flatten(), L.Dense(n_out, init=init)], **kw)


def _split(spec: str) -> list[str]:
  r"""Top-level comma split that keeps ``res(...)`` groups together."""
  out, depth, cur = [], 0, ""
  for ch in spec:
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
      if depth < 0:
        raise ValueError(f"unbalanced ')' in architecture spec {spec!r}")
    if ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
    else:
      cur += ch
  if depth:
    raise ValueError(f"unbalanced '(' in architecture spec {spec!r}")
  out.append(cur.strip())
  return out


def _ints(token: str, parts: list[str], lo: int, hi: int) -> list[int]:
  if not lo <= len(parts) <= hi:
    raise ValueError(f"layer {token!r} needs {lo} to {hi} numbers after the "
                     f"name; {SPEC_HELP}")
  try:
    return [int(p) for p in parts]
  except ValueError:
    raise ValueError(f"layer {token!r} has a non-integer argument; "
                     f"{SPEC_HELP}") from None


def parse_layers(spec: str, init: str = "he") -> list:
  r"""A spec string to a list of layers (no appended output layer).

  Raises:
    ValueError: an unknown layer name or bad arguments, naming the token.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"architecture spec must be a non-empty string; "
                     f"{SPEC_HELP}")
  layers = []
  for token in _split(spec):
    if not token:
      raise ValueError(f"empty layer in architecture spec {spec!r}")
    if token.startswith("res(") and token.endswith(")"):
      layers.append(L.Residual(*parse_layers(token[4:-1], init)))
      continue
    name, *parts = token.split(":")
    name = name.strip().lower()
    if name == "dense":
      (n,) = _ints(token, parts, 1, 1)
      layers.append(L.Dense(n, init=init))
    elif name == "conv1d":
      args = _ints(token, parts, 2, 4)
      layers.append(L.Conv1d(*args, init=init))
    elif name == "layernorm":
      if len(parts) > 1:
        raise ValueError(f"layer {token!r}: layernorm[:EPS]; {SPEC_HELP}")
      try:
        eps = float(parts[0]) if parts else 1e-5
      except ValueError:
        raise ValueError(f"layer {token!r}: EPS must be a number") from None
      layers.append(L.LayerNorm(eps))
    elif name == "flatten" and not parts:
      layers.append(L.Flatten())
    elif name in act_lib.ACTIVATIONS and not parts:
      layers.append(L.Activation(name))
    else:
      raise ValueError(f"unknown layer {token!r} in architecture spec; "
                       f"{SPEC_HELP}")
  return layers


def build(arch: str, n_in: int, n_out: int, *, hidden=(), activation="relu",
          output="softmax", loss="categorical_cross_entropy"):
  r"""The model for ``--arch`` on data with ``n_in`` features, ``n_out``
  classes (or targets).

  ``mlp`` gives ``fnn.MLP((n_in, *hidden, n_out), activation, ...)``; the
  others a :class:`fnn.Sequential` over one example's ``(n_in,)``.

  Raises:
    ValueError: an unknown name, a bad spec, shapes that do not chain, or a
      last dense layer whose size is not ``n_out``.
  """
  kw = dict(output=output, loss=loss)
  if arch == "mlp":
    return MLP((n_in, *hidden, n_out), activation=activation, **kw)
  if arch == "resmlp":
    return resmlp(n_in, n_out, **kw)
  if arch == "cnn":
    return cnn(n_in, n_out, **kw)
  layers = parse_layers(arch)
  if not isinstance(layers[-1], L.Dense):
    layers.append(L.Dense(n_out))
  model = Sequential((n_in,), layers, **kw)
  if model.n_out != n_out:
    raise ValueError(f"the architecture's last layer has {model.n_out} "
                     f"outputs, the data needs {n_out}")
  return model


def describe(model) -> str:
  r"""A one-line description: ``MLP 40-512-10`` or the layers."""
  if isinstance(model, MLP):
    return f"MLP {'-'.join(map(str, model.sizes))}"
  return " ".join(_short(l) for l in model.layers)


def _short(layer) -> str:
  if isinstance(layer, L.Residual):
    return "res(" + " ".join(_short(l) for l in layer.layers) + ")"
  if isinstance(layer, L.Activation):
    return layer.name
  if isinstance(layer, L.Dense):
    return f"dense:{layer.n_out}"
  if isinstance(layer, L.Conv1d):
    return (f"conv1d:{layer.out_channels}:{layer.kernel_size}:{layer.stride}:"
            f"{layer.padding}")
  if isinstance(layer, L.LayerNorm):
    return "layernorm"
  if isinstance(layer, L.Flatten):
    return "flatten"
  return repr(layer)

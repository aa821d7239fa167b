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
appended when the spec does not end in ``dense``. Grammar::

  spec   := layer ("," layer)*
  layer  := "dense:" N | "conv1d:" C ":" K [":" STRIDE [":" PAD]]
          | "layernorm" [":" EPS] | "flatten" | "res(" spec ")"
          | ACTIVATION                 (relu, tanh, ... or a registered one)

``res(...)`` nests (``res(dense:8,relu,res(layernorm,dense:8))``). Dense and
Conv1d layers of a spec use the ``init`` scheme given to :func:`build`
(``fnn train --init``, default ``he``). :func:`describe` writes a
Sequential back as a spec.

References:
  Greydanus (2020), "Scaling down deep learning" (MNIST-1D), and its
  repository's ``notebooks/models.py``.
"""
from __future__ import annotations

from fnn import activations as act_lib
from fnn import layers as L
from fnn.model import MLP, output_and_loss
from fnn.sequential import Sequential

NAMED = ("mlp", "resmlp", "cnn")

SPEC_HELP = ("comma-separated layers: dense:N, conv1d:C:K[:STRIDE[:PAD]] "
             "(C out channels, kernel K, stride 1, padding 0 by default), "
             "layernorm[:EPS], flatten, res(LAYERS) (a + block(a); nests), "
             "or an activation name (relu, tanh, ...); a last dense:N_OUT is "
             "added when the spec does not end in dense; e.g. "
             "'conv1d:25:5:2:1,relu,flatten,dense:10'")

# The grammar in brief, for error messages (SPEC_HELP is for --help).
SPEC_SHORT = ("layers are dense:N, conv1d:C:K[:STRIDE[:PAD]], layernorm[:EPS], "
              "flatten, res(LAYERS) or an activation name (fnn info lists "
              "them)")

# The init scheme of each named Sequential when none is given: MNIST-1D's
# reference models use PyTorch's default initialization.
NAMED_INIT = {"resmlp": "pytorch", "cnn": "pytorch"}
SPEC_INIT = "he"  # a spec's Dense and Conv1d layers when none is given


def resmlp(n_in: int, n_out: int, hidden: int = 100, *, init: str = "pytorch",
           **kw) -> Sequential:
  r"""MNIST-1D's ``MLPBase``: ``h = relu(l1 x); h = h + relu(l2 h); l3 h``.

  Args:
    n_in, n_out: inputs and outputs (40 and 10 on MNIST-1D).
    hidden: the width (100 in the repository).
    init: the Dense layers' init scheme (PyTorch's default).
    **kw: ``output`` and ``loss`` of :class:`fnn.Sequential`.
  """
  return Sequential((n_in,), [
      L.Dense(hidden, init=init), L.Activation("relu"),
      L.Residual(L.Dense(hidden, init=init), L.Activation("relu")),
      L.Dense(n_out, init=init)], **kw)


def cnn(n_in: int, n_out: int, channels: int = 25, *, init: str = "pytorch",
        **kw) -> Sequential:
  r"""MNIST-1D's ``ConvBase``: three strided convolutions and a dense.

  One example is ``[n_in]`` (one channel); for ``n_in = 40`` the shapes are
  ``40 -> 19x25 -> 10x25 -> 5x25 -> 125 -> n_out``.

  Args:
    n_in, n_out: inputs and outputs.
    channels: every convolution's output channels (25 in the repository).
    init: the Conv1d and Dense layers' init scheme (PyTorch's default).
    **kw: ``output`` and ``loss`` of :class:`fnn.Sequential`.
  """
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


def _ints(token: str, parts: list[str], lo: int, hi: int,
          form: str) -> list[int]:
  if not lo <= len(parts) <= hi:
    want = f"{lo}" if lo == hi else f"{lo} to {hi}"
    raise ValueError(f"layer {token!r} needs {want} integer"
                     f"{'s' if hi > 1 else ''} after the name ({form})")
  try:
    return [int(p) for p in parts]
  except ValueError:
    raise ValueError(f"layer {token!r} has a non-integer argument "
                     f"({form})") from None


def _names() -> list[str]:
  return ["dense", "conv1d", "layernorm", "flatten", "res",
          *act_lib.ACTIVATIONS]


def _unknown(token: str) -> ValueError:
  import difflib
  name = token.split(":", 1)[0].split("(", 1)[0].strip().lower()
  close = difflib.get_close_matches(name, _names(), n=3, cutoff=0.6)
  hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
  return ValueError(f"unknown layer {token!r} in architecture spec{hint}; "
                    f"{SPEC_SHORT}")


def _layer(token: str, init: str):
  r"""One spec token (not a ``res(...)`` group) to a layer."""
  name, *parts = token.split(":")
  name = name.strip().lower()
  if name == "dense":
    (n,) = _ints(token, parts, 1, 1, "dense:N")
    return L.Dense(n, init=init)
  if name == "conv1d":
    args = _ints(token, parts, 2, 4, "conv1d:C:K[:STRIDE[:PAD]]")
    return L.Conv1d(*args, init=init)
  if name == "layernorm":
    if len(parts) > 1:
      raise ValueError(f"layer {token!r} takes at most one number "
                       f"(layernorm[:EPS])")
    try:
      eps = float(parts[0]) if parts else 1e-5
    except ValueError:
      raise ValueError(f"layer {token!r}: EPS must be a number") from None
    return L.LayerNorm(eps)
  if name == "flatten" and not parts:
    return L.Flatten()
  if name in act_lib.ACTIVATIONS and not parts:
    return L.Activation(name)
  raise _unknown(token)


def parse_layers(spec: str, init: str = SPEC_INIT) -> list:
  r"""A spec string (grammar in the module docstring) to a list of layers.

  No output layer is appended (:func:`build` does that).

  Args:
    spec: e.g. ``"conv1d:25:5:2:1,relu,flatten,dense:10"``.
    init: the init scheme of its Dense and Conv1d layers.

  Raises:
    ValueError: an empty spec or layer, an unknown layer name, a wrong
      number of arguments or a bad value (e.g. stride 0), unbalanced
      parentheses; the message names the token.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"architecture spec must be a non-empty string; "
                     f"{SPEC_SHORT}")
  layers = []
  for token in _split(spec):
    if not token:
      raise ValueError(f"empty layer in architecture spec {spec!r} (two "
                       f"commas, or a comma at an end)")
    if token.lower().startswith("res(") and token.endswith(")"):
      inner = token[4:-1]
      if not inner.strip():
        raise ValueError(f"layer {token!r}: a residual block needs at least "
                         f"one layer, e.g. res(dense:100,relu)")
      layers.append(L.Residual(*parse_layers(inner, init)))
      continue
    if "(" in token or ")" in token:
      raise _unknown(token)
    try:
      layers.append(_layer(token, init))
    except ValueError as e:
      if str(e).startswith(("layer ", "unknown layer ")):
        raise
      raise ValueError(f"layer {token!r}: {e}") from None
  return layers


def build(arch: str, n_in: int, n_out: int, *, hidden=(), activation="relu",
          output="softmax", loss="categorical_cross_entropy",
          init: str | None = None):
  r"""The model for ``--arch`` on data with ``n_in`` features, ``n_out``
  classes (or targets).

  Args:
    arch: ``"mlp"``, ``"resmlp"``, ``"cnn"`` or a spec string.
    n_in, n_out: one example's features and the outputs.
    hidden: ``mlp`` only: the hidden widths.
    activation: ``mlp`` only: the hidden activation.
    output, loss: the output activation and loss.
    init: the init scheme of a Sequential's Dense and Conv1d layers
      (default: ``pytorch`` for ``resmlp`` and ``cnn``, ``he`` for a spec).
      An :class:`fnn.MLP` draws its scheme at ``init`` time, so it is not
      used for ``mlp``.

  Returns:
    ``fnn.MLP((n_in, *hidden, n_out), activation, ...)`` for ``mlp``; a
    :class:`fnn.Sequential` over one example's ``(n_in,)`` otherwise.

  Raises:
    ValueError: an unknown name, a bad spec, shapes that do not chain
      (naming the layer and both shapes), or a last dense layer whose size
      is not ``n_out``.
  """
  kw = dict(output=output, loss=loss)
  if not isinstance(arch, str):
    raise TypeError(f"arch must be a string, got {type(arch).__name__}")
  if arch == "mlp":
    return MLP((n_in, *hidden, n_out), activation=activation, **kw)
  # Names first (their errors need no prefix), then the layers' shapes.
  output_and_loss(output, loss, n_out, f"n_out={n_out}")
  if arch in NAMED_INIT:
    make = resmlp if arch == "resmlp" else cnn
    layers = None
  else:
    layers = parse_layers(arch, init or SPEC_INIT)
    if not isinstance(layers[-1], L.Dense):
      layers.append(L.Dense(n_out, init=init or SPEC_INIT))
  try:
    if layers is None:
      model = make(n_in, n_out, init=init or NAMED_INIT[arch], **kw)
    else:
      model = Sequential((n_in,), layers, **kw)
  except ValueError as e:  # shapes that do not chain, a bad init or loss
    raise ValueError(f"--arch {arch!r} on {n_in} inputs: {e}") from None
  if model.n_out != n_out:
    raise ValueError(f"--arch {arch!r} ends in dense:{model.n_out}, but the "
                     f"data need {n_out} outputs (end it in dense:{n_out}, "
                     f"or leave the last dense out)")
  return model


def describe(model) -> str:
  r"""One line: ``MLP 40-512-10``, or a Sequential as the spec that builds
  it (``conv1d:25:5:2:1,relu,...,dense:10``; init schemes are not shown)."""
  if isinstance(model, MLP):
    return f"MLP {'-'.join(map(str, model.sizes))}"
  return spec(model.layers)


def spec(layers) -> str:
  r"""Layers as a spec string (:func:`parse_layers` reads it back for the
  layer types of :mod:`fnn.layers`; another layer shows as its repr)."""
  return ",".join(_short(l) for l in layers)


def _short(layer) -> str:
  if isinstance(layer, L.Residual):
    return f"res({spec(layer.layers)})"
  if isinstance(layer, L.Activation):
    return layer.name
  if isinstance(layer, L.Dense):
    return f"dense:{layer.n_out}"
  if isinstance(layer, L.Conv1d):
    return (f"conv1d:{layer.out_channels}:{layer.kernel_size}:{layer.stride}:"
            f"{layer.padding}")
  if isinstance(layer, L.LayerNorm):
    return "layernorm" if layer.eps == 1e-5 else f"layernorm:{layer.eps:g}"
  if isinstance(layer, L.Flatten):
    return "flatten"
  return repr(layer)

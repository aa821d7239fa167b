r"""Memory: refuse a run that cannot fit before allocating it.

``fnn train --hidden 100000,100000`` used to die with a traceback (or abort
inside XLA) when it allocated ten billion parameters. :func:`check_fits`
estimates what training needs from the model's sizes alone (no array is made)
and raises a one-line ``ValueError`` when it clearly exceeds the memory there
is; :func:`resource_error_message` turns the out-of-memory errors that get past
it into one line.

The estimate, in bytes, for layer widths ``sizes = (n_0, ..., n_L)``,
``P = sum_l (n_{l-1} n_l + n_l)`` parameters, ``H = n_1 + ... + n_L`` units,
batch size ``B``, ``d`` bytes per value and ``s`` optimizer slots::

    (2 + s) * P * d                       params, gradients, optimizer state
  + B * (n_0 + 2 H) * d                   a batch's input, z and a per layer
  + B * (n_0 + ... + n_{L-1} + H) * d     per-example factors (a_prev, delta)
  + (n_train + n_test) * (n_0 * d + 4)    the dataset (features, int32 labels)

Any other network (a :class:`fnn.Sequential`) is estimated the same way from
its :meth:`~fnn.Sequential.parameter_count` and one example's shape before
and after every top-level layer (``|s|`` values in shape ``s``)::

  P = model.parameter_count()
  forward = n_0 + sum_l |out_l| + n_out   every layer's output, and the
                                          output activation's
  factors = sum_{l with params} |in_l| + |out_l|     (a_prev, delta)

which for the layers of an MLP (``Dense, Activation, ..., Dense``) is
exactly the formula above (``2 H`` and ``n_0 + ... + n_{L-1} + H``). What
the hand backward keeps inside a layer (a convolution's patches, a residual
block's inner outputs) is left out.

It is a lower bound: XLA's temporaries, the compiled program, a second copy of
the state during an update and per-example gradients materialized by autodiff
(``B * P``) are left out, so only clearly impossible runs are refused; a run
that passes may still run out of memory, and then fails with the one line of
:func:`resource_error_message`.

The memory compared against is host RAM when JAX runs on the CPU (the smaller
of ``MemAvailable`` in ``/proc/meminfo``, or ``SC_AVPHYS_PAGES`` pages, and a
cgroup's memory limit), and ``bytes_limit`` of ``memory_stats()`` of the first
device on an accelerator (host RAM where the backend reports none).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import jax

# Optimizer state per parameter, in values: Adam's mu and nu, the momentum
# trace, nothing for plain SGD.
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}

# How many exceptions along ``__cause__`` are searched for an out-of-memory
# error: a loader or trainer may wrap it once or twice, never deeper.
_CAUSE_DEPTH = 5
_MESSAGE_LIMIT = 200  # characters: one terminal line and a bit
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory")
_XLA_ERRORS = ("XlaRuntimeError", "JaxRuntimeError")


class Available(NamedTuple):
  r"""Memory a run may use: ``n_bytes`` (``None`` if unknown), ``where``."""
  n_bytes: int | None
  where: str


def parameter_count(sizes: Sequence[int]) -> int:
  r"""``sum_l (n_{l-1} n_l + n_l)``: weights and biases of a dense stack."""
  return sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


class Footprint(NamedTuple):
  r"""What the estimate needs of a network, in values (not bytes).

  Attributes:
    label: how messages name it: the sizes of a dense stack, else the
      layers as a spec (:func:`fnn.arch.describe`).
    parameters: ``P``.
    n_in: one example's input values ``n_0``.
    forward: one example's values kept by the forward (input included).
    factors: one example's per-layer factors ``(a_prev, delta)``.
  """
  label: str
  parameters: int
  n_in: int
  forward: int
  factors: int


def _prod(shape) -> int:
  out = 1
  for n in shape:
    out *= int(n)
  return out


def footprint(net) -> Footprint:
  r"""The :class:`Footprint` of layer widths, an :class:`fnn.MLP` or any
  network with ``shapes``, ``layers`` and ``parameter_count()`` (a
  :class:`fnn.Sequential`); see the module docstring.

  Raises:
    ValueError: widths that are not at least 2 positive ints.
  """
  if hasattr(net, "sizes"):
    net = net.sizes
  if not hasattr(net, "shapes"):
    sizes = tuple(int(n) for n in net)
    if len(sizes) < 2 or min(sizes) < 1:
      raise ValueError(f"sizes must be at least 2 positive widths, got "
                       f"{sizes}")
    units = sum(sizes[1:])
    return Footprint(str(sizes), parameter_count(sizes), sizes[0],
                     sizes[0] + 2 * units, sum(sizes[:-1]) + units)
  from fnn import arch  # a label for a Sequential; JAX is already loaded
  sizes = [_prod(s) for s in net.shapes]
  factors = sum(a + b for layer, shape, a, b in zip(
      net.layers, net.shapes, sizes[:-1], sizes[1:])
                if layer.param_shapes(shape) != ())
  return Footprint(arch.describe(net), int(net.parameter_count()), sizes[0],
                   sum(sizes) + sizes[-1], factors)


def training_bytes(net, *, batch_size: int, dtype_bytes: int,
                   optimizer_slots: int, n_train: int, n_test: int) -> int:
  r"""The lower-bound estimate of the module docstring, in bytes.

  Args:
    net: layer widths ``(n_0, ..., n_L)``, input first, or a model (see
      :func:`footprint`).
    batch_size: examples per step ``B``.
    dtype_bytes: bytes per parameter and activation ``d`` (4 for float32).
    optimizer_slots: optimizer values per parameter ``s``
      (:data:`OPTIMIZER_SLOTS`).
    n_train, n_test: examples in each split.

  Returns:
    The estimate, a Python int (exact: no float rounding for huge models).
  """
  f = footprint(net)
  d = int(dtype_bytes)
  state = (2 + int(optimizer_slots)) * f.parameters * d
  forward = batch_size * f.forward * d
  factors = batch_size * f.factors * d
  dataset = (n_train + n_test) * (f.n_in * d + 4)
  return state + forward + factors + dataset


def _meminfo_available() -> int | None:
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024  # the kernel writes kB
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (AttributeError, OSError, ValueError):
    return None


def _cgroup_limit() -> int | None:
  # The limit, not limit - usage: usage counts reclaimable page cache, and
  # only clearly impossible runs are to be refused.
  for path in ("/sys/fs/cgroup/memory.max",
               "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path, encoding="ascii") as f:
        text = f.read().strip()
    except OSError:
      continue
    if text.isdigit() and int(text) < 1 << 60:  # v1 writes ~2**63 for none
      return int(text)
  return None


def host_available() -> Available:
  r"""Host RAM available now (``None`` bytes where the OS does not say)."""
  known = [b for b in (_meminfo_available(), _cgroup_limit()) if b is not None]
  return Available(min(known) if known else None, "host RAM")


def available_bytes() -> Available:
  r"""Memory for one training run on JAX's default backend.

  Returns:
    ``bytes_limit`` of the first device's ``memory_stats()`` on an accelerator
    that reports it, else :func:`host_available`.
  """
  backend = jax.default_backend()
  if backend != "cpu":
    try:
      stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends differ in what they implement
      stats = {}
    if stats.get("bytes_limit"):
      return Available(int(stats["bytes_limit"]), f"{backend.upper()} memory")
  return host_available()


def format_bytes(n: float) -> str:
  r"""``160.1 GB``: decimal units (1 GB = 10**9 bytes), one decimal."""
  if abs(n) < 1000:
    return f"{n:.0f} B"
  for unit in ("kB", "MB", "GB", "TB"):
    n /= 1000
    if abs(n) < 1000:
      return f"{n:.1f} {unit}"
  return f"{n / 1000:.1f} PB"


def check_fits(net, *, batch_size: int, dtype_bytes: int,
               optimizer_slots: int, n_train: int, n_test: int,
               what: str = "model", detail: str | None = None,
               available: Available | None = None) -> int:
  r"""Refuses a training run whose estimate exceeds the available memory.

  Nothing is allocated: the estimate is :func:`training_bytes`, in Python
  integers, so a model of 10**12 parameters is refused in microseconds.

  Args:
    net: layer widths ``(n_0, ..., n_L)``, input first, or a model
      (:class:`fnn.MLP`, :class:`fnn.Sequential`; see :func:`footprint`).
    batch_size: examples per step.
    dtype_bytes: bytes per value (4 for float32, 8 for float64).
    optimizer_slots: values of optimizer state per parameter
      (:data:`OPTIMIZER_SLOTS`: adam 2, momentum 1, sgd 0).
    n_train, n_test: examples in each split.
    what: the noun that starts the message (``"model"``).
    detail: what the estimate assumed, for the message, e.g.
      ``"float32, adam"``; by default the byte width and slot count.
    available: the memory to compare with; :func:`available_bytes` if None.

  Returns:
    The estimated bytes.

  Raises:
    ValueError: the estimate exceeds the available memory, e.g. ``model (40,
      100000, 100000, 10) has 10,005,200,010 parameters; training needs about
      160.5 GB (float32, adam) but 20.3 GB of host RAM is available``.
  """
  try:
    f = footprint(net)
  except ValueError as e:
    raise ValueError(f"{what} {e}") from None
  needed = training_bytes(net, batch_size=batch_size, dtype_bytes=dtype_bytes,
                          optimizer_slots=optimizer_slots, n_train=n_train,
                          n_test=n_test)
  available = available_bytes() if available is None else available
  if available.n_bytes is not None and needed > available.n_bytes:
    if detail is None:
      detail = (f"{dtype_bytes}-byte values, {optimizer_slots} optimizer "
                f"slot{'s' if optimizer_slots != 1 else ''}")
    raise ValueError(
        f"{what} {f.label} has {f.parameters:,} parameters; training "
        f"needs about {format_bytes(needed)} ({detail}) but "
        f"{format_bytes(available.n_bytes)} of {available.where} is "
        f"available")
  return needed


def _one_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  line = lines[0] if lines else ""
  if len(line) > _MESSAGE_LIMIT:
    line = line[:_MESSAGE_LIMIT - 3] + "..."
  return line


def _is_xla_error(exc: BaseException) -> bool:
  return any(t.__name__ in _XLA_ERRORS for t in type(exc).__mro__)


def resource_error_message(exc: BaseException) -> str | None:
  r"""One line for an out-of-memory error, or None for any other error.

  Recognized: ``MemoryError`` (NumPy's ``Unable to allocate ...``, Python's
  own), and XLA's runtime errors (``XlaRuntimeError``, ``JaxRuntimeError``)
  whose message holds ``RESOURCE_EXHAUSTED`` or ``Out of memory``; also when
  one of them is the ``__cause__`` of ``exc`` (a wrapper raised ``from`` it).

  Args:
    exc: the exception caught.

  Returns:
    The first non-empty line of the error's message, at most 200 characters
    (``MemoryError: ...`` for a MemoryError), or None.
  """
  for _ in range(_CAUSE_DEPTH):
    if exc is None:
      return None
    if isinstance(exc, MemoryError):
      return _one_line(f"MemoryError: {exc}" if str(exc) else
                       "MemoryError: out of host memory")
    if _is_xla_error(exc):
      text = str(exc)
      if any(m.lower() in text.lower() for m in _OOM_MARKERS):
        return _one_line(text) or "RESOURCE_EXHAUSTED: out of memory"
    exc = exc.__cause__
  return None

r"""Data parallelism with ``jax.sharding``: a ``data`` mesh axis, nothing more.

fnn does not add a scheme of its own. A batch is sharded over the ``data``
axis of a :class:`jax.sharding.Mesh`, parameters and optimizer state are
replicated, and ``jax.jit`` (GSPMD) partitions the computation: every
device runs the per-example backward on its own examples, and the
contraction over the batch (``a_prev.T @ delta`` for the mean gradient, the
sums of the statistics) becomes a local matmul plus an all-reduce that XLA
inserts. So the hand-derived functions are unchanged and stay exactly as
correct when sharded (tests compare them with the single-device results).

Across hosts, start one process per host with :func:`initialize` (a thin
wrapper of ``jax.distributed.initialize``); :func:`make_mesh` then spans
every process's devices, and :func:`global_array` builds the global arrays
from the data each process holds (see ``scripts/multihost.py``).

Example::

  mesh = fnn.parallel.make_mesh()                  # all devices
  params = fnn.parallel.replicate(mesh, params)
  x, y = fnn.parallel.shard_batch(mesh, x, y)      # batch % devices == 0
  grads = jax.jit(fnn.grad, static_argnums=0)(model, params, x, y)
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices: Union[None, int, Sequence] = None) -> Mesh:
  r"""A one-axis mesh named ``data``.

  Args:
    devices: ``None`` for every device (of every process), an int ``N`` for
      the first ``N`` of them, or a sequence of devices.

  Raises:
    ValueError: ``N`` below 1 or above the number of devices.
  """
  available = jax.devices()
  if devices is None:
    chosen = available
  elif isinstance(devices, (int, np.integer)) and not isinstance(devices,
                                                                 bool):
    if not 1 <= devices <= len(available):
      raise ValueError(f"devices must be in [1, {len(available)}] (the "
                       f"devices present: {len(available)}), got {devices}")
    chosen = available[:devices]
  else:
    chosen = list(devices)
    if not chosen:
      raise ValueError("devices must not be empty")
  return Mesh(np.array(chosen), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  r"""Leading (batch) axis split over ``data``, the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  r"""The whole array on every device."""
  return NamedSharding(mesh, P())


def check_divisible(mesh: Mesh, batch: int, what: str = "batch size") -> None:
  r"""Raises ValueError unless ``batch`` splits evenly over the devices."""
  n = mesh.size
  if batch % n:
    raise ValueError(f"{what} {batch} does not divide evenly over {n} "
                     f"devices; use a multiple of {n} (e.g. "
                     f"{max(n, batch - batch % n)})")


def shard_batch(mesh: Mesh, *arrays):
  r"""Places arrays with a leading batch axis split over ``data``.

  Raises:
    ValueError: a leading axis that does not divide by the device count.
  """
  out = []
  for a in arrays:
    check_divisible(mesh, int(np.shape(a)[0]))
    out.append(global_array(mesh, a, batch_sharding(mesh)))
  return out[0] if len(out) == 1 else tuple(out)


def replicate(mesh: Mesh, tree):
  r"""Places every leaf of ``tree`` whole on every device of ``mesh``."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda a: global_array(mesh, a, sharding), tree)


def global_array(mesh: Mesh, value, sharding: Optional[NamedSharding] = None):
  r"""A global ``jax.Array`` from a value every process holds in full.

  Single-process this is ``jax.device_put``; with several processes each
  one fills the shards of its own devices from its (identical) copy, which
  is how the trainer's replicated datasets become global arrays.
  """
  sharding = replicated(mesh) if sharding is None else sharding
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  if jax.dtypes.issubdtype(getattr(value, "dtype", None), jax.dtypes.prng_key):
    impl = jax.random.key_impl(value)  # typed keys travel as their data
    return jax.random.wrap_key_data(
        global_array(mesh, jax.random.key_data(value), sharding), impl=impl)
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding,
                                      lambda index: value[index])


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
  r"""Joins a multi-process run (one process per host): a thin wrapper of
  ``jax.distributed.initialize`` that also selects gloo collectives on the
  CPU, where JAX needs them for cross-process all-reduces."""
  # Before any backend starts (jax.distributed must come first); the option
  # only affects the CPU backend.
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # a JAX without it: its default
    pass
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes,
                             process_id=process_id)

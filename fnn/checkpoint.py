r"""Safe checkpoints: atomic ``.npz`` files, never pickle.

A checkpoint holds a :class:`fnn.train.TrainState` (params, optimizer state,
step, key) and a JSON-able run configuration. The arrays are the state's
leaves in ``jax.tree`` order; a JSON header records their shapes, dtypes and
a SHA-256 of their bytes. Loading needs a template state of the same
structure (built from the saved configuration) and checks every leaf, so a
truncated, corrupted or mismatched file raises ``ValueError`` and is left
untouched.

Writes go to a temporary file in the same directory, are flushed and
fsync'ed, then renamed over the target: a crash leaves the old checkpoint or
the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile

import jax
import numpy as np

FORMAT = "fnn-checkpoint-1"


def _digest(arrays) -> str:
  h = hashlib.sha256()
  for a in arrays:
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _leaves(state):
  state = state._replace(key=jax.random.key_data(state.key))
  return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def atomic_write_bytes(path: str, write) -> None:
  r"""Calls ``write(fileobj)`` on a temp file, then renames it to ``path``."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save(path: str, state, config: dict) -> None:
  r"""Writes ``state`` and ``config`` to ``path`` atomically."""
  leaves = _leaves(state)
  header = dict(format=FORMAT, config=config, num_leaves=len(leaves),
                shapes=[list(a.shape) for a in leaves],
                dtypes=[str(a.dtype) for a in leaves], sha256=_digest(leaves))
  arrays = {f"leaf_{i:04d}": a for i, a in enumerate(leaves)}
  arrays["header"] = np.array(json.dumps(header))
  atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def read_config(path: str) -> dict:
  r"""The run configuration stored in a checkpoint (header only)."""
  return _read(path)[0]["config"]


def _read(path: str):
  if not os.path.exists(path):
    raise ValueError(f"checkpoint {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as f:
      header = json.loads(str(f["header"]))
      leaves = [f[f"leaf_{i:04d}"] for i in range(header["num_leaves"])]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
          json.JSONDecodeError) as e:
    raise ValueError(f"checkpoint {path} is corrupted or truncated "
                     f"({type(e).__name__}: {e}); it was left as is") from e
  if header.get("format") != FORMAT:
    raise ValueError(f"checkpoint {path} has format {header.get('format')!r}, "
                     f"expected {FORMAT!r}")
  if _digest(leaves) != header["sha256"]:
    raise ValueError(f"checkpoint {path} is corrupted (checksum mismatch); it "
                     f"was left as is")
  return header, leaves


def load(path: str, template):
  r"""Reads a checkpoint into the structure of ``template`` (a TrainState).

  Returns:
    ``(state, config)``.

  Raises:
    ValueError: missing, corrupted, truncated or mismatched checkpoint.
  """
  header, leaves = _read(path)
  typed_key = template.key
  template = template._replace(key=jax.random.key_data(template.key))
  want = jax.tree.leaves(template)
  if len(want) != len(leaves):
    raise ValueError(f"checkpoint {path} has {len(leaves)} arrays, this run's "
                     f"state has {len(want)}: it belongs to another model or "
                     f"optimizer")
  for i, (w, got) in enumerate(zip(want, leaves)):
    if tuple(np.shape(w)) != got.shape or np.asarray(w).dtype != got.dtype:
      raise ValueError(
          f"checkpoint {path} array {i} is {got.dtype}{list(got.shape)}, this "
          f"run expects {np.asarray(w).dtype}{list(np.shape(w))}")
  treedef = jax.tree.structure(template)
  state = jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in leaves])
  key = jax.random.wrap_key_data(state.key,
                                 impl=jax.random.key_impl(typed_key))
  return state._replace(key=key), header["config"]

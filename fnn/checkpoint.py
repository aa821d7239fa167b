r"""Safe checkpoints: atomic ``.npz`` files, never pickle.

A checkpoint holds a :class:`fnn.train.TrainState` (params, optimizer state,
step, key), a JSON-able run configuration and a JSON-able ``meta`` dict (the
trainer keeps the epoch and a data fingerprint there). The arrays are the
state's leaves in ``jax.tree`` order, stored as ``leaf_0000.npy``, ... in an
uncompressed zip; a JSON header ``header.npy`` records their number, shapes
and dtypes, the configuration, ``meta`` and a SHA-256 digest.

Format ``fnn-checkpoint-2`` (written now): the digest covers the header's
canonical JSON (``sort_keys``, everything but the digest: configuration,
``meta``, shapes, dtypes) and then every array's dtype, shape and bytes, so an
edited ``"lr"`` is caught like a flipped bit. Format ``fnn-checkpoint-1``
(fnn before ``meta``) is still read: its digest covers the arrays only, so an
edit of its configuration cannot be detected; it loads with ``meta == {}``.

Reading checks, before building anything: that the path is a regular file
(a FIFO would block forever), that the header has every field with the right
type, that the file holds exactly the arrays the header lists, that each
array's own shape and dtype match the header (before its data is read, so a
damaged shape cannot ask for terabytes), then the digest. Loading also
compares each leaf with a template state of the same structure. A truncated,
corrupted or mismatched file raises ``ValueError`` and is left untouched.

Writes go through :func:`fnn._fs.atomic_write_bytes`: a temporary file in
the same directory, flushed and fsync'ed, then renamed over the target. A
crash leaves the old checkpoint or the new one, never half of one; a full or
read-only disk raises ``ValueError`` and leaves no temporary file.

What a save costs, for MNIST-1D's default MLP (288,778 parameters and two
Adam moments: a 3.6 MB file) on a 2-core VM: about 10 ms without the fsyncs,
mostly the zip (its CRC-32 and the write, ~5 ms) and the SHA-256 (~3 ms),
then the header's canonical JSON (it holds every epoch's metrics; encoded
once, and plain data skips the round trip that normalizes it), and the
rename. The file's blocks are reserved before it is written
(:func:`fnn._fs.preallocate`), which spares ext4's flush of a file renamed
over another (~4 ms). The two fsyncs add ~3 ms. ``fnn train`` paces its
saves so that they take at most 5% of a run (``fnn.run._Run.save``).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile

import jax
import numpy as np

from fnn import _fs
from fnn._fs import atomic_write_bytes  # re-exported: callers use checkpoint.

__all__ = ["FORMAT", "FORMAT_1", "atomic_write_bytes", "load",
           "load_with_header", "read_config", "read_header", "save"]

FORMAT = "fnn-checkpoint-2"
FORMAT_1 = "fnn-checkpoint-1"  # read only: arrays-only digest, no meta
# A header is a few kB (a config and one shape per leaf); anything near this
# bound is damage, not a checkpoint.
_MAX_HEADER_BYTES = 1 << 24
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Corrupted(Exception):
  r"""A damaged checkpoint; the message says which part is wrong."""


def _canonical(obj) -> str:
  r"""The canonical JSON of ``obj``: sorted keys, no spaces, ASCII only."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                    ensure_ascii=True)


def _digest(arrays, header: dict | None = None) -> str:
  r"""SHA-256 of the header (format 2; ``None`` for format 1) and arrays."""
  body = None
  if header is not None:
    body = _canonical({k: v for k, v in header.items() if k != "sha256"})
  return _digest_text(arrays, body)


def _digest_text(arrays, body: str | None) -> str:
  r"""SHA-256 of a header's canonical JSON ``body`` (or none) and arrays."""
  h = hashlib.sha256()
  if body is not None:
    # ensure_ascii: the canonical JSON holds no NUL, so b"\0" separates it
    # from the array bytes unambiguously.
    h.update(body.encode() + b"\0")
  for a in arrays:
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    # The bytes in C order, without a copy (hashlib reads the buffer).
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
  return h.hexdigest()


def _leaves(state):
  state = state._replace(key=jax.random.key_data(state.key))
  return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


_SCALARS = frozenset((str, int, float, bool, type(None)))
_MAX_PLAIN_DEPTH = 16


def _plain(value, _open: set | None = None) -> bool:
  r"""Whether ``value`` is plain JSON data: dicts with ``str`` keys, lists,
  tuples, ``str``, ``int``, ``float``, ``bool`` and ``None``, nested at most
  16 deep, without cycles. Its canonical JSON then equals that of what JSON
  reads back (a tuple is written as a list, a ``float`` subclass as a
  ``float``), and the round trip can be skipped."""
  if not isinstance(value, (dict, list, tuple)):
    return isinstance(value, (str, int, float)) or value is None
  active = set() if _open is None else _open  # the containers above value
  if id(value) in active or len(active) >= _MAX_PLAIN_DEPTH:
    return False
  active.add(id(value))
  try:
    if isinstance(value, dict):
      for k, v in value.items():
        if type(k) is not str or (type(v) not in _SCALARS
                                  and not _plain(v, active)):
          return False
    else:
      for v in value:
        if type(v) not in _SCALARS and not _plain(v, active):
          return False
    return True
  finally:
    active.discard(id(value))


def _json_dict(value, name: str) -> dict:
  r"""``value`` as it reads back from JSON (tuples become lists, ...), or
  ``value`` itself where that encodes the same (:func:`_plain`): a run's
  ``meta`` holds every epoch's metrics, and the round trip was a tenth of a
  save."""
  if not isinstance(value, dict):
    raise TypeError(f"checkpoint {name} must be a dict, got "
                    f"{type(value).__name__}")
  if _plain(value):
    return value
  try:
    return json.loads(json.dumps(value))
  except (TypeError, ValueError) as e:
    raise TypeError(f"checkpoint {name} must be JSON-able: {e}") from None


def save(path: str, state, config: dict, meta: dict | None = None) -> None:
  r"""Writes ``state``, ``config`` and ``meta`` to ``path`` atomically.

  Args:
    path: the ``.npz`` file to create or replace.
    state: a :class:`fnn.train.TrainState`.
    config: the JSON-able run configuration (stored as JSON reads it back:
      tuples become lists).
    meta: JSON-able facts about the run (epoch, data fingerprint); ``{}``
      when ``None``.

  Raises:
    TypeError: ``config`` or ``meta`` is not a JSON-able dict.
    ValueError: the file cannot be written (full disk, read-only
      filesystem, missing permission, ``path`` is a directory or a FIFO);
      the old checkpoint, if any, is left as is.
  """
  leaves = _leaves(state)
  header = dict(format=FORMAT, config=_json_dict(config, "config"),
                meta=_json_dict({} if meta is None else meta, "meta"),
                num_leaves=len(leaves),
                shapes=[list(a.shape) for a in leaves],
                dtypes=[str(a.dtype) for a in leaves])
  body = _canonical(header)
  # The stored header is the canonical body with the digest added (the
  # reader parses it and canonicalizes the body again): one encoding less.
  text = f'{body[:-1]},"sha256":"{_digest_text(leaves, body)}"}}'
  arrays = {f"leaf_{i:04d}": a for i, a in enumerate(leaves)}
  arrays["header"] = np.array(text)
  # np.savez adds ~250 bytes per member (zip64 headers, npy header).
  size = sum(a.nbytes for a in arrays.values()) + 512 * len(arrays) + 4096

  def write(f):
    _fs.preallocate(f, size)
    np.savez(f, **arrays)
    f.truncate()  # to what was written: np.savez ends at the file's end

  atomic_write_bytes(path, write)


def read_header(path: str) -> dict:
  r"""The verified header of a checkpoint.

  The whole file is checked (header fields, arrays, digest) before the
  header is returned; nothing is built.

  Returns:
    ``dict(format=..., config=..., meta=...)``; ``meta`` is ``{}`` for a
    format-1 file.

  Raises:
    ValueError: missing, not a regular file, unreadable, truncated or
      corrupted checkpoint.
  """
  return _public(_read(path)[0])


def read_config(path: str) -> dict:
  r"""The run configuration stored in a checkpoint (verified, see read_header).

  Raises:
    ValueError: as :func:`read_header`.
  """
  return read_header(path)["config"]


def _public(header: dict) -> dict:
  return dict(format=header["format"], config=header["config"],
              meta=header.get("meta", {}))


def _read(path: str):
  r"""``(header, leaves)`` of a verified checkpoint; ValueError otherwise."""
  size = _fs.check_regular_file(path, "checkpoint").st_size
  try:
    with zipfile.ZipFile(path) as z:
      header = _read_header(z, size)
      leaves = _read_leaves(z, header, size)
  except _Corrupted as e:
    raise ValueError(f"checkpoint {path} is corrupted: {e}; it was left as "
                     f"is") from None
  except OSError as e:
    if e.errno is not None:  # EIO, EACCES: the disk, not the file
      raise ValueError(f"cannot read checkpoint {path}: "
                       f"{e.strerror or e}") from None
    raise ValueError(f"checkpoint {path} is corrupted or truncated "
                     f"({type(e).__name__}: {e}); it was left as is") from e
  except (ValueError, KeyError, EOFError, zipfile.BadZipFile,
          NotImplementedError, RuntimeError) as e:
    # zipfile raises NotImplementedError for an unknown compression and
    # RuntimeError for an encrypted member.
    raise ValueError(f"checkpoint {path} is corrupted or truncated "
                     f"({type(e).__name__}: {e}); it was left as is") from e
  if header["format"] == FORMAT:
    digest = _digest(leaves, header)
    what = "the arrays or the header (config, meta) were changed"
  else:
    digest = _digest(leaves)
    what = "the arrays were changed"
  if digest != header["sha256"]:
    raise ValueError(f"checkpoint {path} is corrupted: checksum mismatch "
                     f"({what}); it was left as is")
  if header["format"] == FORMAT_1:
    header = dict(header, meta={})
  return header, leaves


def _member(z: zipfile.ZipFile, name: str, file_size: int) -> zipfile.ZipInfo:
  try:
    info = z.getinfo(name)
  except KeyError:
    raise _Corrupted(f"it lacks the array {name!r}") from None
  # np.savez stores members uncompressed: a member cannot be larger than the
  # file, and its declared size bounds what a damaged npy header may ask for.
  if info.compress_size > file_size or (
      info.compress_type == zipfile.ZIP_STORED
      and info.file_size != info.compress_size):
    raise _Corrupted(f"member {name!r} declares {info.file_size} bytes in a "
                     f"{file_size}-byte file")
  return info


def _npy_header(fp, name: str):
  r"""``(shape, fortran_order, dtype)`` from an npy stream, data unread."""
  version = np.lib.format.read_magic(fp)
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(fp)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(fp)
  raise _Corrupted(f"array {name!r} has npy version {version}, expected "
                   f"(1, 0) or (2, 0)")


def _read_header(z: zipfile.ZipFile, file_size: int) -> dict:
  info = _member(z, "header.npy", file_size)
  if info.file_size > _MAX_HEADER_BYTES:
    raise _Corrupted(f"its header is {info.file_size} bytes, more than "
                     f"{_MAX_HEADER_BYTES}")
  with z.open(info) as fp:
    shape, _, dtype = _npy_header(fp, "header")
    if shape != () or dtype.kind != "U":
      raise _Corrupted(f"its header is {dtype}{list(shape)}, expected a "
                       f"unicode string")
  with z.open(info) as fp:
    text = str(np.lib.format.read_array(fp, allow_pickle=False))
  try:
    header = json.loads(text)
  except ValueError as e:
    raise _Corrupted(f"its header is not JSON ({e})") from None
  _check_header(header)
  return header


def _check_header(header) -> None:
  r"""Checks every field of a format 1 or 2 header, with its type."""
  if not isinstance(header, dict):
    raise _Corrupted(f"its header is a JSON {type(header).__name__}, "
                     f"expected an object")
  if "format" not in header:
    raise _Corrupted("header lacks 'format'")
  fmt = header["format"]
  if fmt not in (FORMAT, FORMAT_1):
    raise _Corrupted(f"header has format {fmt!r}, expected {FORMAT!r} (or "
                     f"{FORMAT_1!r} of older fnn)")
  fields = dict(sha256=str, config=dict, num_leaves=int, shapes=list,
                dtypes=list)
  if fmt == FORMAT:
    fields["meta"] = dict
  for key, kind in fields.items():
    if key not in header:
      raise _Corrupted(f"header lacks {key!r}")
    value = header[key]
    if not isinstance(value, kind) or isinstance(value, bool):
      raise _Corrupted(f"header {key!r} is a {type(value).__name__}, "
                       f"expected a {kind.__name__}")
  if not _SHA256.fullmatch(header["sha256"]):
    raise _Corrupted(f"header 'sha256' is {header['sha256'][:80]!r}, expected "
                     f"64 hex digits")
  n = header["num_leaves"]
  if n < 0:
    raise _Corrupted(f"header 'num_leaves' is {n}")
  for key in ("shapes", "dtypes"):
    if len(header[key]) != n:
      raise _Corrupted(f"header lists {len(header[key])} {key} for "
                       f"{n} arrays")
  for i, (shape, dtype) in enumerate(zip(header["shapes"], header["dtypes"])):
    if not (isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0
        for d in shape)):
      raise _Corrupted(f"header shape {i} is {shape!r}, expected a list of "
                       f"sizes")
    if not isinstance(dtype, str):
      raise _Corrupted(f"header dtype {i} is {dtype!r}, expected a string")


def _read_leaves(z: zipfile.ZipFile, header: dict, file_size: int) -> list:
  n = header["num_leaves"]
  names = z.namelist()
  # Compare counts first: a damaged num_leaves of 10**9 must not loop.
  leaf_names = [m for m in names if m.startswith("leaf_")]
  if len(leaf_names) != n or len(names) != n + 1:
    raise _Corrupted(f"header lists {n} arrays, the file holds "
                     f"{len(leaf_names)} (members: {len(names)})")
  leaves = []
  for i, (shape, dtype) in enumerate(zip(header["shapes"], header["dtypes"])):
    name = f"leaf_{i:04d}.npy"
    info = _member(z, name, file_size)
    with z.open(info) as fp:
      got_shape, _, got_dtype = _npy_header(fp, name)
      if list(got_shape) != shape or str(got_dtype) != dtype:
        raise _Corrupted(f"array {i} is {got_dtype}{list(got_shape)}, its "
                         f"header says {dtype}{shape}")
      if got_dtype.hasobject:
        raise _Corrupted(f"array {i} holds Python objects")
      nbytes = math.prod(got_shape) * got_dtype.itemsize
      if nbytes > info.file_size:
        raise _Corrupted(f"array {i} needs {nbytes} bytes, its member holds "
                         f"{info.file_size}")
    with z.open(info) as fp:
      leaves.append(np.lib.format.read_array(fp, allow_pickle=False))
  return leaves


def load_with_header(path: str, template):
  r"""Reads a checkpoint into the structure of ``template`` (a TrainState).

  Returns:
    ``(state, header)``, ``header`` as :func:`read_header` returns it.

  Raises:
    ValueError: missing, not a regular file, corrupted, truncated or
      mismatched checkpoint (another model or optimizer).
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
  return state._replace(key=key), _public(header)


def load(path: str, template):
  r"""Reads a checkpoint into the structure of ``template`` (a TrainState).

  Returns:
    ``(state, config)``; :func:`load_with_header` also gives ``meta``.

  Raises:
    ValueError: missing, not a regular file, corrupted, truncated or
      mismatched checkpoint (another model or optimizer).
  """
  state, header = load_with_header(path, template)
  return state, header["config"]

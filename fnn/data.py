r"""Datasets, none downloaded at run time.

Every loader returns a :class:`Dataset` of numpy arrays: ``x: [n, d]`` float32
inputs standardized with the TRAINING split's mean and standard deviation
(applied to both splits; per feature for tabular sets, one for all features
for the signals and images of ``mnist1d`` and ``mnist-idx``), and ``y: [n]``
integer class labels.

Names accepted by :func:`load`:

- ``mnist1d``: the ``mnist1d`` package's ``make_dataset`` with its defaults
  (4,000 train / 1,000 test, seed 42), generated locally;
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), a fixed
  stratified split, 1,437 train / 360 test (``random_state=0``);
- ``xor``, ``moons``, ``circles``, ``spirals``: 2-D toy sets drawn from a key;
- ``mnist-idx:DIR``: the standard MNIST IDX files (plain or ``.gz``) in DIR;
- ``npz:PATH``: arrays ``x``, ``y``, ``x_test``, ``y_test`` from a user's
  file, read with ``allow_pickle=False``.

What a user's files must hold (anything else is a one-line ``ValueError``
naming the file or array, the offending value and what was expected):

- files: regular files (a FIFO, device or directory is refused before it is
  read, so ``npz:/dev/stdin`` or a named pipe cannot hang the run);
- ``x``, ``x_test``: real numbers, ``[n, features]`` with at least one
  feature; bool, integer and float dtypes are accepted (bool as 0/1);
  complex, string, bytes, object, structured and datetime dtypes are refused
  (casting them would drop an imaginary part or fail half-way). Every value is
  finite, and stays finite after standardization in float32: a test value
  1e39 standard deviations from the training mean is refused, not turned into
  ``inf``;
- ``y``, ``y_test``: class labels ``0..K-1``, shape ``[n]``, integer, bool or
  integral float dtype, with ``K <= MAX_CLASSES``. ``K`` is one more than the
  largest label of EITHER split, so a class that occurs only in the test split
  (or in neither, below the largest label) still gets an output unit: training
  only ever pushes that output down, and the test accuracy counts the class's
  examples as errors. The training split must hold at least 2 distinct classes.

Loaders return no validation split (``x_val = y_val = None``);
:func:`split_validation` takes a stratified one from the training split.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import numbers
import os
import re
import stat
import struct
import zlib
from typing import NamedTuple, Optional

import jax
import numpy as np


class Dataset(NamedTuple):
  r"""Train and test splits; ``x`` standardized, ``y`` integer labels.

  ``x_val, y_val``: an optional validation split taken from the training
  examples (:func:`split_validation`); ``None`` when there is none.
  """
  name: str
  x: np.ndarray
  y: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  x_val: Optional[np.ndarray] = None
  y_val: Optional[np.ndarray] = None


# Labels are class indices into the model's output units and the one-hot rows
# of a batch ([batch, K] logits, targets and output deltas; an [n_hidden, K]
# output layer). 100,000 is above any labeled set an MLP here is meant for
# (ImageNet-21k has 21,841 classes), keeps labels far below int32's wrap at
# 2**31, and refuses at once the usual accident: an ID column or a corrupt
# value (2**40) as a label, which used to size the output layer by itself.
MAX_CLASSES = 100_000

# Accepted dtype kinds: bool, signed and unsigned integers, floats.
_REAL_KINDS = "biuf"
# Features whose largest magnitude lies outside [2**-100, 2**100] are divided
# by a power of two before their mean and variance are taken: exact in binary
# floating point, so the result equals the unscaled formula's, but squares of
# 1e300 no longer overflow (nor squares of 1e-300 underflow). Other features
# take the plain path, bit for bit as before.
_SCALE_RANGE = (2.0 ** -100, 2.0 ** 100)


def _power_of_two_scale(magnitude):
  magnitude = np.asarray(magnitude, np.float64)
  _, exponent = np.frexp(magnitude)
  ordinary = ((magnitude >= _SCALE_RANGE[0]) & (magnitude <= _SCALE_RANGE[1])
              ) | (magnitude == 0) | ~np.isfinite(magnitude)
  return np.where(ordinary, 1.0, np.ldexp(1.0, exponent))


def _standardize64(x, x_test, per_feature):
  axis = 0 if per_feature else None
  # The outcome is checked by the caller (finite float32 or a ValueError), so
  # NumPy's overflow warnings would only repeat it, less precisely.
  with np.errstate(over="ignore", under="ignore", invalid="ignore",
                   divide="ignore"):
    scale = _power_of_two_scale(np.max(np.abs(x), axis=axis))
    x, x_test = x / scale, x_test / scale
    mean = x.mean(axis=axis)
    std = x.std(axis=axis)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std, (x_test - mean) / std


def standardize(x, x_test, per_feature: bool = True):
  r"""Scales both splits with the training split's statistics.

  ``z = (x - mean) / std`` with the mean and standard deviation of the
  training split ``x``, cast to float32.

  Args:
    x: ``[n, d]`` training features.
    x_test: ``[m, d]`` test features.
    per_feature: one mean and standard deviation per input feature (tabular
      data); otherwise one for all features (signals and images, where
      scaling each position separately would blow up near-constant
      positions). Features that are constant in training get a standard
      deviation of 1.

  Returns:
    ``(z, z_test)``, float32. A test value far outside the training range may
    be ``inf`` here; :func:`load` refuses such data.
  """
  z, z_test = _standardize64(np.asarray(x, np.float64),
                             np.asarray(x_test, np.float64), per_feature)
  with np.errstate(over="ignore"):
    return z.astype(np.float32), z_test.astype(np.float32)


def _check_real(name, what, arr):
  if arr.dtype.kind not in _REAL_KINDS:
    raise ValueError(f"{name}: {what} has dtype {arr.dtype}; expected real "
                     f"numbers (a bool, integer or float dtype)")


def _first(mask):
  return np.unravel_index(int(np.argmax(mask)), mask.shape)


def _features(name, what, arr):
  arr = np.asarray(arr)
  _check_real(name, what, arr)
  if arr.ndim != 2:
    raise ValueError(f"{name}: {what} must be 2-D [n, features], got shape "
                     f"{arr.shape}")
  with np.errstate(over="ignore"):  # float128 beyond float64: inf, refused
    arr = arr.astype(np.float64)
  bad = ~np.isfinite(arr)
  if bad.any():
    i, j = _first(bad)
    raise ValueError(f"{name}: {what} contains NaN or infinite values (first: "
                     f"{what}[{i}, {j}] = {arr[i, j]}); expected finite "
                     f"numbers")
  return arr


def _labels(name, what, arr, n):
  arr = np.asarray(arr)
  _check_real(name, what, arr)
  if arr.shape != (n,):
    raise ValueError(f"{name}: {what} must have shape ({n},), got {arr.shape}")
  expected = f"expected integer class labels 0..K-1, K <= {MAX_CLASSES:,}"
  if arr.dtype.kind == "f":
    with np.errstate(invalid="ignore"):
      bad = ~np.isfinite(arr) | (arr != np.round(arr))
    if bad.any():
      (i,) = _first(bad)
      raise ValueError(f"{name}: {what}[{i}] = {arr[i].item()!r}; {what} must "
                       f"hold integer class labels ({expected})")
  if arr.size and arr.min() < 0:
    (i,) = _first(arr < 0)
    raise ValueError(f"{name}: {what}[{i}] = {arr[i].item()!r} is a negative "
                     f"label; {expected}")
  too_big = arr >= MAX_CLASSES
  if too_big.any():
    (i,) = _first(too_big)
    raise ValueError(f"{name}: {what}[{i}] = {arr[i].item()!r} is not a class "
                     f"label; {expected} (fnn.data.MAX_CLASSES)")
  return arr.astype(np.int32)  # exact: 0 <= label < MAX_CLASSES < 2**31


def _check_standardized(name, what, raw, z64, z):
  bad = ~np.isfinite(z)
  if bad.any():
    i, j = _first(bad)
    raise ValueError(f"{name}: {what}[{i}, {j}] = {raw[i, j]:g} standardizes "
                     f"to {z64[i, j]:.4g} with the training split's mean and "
                     f"standard deviation, beyond float32's range (3.4e38); "
                     f"expected values within float32 after standardization")


def _finish(name, x, y, x_test, y_test, per_feature=True):
  x, x_test = _features(name, "x", x), _features(name, "x_test", x_test)
  if x.shape[1] != x_test.shape[1]:
    raise ValueError(f"{name}: x has {x.shape[1]} features but x_test has "
                     f"{x_test.shape[1]}")
  if x.shape[1] == 0:
    raise ValueError(f"{name}: x has 0 features; expected at least 1")
  y, y_test = _labels(name, "y", y, len(x)), _labels(name, "y_test", y_test,
                                                     len(x_test))
  if len(x) == 0 or len(x_test) == 0:
    raise ValueError(f"{name}: empty split (train {len(x)}, test {len(x_test)})")
  present = np.unique(y)
  if len(present) < 2:
    raise ValueError(f"{name}: the training labels y hold only class "
                     f"{int(present[0])}; training needs at least 2 classes")
  num_classes = int(max(y.max(), y_test.max())) + 1
  z64, z64_test = _standardize64(x, x_test, per_feature)
  with np.errstate(over="ignore"):
    z, z_test = z64.astype(np.float32), z64_test.astype(np.float32)
  _check_standardized(name, "x", x, z64, z)
  _check_standardized(name, "x_test", x_test, z64_test, z_test)
  return Dataset(name, z, y, z_test, y_test, num_classes)


def _hash_arrays(h, named) -> None:
  r"""Feeds ``h`` each ``(name, array)``: name, dtype, shape, then bytes."""
  for name, a in named:
    arr = np.ascontiguousarray(a)
    h.update(f"{name} {arr.dtype.str} {arr.shape}\0".encode())
    h.update(arr.reshape(-1).view(np.uint8))


def fingerprint(dataset: Dataset) -> str:
  r"""A SHA-256 hex digest of a dataset's arrays and class count.

  Hashes, in order, the dtype, shape and bytes of ``x``, ``y``, ``x_test``,
  ``y_test``, then of ``x_val`` and ``y_val`` where they are not ``None`` (a
  dataset without a validation split keeps the digest it had before these
  fields existed), then ``num_classes`` (not the name: a moved file is the
  same data). Equal data in another dtype gives another fingerprint. A
  checkpoint stores it so that a resume on changed data can be refused.
  Hashing runs at about 1 GB/s: mnist1d (4,000 x 40 float32) takes well under
  a millisecond.

  Args:
    dataset: a :class:`Dataset`.

  Returns:
    64 lowercase hex characters.
  """
  h = hashlib.sha256(b"fnn.data.fingerprint/1\0")
  fields = ("x", "y", "x_test", "y_test") + tuple(
      f for f in ("x_val", "y_val") if getattr(dataset, f, None) is not None)
  _hash_arrays(h, ((field, getattr(dataset, field)) for field in fields))
  h.update(f"num_classes {int(dataset.num_classes)}".encode())
  return h.hexdigest()


def _check_fraction(fraction) -> float:
  if isinstance(fraction, (bool, np.bool_)):
    raise ValueError(f"--val-fraction {fraction} is a bool; expected a "
                     f"number strictly between 0 and 1")
  if not isinstance(fraction, numbers.Real):
    raise TypeError(f"--val-fraction {fraction!r} is a "
                    f"{type(fraction).__name__}; expected a number strictly "
                    f"between 0 and 1")
  value = float(fraction)
  if not 0 < value < 1:  # also NaN
    raise ValueError(f"--val-fraction {fraction} is outside (0, 1); expected "
                     f"a number strictly between 0 and 1 (the share of the "
                     f"training set held out)")
  return value


def _class_labels(y) -> bool:
  r"""Whether ``y`` holds integer class labels (stratify) or not."""
  return y.ndim == 1 and y.dtype.kind in "biu"


def split_validation(dataset: Dataset, fraction: float, *, seed: int = 0
                     ) -> Dataset:
  r"""Holds out a stratified validation split of the training examples.

  For each class ``c`` of the training labels ``y`` with ``n_c`` examples,
  ``k_c = round(fraction * n_c)`` of them (Python's ``round``: halves to
  even) move to validation, and at least 1 for a class with ``n_c >= 2``;
  a class with 1 example keeps it for training when ``fraction <= 0.5``. The
  ``k_c`` are the first of a permutation of the class's examples drawn from
  ``np.random.default_rng(seed)`` (one generator, classes in increasing
  order; no global state), so a seed always picks the same examples.

  Labels that are not integer class labels (a float or 2-D ``y``, such as
  regression targets) are not stratified: ``k = round(fraction * n)``, at
  least 1, of all ``n`` training examples are drawn the same way.

  The features are not restandardized: ``x`` was standardized with the
  statistics of the whole training split, validation rows included, so the
  validation split has seen a little of its own mean and variance. The
  test split is untouched.

  Args:
    dataset: a :class:`Dataset` without a validation split.
    fraction: the share of each class held out, strictly between 0 and 1.
    seed: seeds ``np.random.default_rng``; a non-negative integer.

  Returns:
    The dataset with ``x, y`` the remaining training examples (in their
    original order) and ``x_val, y_val`` the held-out ones (in their
    original order); ``name``, ``x_test``, ``y_test``, ``num_classes``
    unchanged.

  Raises:
    TypeError: ``fraction`` or ``seed`` is not a number.
    ValueError: ``fraction`` is a bool, NaN or not in (0, 1); ``seed`` is
      negative; the split would leave a class (or, unstratified, the
      training split) without a training example, or put no example into
      validation; ``dataset`` already has a validation split. Messages name
      ``--val-fraction`` and the value, one line.
  """
  fraction = _check_fraction(fraction)
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed,
                                                          numbers.Integral):
    raise TypeError(f"split_validation: seed {seed!r} is a "
                    f"{type(seed).__name__}; expected a non-negative integer")
  if seed < 0:
    raise ValueError(f"split_validation: seed {seed} is negative; expected a "
                     f"non-negative integer")
  if dataset.x_val is not None or dataset.y_val is not None:
    have = len(dataset.x_val if dataset.x_val is not None else dataset.y_val)
    raise ValueError(f"--val-fraction {fraction}: {dataset.name} already "
                     f"has a validation split ({have} examples); expected a "
                     f"dataset without one")
  x, y = np.asarray(dataset.x), np.asarray(dataset.y)
  if len(x) != len(y):
    raise ValueError(f"--val-fraction {fraction}: {dataset.name} has "
                     f"{len(x)} training inputs but {len(y)} labels")
  rng = np.random.default_rng(seed)
  n = len(y)
  if _class_labels(y):
    groups = [(f"class {c}", np.flatnonzero(y == c)) for c in np.unique(y)]
  else:
    groups = [("the training split", np.arange(n))]
  chosen = []
  for what, idx in groups:
    k = round(fraction * len(idx))
    if len(idx) >= 2:
      k = max(k, 1)
    if k >= len(idx):
      s = "" if len(idx) == 1 else "s"
      raise ValueError(f"--val-fraction {fraction} leaves {what} "
                       f"({len(idx)} example{s}) without a training example; "
                       f"use a smaller fraction")
    chosen.append(idx[rng.permutation(len(idx))[:k]])
  val = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.intp)
  if len(val) == 0:
    why = " (no class has 2 or more)" if len(groups) > 1 else ""
    raise ValueError(f"--val-fraction {fraction} puts none of {dataset.name}'s "
                     f"{n} training examples into validation{why}; expected at "
                     f"least 1")
  keep = np.ones(n, bool)
  keep[val] = False
  return dataset._replace(x=x[keep], y=y[keep], x_val=x[val], y_val=y[val])


_MNIST1D = ("x", "y", "x_test", "y_test")


def _mnist1d_cached(path: str):
  r"""The arrays of a cache file, or None when it is missing, not a regular
  file, unreadable, or its digest does not match (it is then rewritten)."""
  try:
    st = os.lstat(path)
  except OSError:
    return None
  if not stat.S_ISREG(st.st_mode) or st.st_size > 64 << 20:
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in _MNIST1D}
      digest = str(z["sha256"])
  except Exception:  # noqa: BLE001 (damaged, truncated, not an npz)
    return None
  return arrays if _digest(arrays) == digest else None


def _digest(arrays) -> str:
  h = hashlib.sha256(b"fnn.data.mnist1d-cache/1\0")
  _hash_arrays(h, ((k, arrays[k]) for k in _MNIST1D))
  return h.hexdigest()


def mnist1d(cache_dir: str | None = None) -> Dataset:
  r"""MNIST-1D with ``make_dataset(get_dataset_args())``'s defaults.

  Generating it takes about 5 s (and importing the generator 2 s). With
  ``cache_dir`` (``fnn train`` passes ``~/.cache/fnn/data``, see
  ``$FNN_DATA_CACHE``), the generated arrays are kept there, named by the
  generator's version, with their SHA-256; a later call reads them back (no
  pickle) and regenerates them when the file is missing or does not match
  its digest. Without it, nothing is written."""
  from importlib import metadata
  path = None
  if cache_dir is not None:
    version = re.sub(r"[^0-9A-Za-z.]", "_", metadata.version("mnist1d"))
    path = os.path.join(cache_dir, f"mnist1d-{version}.npz")
    arrays = _mnist1d_cached(path)
    if arrays is not None:
      return _finish("mnist1d", *(arrays[k] for k in _MNIST1D),
                     per_feature=False)
  from mnist1d.data import get_dataset_args, make_dataset
  d = make_dataset(get_dataset_args())
  arrays = {k: np.asarray(d[k]) for k in _MNIST1D}
  if path is not None:
    _store(path, arrays)
  return _finish("mnist1d", *(arrays[k] for k in _MNIST1D),
                 per_feature=False)


def _store(path: str, arrays) -> None:
  r"""Writes the cache file atomically; a cache that cannot be written (a
  read-only or full disk) is skipped without a word."""
  from fnn import _fs
  try:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    _fs.atomic_write_bytes(path, lambda f: np.savez(
        f, sha256=np.array(_digest(arrays)), **arrays))
  except (OSError, ValueError):
    pass


def _digits_csv():
  r"""scikit-learn's ``digits.csv.gz``, found without importing scikit-learn
  (None if it is not where scikit-learn keeps it)."""
  import importlib.util
  spec = importlib.util.find_spec("sklearn")
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(root, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      return path
  return None


def digits() -> Dataset:
  r"""scikit-learn's 8x8 digits, stratified 80/20 split (random_state 0).

  The rows of ``train_test_split(test_size=0.2, stratify=y,
  random_state=0)`` are stored (:mod:`fnn._digits_split`), and the data are
  read from scikit-learn's CSV file as ``load_digits`` reads it, without
  importing scikit-learn; where that file is not found, scikit-learn loads
  them."""
  from fnn import _digits_split
  path = _digits_csv()
  if path is not None:
    with gzip.open(path) as f:
      data = np.loadtxt(f, delimiter=",")
    x, y = data[:, :-1], data[:, -1].astype(int, copy=False)
  else:
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
  train, test = np.array(_digits_split.TRAIN), np.array(_digits_split.TEST)
  return _finish("digits", x[train], y[train], x[test], y[test])


def _toy(name, fn, key, n_train, n_test):
  k1, k2 = jax.random.split(key)
  x, y = fn(np.random.default_rng(np.asarray(jax.random.key_data(k1)).ravel()),
            n_train)
  x_test, y_test = fn(
      np.random.default_rng(np.asarray(jax.random.key_data(k2)).ravel()), n_test)
  return _finish(name, x, y, x_test, y_test)


def _xor(rng, n):
  corners = rng.integers(0, 2, size=(n, 2))
  x = corners * 2.0 - 1.0 + 0.2 * rng.normal(size=(n, 2))  # separable
  return x, corners[:, 0] ^ corners[:, 1]


def _moons(rng, n):
  y = rng.integers(0, 2, size=n)
  t = rng.uniform(0, np.pi, size=n)
  x = np.where(y[:, None] == 0,
               np.stack([np.cos(t), np.sin(t)], 1),
               np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
  return x + 0.1 * rng.normal(size=(n, 2)), y


def _circles(rng, n):
  y = rng.integers(0, 2, size=n)
  t = rng.uniform(0, 2 * np.pi, size=n)
  r = np.where(y == 0, 1.0, 0.5)
  return np.stack([r * np.cos(t), r * np.sin(t)], 1) + 0.08 * rng.normal(
      size=(n, 2)), y


def _spirals(rng, n, arms=3):
  y = rng.integers(0, arms, size=n)
  r = rng.uniform(0.05, 1, size=n)
  t = 4 * r + 2 * np.pi * y / arms
  return np.stack([r * np.cos(t), r * np.sin(t)], 1) + 0.03 * rng.normal(
      size=(n, 2)), y


TOYS = {"xor": _xor, "moons": _moons, "circles": _circles, "spirals": _spirals}


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
  lines = text.strip().splitlines()
  text = lines[0] if lines else type(e).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _open_regular(path: str, what: str):
  r"""Opens ``path`` for binary reading iff it is a regular file.

  The file is opened non-blocking and checked with ``fstat`` on the open
  descriptor (no window between the check and the read): opening a FIFO this
  way returns at once instead of waiting for a writer.
  """
  flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
           | getattr(os, "O_BINARY", 0))
  try:
    fd = os.open(path, flags)
  except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
    raise ValueError(f"cannot read {what}: {_one_line(e)}") from None
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      kind = next((k for test, k in _FILE_KINDS if test(mode)), "special")
      raise ValueError(f"cannot read {what}: it is {kind}, not a regular file")
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def _read_at_most(stream, n: int) -> bytes:
  r"""Up to ``n`` bytes in chunks: a header's claimed size is not allocated."""
  chunks, left = [], n
  while left > 0:
    chunk = stream.read(min(left, 1 << 24))
    if not chunk:
      break
    chunks.append(chunk)
    left -= len(chunk)
  return b"".join(chunks)


def read_idx(path: str) -> np.ndarray:
  r"""Reads one IDX file (MNIST's format), plain or gzip-compressed.

  Raises:
    ValueError: ``path`` is missing, unreadable or not a regular file; bad
      magic (not unsigned bytes), no dimensions, a truncated header, or data
      shorter or longer than the header's shape.
  """
  with _open_regular(path, f"IDX file {path}") as f:
    try:
      stream = gzip.GzipFile(fileobj=f, mode="rb") if path.endswith(
          ".gz") else f
      magic = _read_at_most(stream, 4)
      if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic "
                         f"{magic.hex()!r}; expected 000008 and a dimension "
                         f"count)")
      ndim = magic[3]
      if ndim == 0:
        raise ValueError(f"{path}: IDX header has 0 dimensions; expected at "
                         f"least 1")
      dims = _read_at_most(stream, 4 * ndim)
      if len(dims) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({4 + len(dims)} of "
                         f"{4 + 4 * ndim} bytes)")
      shape = struct.unpack(f">{ndim}I", dims)
      size = math.prod(shape)
      data = _read_at_most(stream, size + 1)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f"cannot read IDX file {path}: {_one_line(e)}") from e
  if len(data) != size:
    found = "more" if len(data) > size else f"{len(data)}"
    raise ValueError(f"{path}: IDX header says {size} bytes of data, file has "
                     f"{found}")
  return np.frombuffer(data, np.uint8).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
  r"""Writes a uint8 array as an IDX file (gzip if ``path`` ends in .gz)."""
  array = np.ascontiguousarray(array, np.uint8)
  blob = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape) + array.tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(blob)


_IDX_NAMES = {
    "x": "train-images-idx3-ubyte", "y": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}


def mnist_idx(directory: str) -> Dataset:
  r"""MNIST from the four standard IDX files in ``directory``."""
  if not os.path.isdir(directory):
    raise ValueError(f"mnist-idx: {directory!r} is not a directory")
  arrays = {}
  for key, stem in _IDX_NAMES.items():
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                      stem.replace("-idx", ".idx") + ".gz"):
      path = os.path.join(directory, candidate)
      if os.path.exists(path):
        arrays[key] = read_idx(path)
        break
    else:
      raise ValueError(f"mnist-idx: {stem}[.gz] not found in {directory!r}")
  flat = lambda a: a.reshape(len(a), -1).astype(np.float64) / 255.0
  return _finish("mnist", flat(arrays["x"]), arrays["y"],
                 flat(arrays["x_test"]), arrays["y_test"], per_feature=False)


def from_npz(path: str) -> Dataset:
  r"""Arrays ``x, y, x_test, y_test`` from ``path`` (no pickle).

  Raises:
    ValueError: ``path`` is missing, unreadable, not a regular file or not an
      ``.npz`` archive; an array is missing, holds objects or fails the checks
      in the module docstring.
  """
  names = ("x", "y", "x_test", "y_test")
  with _open_regular(path, f"npz:{path}") as f:
    try:
      archive = np.load(f, allow_pickle=False)
    except Exception as e:  # bad zip, a pickle, truncated data
      raise ValueError(f"cannot read npz:{path}: {_one_line(e)}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError(f"cannot read npz:{path}: it holds one .npy array; "
                       f"expected an .npz archive of x, y, x_test, y_test")
    with archive:
      missing = [k for k in names if k not in archive]
      if missing:
        raise ValueError(f"npz:{path} lacks arrays {missing}; needs x, y, "
                         f"x_test, y_test")
      arrays = {}
      for k in names:
        try:
          arrays[k] = archive[k]
        except Exception as e:  # object arrays (pickle), corrupt members
          raise ValueError(f"cannot read npz:{path}: array {k!r}: "
                           f"{_one_line(e)}") from e
  return _finish(f"npz:{path}", **arrays)


DATASETS = ("mnist1d", "digits", *TOYS, "mnist-idx:DIR", "npz:PATH")


def load(name: str, *, key=None, n_train: int = 1000, n_test: int = 1000,
         cache_dir: str | None = None) -> Dataset:
  r"""Loads a dataset by name (see the module docstring).

  Args:
    name: one of :data:`DATASETS`.
    key: PRNG key for the toy sets (required for them).
    n_train, n_test: sizes of the toy sets.
    cache_dir: where generated datasets are kept (see :func:`mnist1d`);
      None: nothing is written.

  Raises:
    ValueError: unknown name, missing or malformed files, NaN in the data.
  """
  if name == "mnist1d":
    return mnist1d(cache_dir)
  if name == "digits":
    return digits()
  if name in TOYS:
    if key is None:
      raise ValueError(f"dataset {name!r} is drawn at random and needs a key")
    return _toy(name, TOYS[name], key, n_train, n_test)
  if name.startswith("mnist-idx:"):
    return mnist_idx(name.split(":", 1)[1])
  if name.startswith("npz:"):
    return from_npz(name.split(":", 1)[1])
  raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")

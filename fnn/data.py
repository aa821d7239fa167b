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
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import NamedTuple

import jax
import numpy as np


class Dataset(NamedTuple):
  r"""Train and test splits; ``x`` standardized, ``y`` integer labels."""
  name: str
  x: np.ndarray
  y: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def standardize(x, x_test, per_feature: bool = True):
  r"""Scales both splits with the training split's statistics.

  ``per_feature``: one mean and standard deviation per input feature (tabular
  data); otherwise one for all features (signals and images, where scaling
  each position separately would blow up near-constant positions). Features
  that are constant in training get a standard deviation of 1.
  """
  axis = 0 if per_feature else None
  mean = x.mean(axis=axis)
  std = x.std(axis=axis)
  std = np.where(std > 0, std, 1.0)
  return ((x - mean) / std).astype(np.float32), (
      (x_test - mean) / std).astype(np.float32)


def _finish(name, x, y, x_test, y_test, per_feature=True):
  x, x_test = np.asarray(x, np.float64), np.asarray(x_test, np.float64)
  for what, arr in (("x", x), ("x_test", x_test)):
    if arr.ndim != 2:
      raise ValueError(f"{name}: {what} must be 2-D [n, features], got shape "
                       f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{name}: {what} contains NaN or infinite values")
  if x.shape[1] != x_test.shape[1]:
    raise ValueError(f"{name}: x has {x.shape[1]} features but x_test has "
                     f"{x_test.shape[1]}")
  y, y_test = np.asarray(y), np.asarray(y_test)
  for what, arr, n in (("y", y, len(x)), ("y_test", y_test, len(x_test))):
    if arr.shape != (n,):
      raise ValueError(f"{name}: {what} must have shape ({n},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
      if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name}: {what} must hold integer class labels")
    if len(arr) and arr.min() < 0:
      raise ValueError(f"{name}: {what} has negative label {arr.min()}")
  if len(x) == 0 or len(x_test) == 0:
    raise ValueError(f"{name}: empty split (train {len(x)}, test {len(x_test)})")
  y, y_test = y.astype(np.int32), y_test.astype(np.int32)
  num_classes = int(max(y.max(), y_test.max())) + 1
  x, x_test = standardize(x, x_test, per_feature)
  return Dataset(name, x, y, x_test, y_test, max(num_classes, 2))


def mnist1d() -> Dataset:
  r"""MNIST-1D with ``make_dataset(get_dataset_args())``'s defaults."""
  from mnist1d.data import get_dataset_args, make_dataset
  d = make_dataset(get_dataset_args())
  return _finish("mnist1d", d["x"], d["y"], d["x_test"], d["y_test"],
                 per_feature=False)


def digits() -> Dataset:
  r"""scikit-learn's 8x8 digits, stratified 80/20 split (random_state 0)."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  x, y = load_digits(return_X_y=True)
  x, x_test, y, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                          random_state=0)
  return _finish("digits", x, y, x_test, y_test)


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


def read_idx(path: str) -> np.ndarray:
  r"""Reads one IDX file (MNIST's format), plain or gzip-compressed."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"cannot read IDX file {path}: {e}") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic)")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: truncated IDX header")
  shape = struct.unpack(f">{ndim}I", data[4:header])
  size = int(np.prod(shape)) if shape else 0
  if len(data) - header != size:
    raise ValueError(f"{path}: IDX header says {size} bytes of data, file has "
                     f"{len(data) - header}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


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
  r"""Arrays ``x, y, x_test, y_test`` from ``path`` (no pickle)."""
  names = ("x", "y", "x_test", "y_test")
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in names if k not in f]
      arrays = {k: f[k] for k in names if k in f}
  except Exception as e:  # missing file, bad zip, object arrays (pickle)
    raise ValueError(f"cannot read npz:{path}: {e}") from e
  if missing:
    raise ValueError(f"npz:{path} lacks arrays {missing}; needs x, y, x_test, "
                     f"y_test")
  return _finish(f"npz:{path}", **arrays)


DATASETS = ("mnist1d", "digits", *TOYS, "mnist-idx:DIR", "npz:PATH")


def load(name: str, *, key=None, n_train: int = 1000, n_test: int = 1000
         ) -> Dataset:
  r"""Loads a dataset by name (see the module docstring).

  Args:
    name: one of :data:`DATASETS`.
    key: PRNG key for the toy sets (required for them).
    n_train, n_test: sizes of the toy sets.

  Raises:
    ValueError: unknown name, missing or malformed files, NaN in the data.
  """
  if name == "mnist1d":
    return mnist1d()
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

"""Hostile inputs to fnn.data: labels, dtypes, overflow, special files.

Every refusal is a one-line ValueError naming the array or file, the offending
value and what was expected.
"""
import contextlib
import os
import signal
import time

import jax
import numpy as np
import pytest

from fnn import data


def _arrays(n=30, m=10, d=4, k=3, seed=0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % k  # every class present in training
  return dict(x=rng.normal(size=(n, d)), y=y, x_test=rng.normal(size=(m, d)),
              y_test=rng.integers(0, k, m))


def _load(tmp_path, name="d", **arrays):
  path = tmp_path / f"{name}.npz"
  np.savez(path, **arrays)
  return data.load(f"npz:{path}")


def _refused(tmp_path, match, **overrides):
  with pytest.raises(ValueError, match=match) as info:
    _load(tmp_path, **dict(_arrays(), **overrides))
  assert "\n" not in str(info.value)
  return str(info.value)


def test_good_npz_loads(tmp_path):
  ds = _load(tmp_path, **_arrays())
  assert ds.num_classes == 3 and ds.y.dtype == np.int32
  assert ds.x.dtype == ds.x_test.dtype == np.float32


# --- labels -------------------------------------------------------------------

HUGE_LABELS = [
    ("int64 2**40", np.int64(2**40), "1099511627776"),
    ("int64 2**31+5", np.int64(2**31 + 5), "2147483653"),
    ("int64 2**32+1 wraps to 1", np.int64(2**32 + 1), "4294967297"),
    ("float 4294967297.0", np.float64(4294967297.0), "4294967297.0"),
    ("uint64 max", np.uint64(2**64 - 1), "18446744073709551615"),
    ("just past MAX_CLASSES", np.int64(data.MAX_CLASSES),
     f"{data.MAX_CLASSES}"),
]


@pytest.mark.parametrize("label,value,shown", HUGE_LABELS,
                         ids=[h[0] for h in HUGE_LABELS])
@pytest.mark.parametrize("split", ["y", "y_test"])
def test_labels_beyond_max_classes_are_refused(tmp_path, label, value, shown,
                                               split):
  del label
  arrays = _arrays()
  y = arrays[split].astype(value.dtype)
  y[3] = value
  msg = _refused(tmp_path, rf"{split}\[3\] = {shown} is not a class label",
                 **{split: y})
  assert "MAX_CLASSES" in msg and "100,000" in msg


def test_largest_allowed_label_is_accepted(tmp_path):
  arrays = _arrays()
  arrays["y_test"][0] = data.MAX_CLASSES - 1
  assert _load(tmp_path, **arrays).num_classes == data.MAX_CLASSES


@pytest.mark.parametrize("value,shown", [(0.5, "0.5"), (np.nan, "nan"),
                                         (np.inf, "inf")],
                         ids=["fraction", "nan", "inf"])
def test_non_integral_float_labels_are_refused(tmp_path, value, shown):
  y = _arrays()["y"].astype(np.float64)
  y[7] = value
  _refused(tmp_path, rf"y\[7\] = {shown}; y must hold integer class labels",
           y=y)


def test_negative_label_named(tmp_path):
  y_test = _arrays()["y_test"]
  y_test[2] = -4
  _refused(tmp_path, r"y_test\[2\] = -4 is a negative label", y_test=y_test)


def test_integral_float_and_bool_labels_are_accepted(tmp_path):
  arrays = _arrays(k=2)
  ds = _load(tmp_path, **dict(arrays, y=arrays["y"].astype(np.float32),
                              y_test=arrays["y_test"].astype(bool)))
  assert ds.num_classes == 2
  np.testing.assert_array_equal(ds.y, arrays["y"])
  np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


def test_one_training_class_is_refused(tmp_path):
  arrays = _arrays()
  # The test split holds two classes; training must, too.
  _refused(tmp_path, r"training labels y hold only class 1; training needs at "
           r"least 2 classes", y=np.ones(30, np.int64))
  del arrays


def test_classes_missing_from_training_still_get_outputs(tmp_path):
  """K is inferred from both splits: a class seen only in test is counted."""
  arrays = _arrays(k=2)
  arrays["y_test"][0] = 4
  assert _load(tmp_path, **arrays).num_classes == 5


# --- dtypes -------------------------------------------------------------------

BAD_DTYPES = [
    ("complex", lambda a: a + 1j, "complex128"),
    ("string", lambda a: a.astype(str), "<U"),
    ("bytes", lambda a: a.astype("S8"), "|S8"),
    ("datetime", lambda a: np.zeros(a.shape, "datetime64[s]"), "datetime64"),
    ("timedelta", lambda a: np.zeros(a.shape, "timedelta64[s]"), "timedelta64"),
    ("structured", lambda a: np.zeros(a.shape, [("f", "f8")]), r"\[\('f'"),
]


@pytest.mark.parametrize("kind,make,shown", BAD_DTYPES,
                         ids=[b[0] for b in BAD_DTYPES])
@pytest.mark.parametrize("split", ["x", "y", "x_test", "y_test"])
def test_non_real_dtypes_are_refused(tmp_path, kind, make, shown, split):
  del kind
  arrays = _arrays()
  with pytest.raises(ValueError, match=rf"{split} has dtype {shown}.*expected "
                     r"real numbers") as info:
    _load(tmp_path, **dict(arrays, **{split: make(arrays[split])}))
  assert "\n" not in str(info.value)


def test_complex_features_no_longer_lose_their_imaginary_part(recwarn):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 2)) + 1j
  with pytest.raises(ValueError, match=r"x has dtype complex128"):
    data._finish("t", x, np.arange(10) % 2, x.real, np.arange(10) % 2)
  assert not [w for w in recwarn if "ComplexWarning" in str(w.category)]


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int64, np.float16,
                                   np.float32, bool])
def test_integer_float_and_bool_features_are_accepted(tmp_path, dtype):
  arrays = _arrays()
  x = (np.arange(120).reshape(30, 4) % 5).astype(dtype)
  ds = _load(tmp_path, **dict(arrays, x=x, x_test=x[:10]))
  assert ds.x.dtype == np.float32 and np.all(np.isfinite(ds.x))


def test_zero_features_refused(tmp_path):
  _refused(tmp_path, r"x has 0 features; expected at least 1",
           x=np.zeros((30, 0)), x_test=np.zeros((10, 0)))


# --- overflow in standardization ----------------------------------------------


def test_nonfinite_feature_named(tmp_path):
  x_test = _arrays()["x_test"]
  x_test[4, 2] = -np.inf
  _refused(tmp_path, r"x_test contains NaN or infinite values \(first: "
           r"x_test\[4, 2\] = -inf\)", x_test=x_test)


def test_huge_test_feature_that_overflows_float32_is_refused(tmp_path):
  x_test = _arrays()["x_test"]
  x_test[6, 1] = 1e39
  with np.errstate(all="raise"):  # no RuntimeWarning escapes either
    _refused(tmp_path, r"x_test\[6, 1\] = 1e\+39 standardizes to .*beyond "
             r"float32's range", x_test=x_test)


@pytest.mark.parametrize("per_feature", [True, False], ids=["tabular", "image"])
def test_1e300_features_standardize_exactly_without_warnings(per_feature):
  """Pre-scaling by a power of two: squares of 1e300 no longer overflow, and
  the result equals the standardization of the same data divided by 1e300."""
  rng = np.random.default_rng(1)
  x, x_test = rng.normal(size=(40, 3)), rng.normal(size=(10, 3))
  with np.errstate(all="raise"):
    z_big, zt_big = data.standardize(x * 2.0**1000, x_test * 2.0**1000,
                                     per_feature)
  z, zt = data.standardize(x, x_test, per_feature)
  np.testing.assert_array_equal(z_big, z)
  np.testing.assert_array_equal(zt_big, zt)
  assert np.all(np.isfinite(z_big))


def test_1e300_features_load(tmp_path):
  arrays = _arrays()
  big = dict(arrays, x=arrays["x"] * 1e300, x_test=arrays["x_test"] * 1e300)
  with np.errstate(all="raise"):
    ds = _load(tmp_path, **big)
  np.testing.assert_allclose(ds.x, _load(tmp_path, "e", **arrays).x,
                             rtol=1e-6, atol=1e-6)


def test_ordinary_data_standardizes_as_before():
  """The plain formula, bit for bit, for features of ordinary magnitude."""
  rng = np.random.default_rng(2)
  x, x_test = rng.normal(size=(50, 5)) * 30, rng.normal(size=(20, 5))
  mean, std = x.mean(0), x.std(0)
  z, zt = data.standardize(x, x_test)
  np.testing.assert_array_equal(z, ((x - mean) / std).astype(np.float32))
  np.testing.assert_array_equal(zt, ((x_test - mean) / std).astype(np.float32))


# --- files --------------------------------------------------------------------


@contextlib.contextmanager
def _deadline(seconds):
  """Interrupts a blocking open (a FIFO with no writer) instead of hanging."""
  def alarm(signum, frame):
    del signum, frame
    raise TimeoutError(f"still blocked after {seconds} s")
  previous = signal.signal(signal.SIGALRM, alarm)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_fifo_is_refused_without_blocking(tmp_path):
  fifo = tmp_path / "pipe.npz"
  os.mkfifo(fifo)
  with _deadline(5), pytest.raises(
      ValueError, match=rf"cannot read npz:{fifo}: it is a FIFO, not a regular "
      r"file"):
    data.load(f"npz:{fifo}")


def test_directory_as_npz_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"a directory, not a regular file"):
    data.load(f"npz:{tmp_path}")


def test_character_device_is_refused():
  with _deadline(5), pytest.raises(
      ValueError, match=r"npz:/dev/zero: it is a character device, not a "
      r"regular file"):
    data.load("npz:/dev/zero")


def test_too_long_path_is_one_line(tmp_path):
  path = tmp_path / ("a" * 300 + ".npz")
  with pytest.raises(ValueError, match=r"cannot read npz:.*: File name too "
                     r"long$"):
    data.load(f"npz:{path}")


def test_nul_in_path_is_one_line():
  with pytest.raises(ValueError, match=r"cannot read npz:"):
    data.load("npz:/tmp/a\0b.npz")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_npz_is_one_line(tmp_path):
  path = tmp_path / "d.npz"
  np.savez(path, **_arrays())
  path.chmod(0)
  with pytest.raises(ValueError, match=r"Permission denied"):
    data.load(f"npz:{path}")


def test_npy_instead_of_npz(tmp_path):
  np.save(tmp_path / "a.npy", np.zeros(3))
  with pytest.raises(ValueError, match=r"holds one \.npy array; expected an "
                     r"\.npz archive"):
    data.load(f"npz:{tmp_path / 'a.npy'}")


def test_garbage_npz_is_one_line(tmp_path):
  (tmp_path / "g.npz").write_bytes(b"PK\x03\x04" + b"\xff" * 100)
  with pytest.raises(ValueError, match=r"cannot read npz:") as info:
    data.load(f"npz:{tmp_path / 'g.npz'}")
  assert "\n" not in str(info.value)


def _write_mnist(directory, n=20):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8)
  labels = (np.arange(n) % 10).astype(np.uint8)
  for stem, (a, b) in {"train": (imgs, labels),
                       "t10k": (imgs[:5], labels[:5])}.items():
    data.write_idx(str(directory / f"{stem}-images-idx3-ubyte"), a)
    data.write_idx(str(directory / f"{stem}-labels-idx1-ubyte"), b)


def test_mnist_idx_fifo_is_refused(tmp_path):
  _write_mnist(tmp_path)
  assert data.load(f"mnist-idx:{tmp_path}").num_classes == 10
  target = tmp_path / "t10k-labels-idx1-ubyte"
  target.unlink()
  os.mkfifo(target)
  with _deadline(5), pytest.raises(
      ValueError, match=r"t10k-labels-idx1-ubyte: it is a FIFO, not a regular "
      r"file"):
    data.load(f"mnist-idx:{tmp_path}")


def test_mnist_idx_directory_in_place_of_a_file(tmp_path):
  _write_mnist(tmp_path)
  (tmp_path / "train-images-idx3-ubyte").unlink()
  (tmp_path / "train-images-idx3-ubyte").mkdir()
  with pytest.raises(ValueError, match=r"a directory, not a regular file"):
    data.load(f"mnist-idx:{tmp_path}")


@pytest.mark.parametrize("blob,match", [
    (b"\x00\x00\x08\x00", r"0 dimensions; expected at least 1"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00", r"bad magic"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", r"header says 3 bytes of "
     r"data, file has 2"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", r"header says 1 bytes of "
     r"data, file has more"),
    # A header that claims 2**32-1 x 2**32-1 bytes: refused, nothing allocated.
    (b"\x00\x00\x08\x02" + b"\xff" * 8 + b"\x01", r"header says "
     r"18446744065119617025 bytes of data, file has 1"),
], ids=["0-d", "magic", "short", "long", "huge-header"])
def test_malformed_idx(tmp_path, blob, match):
  (tmp_path / "a").write_bytes(blob)
  with pytest.raises(ValueError, match=match):
    data.read_idx(str(tmp_path / "a"))


def test_corrupt_gzip_idx_is_one_line(tmp_path):
  (tmp_path / "a.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"junk")
  with pytest.raises(ValueError, match=r"cannot read IDX file") as info:
    data.read_idx(str(tmp_path / "a.gz"))
  assert "\n" not in str(info.value)


# --- fingerprint --------------------------------------------------------------


def test_fingerprint_is_stable_and_sensitive():
  ds = data.load("moons", key=jax.random.key(0), n_train=64, n_test=16)
  again = data.load("moons", key=jax.random.key(0), n_train=64, n_test=16)
  fp = data.fingerprint(ds)
  assert len(fp) == 64 and int(fp, 16) >= 0
  assert data.fingerprint(again) == fp
  assert data.fingerprint(ds._replace(name="renamed")) == fp
  x = ds.x.copy()
  x[3, 1] = np.nextafter(x[3, 1], np.float32(np.inf))
  y_test = ds.y_test.copy()
  y_test[0] = 1 - y_test[0]
  changed = [ds._replace(x=x), ds._replace(y_test=y_test),
             ds._replace(num_classes=3), ds._replace(x=ds.x.astype(np.float64)),
             ds._replace(x=ds.x.reshape(32, 4)),
             ds._replace(x=ds.x_test, x_test=ds.x)]
  fps = {data.fingerprint(d) for d in changed}
  assert fp not in fps and len(fps) == len(changed)


def test_fingerprint_is_fast():
  rng = np.random.default_rng(0)
  ds = data.Dataset("big", rng.normal(size=(4000, 40)).astype(np.float32),
                    np.arange(4000, dtype=np.int32) % 10,
                    rng.normal(size=(1000, 40)).astype(np.float32),
                    np.arange(1000, dtype=np.int32) % 10, 10)
  start = time.perf_counter()
  for _ in range(10):
    data.fingerprint(ds)
  assert (time.perf_counter() - start) / 10 < 0.05  # ~1 ms on a laptop core


def test_digits_stored_split_equals_scikit_learns():
  # fnn.data.digits reads the CSV and applies stored rows (no sklearn
  # import); they must be exactly train_test_split's, as before.
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  x, y = load_digits(return_X_y=True)
  x, x_test, y, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                          random_state=0)
  ref = data._finish("digits", x, y, x_test, y_test)
  got = data.digits()
  for field in ("x", "y", "x_test", "y_test"):
    a, b = getattr(ref, field), getattr(got, field)
    assert a.dtype == b.dtype and np.array_equal(a, b), field
  assert data.fingerprint(got) == data.fingerprint(ref)


def test_digits_load_does_not_import_scikit_learn():
  import subprocess
  import sys
  code = ("import sys; from fnn import data; data.digits(); "
          "print('sklearn' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == "False"


def test_mnist1d_cache_reads_back_the_same_data_and_survives_damage(
    tmp_path, monkeypatch):
  import mnist1d.data as gen
  rng = np.random.default_rng(0)  # a small stand-in for the 5 s generator
  made = dict(x=rng.normal(size=(60, 40)), y=np.arange(60) % 10,
              x_test=rng.normal(size=(20, 40)), y_test=np.arange(20) % 10)
  calls = []
  monkeypatch.setattr(gen, "make_dataset",
                      lambda args: calls.append(1) or dict(made))
  fresh = data.mnist1d()  # generated, nothing written
  assert len(calls) == 1 and not list(tmp_path.iterdir())
  cached = data.mnist1d(str(tmp_path))  # generated, then written
  (path,) = list(tmp_path.iterdir())
  assert path.name.startswith("mnist1d-") and path.suffix == ".npz"
  again = data.mnist1d(str(tmp_path))  # read back, not generated
  assert len(calls) == 2
  for d in (cached, again):
    assert data.fingerprint(d) == data.fingerprint(fresh)
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0xFF  # a flipped byte: the digest no longer matches
  path.write_bytes(bytes(raw))
  assert data.fingerprint(data.mnist1d(str(tmp_path))) == data.fingerprint(
      fresh)  # regenerated and rewritten
  assert len(calls) == 3 and data._mnist1d_cached(str(path)) is not None
  path.unlink()
  path.mkdir()  # a directory in its place: generated, the cache skipped
  assert data.fingerprint(data.mnist1d(str(tmp_path))) == data.fingerprint(
      fresh)
  assert len(calls) == 4

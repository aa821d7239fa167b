"""fnn.data.split_validation: a stratified validation split of the training set.

Disjoint and complete, stratified, deterministic per seed, the test split
untouched, fingerprints unchanged without a split; every bad input a one-line
error naming the value.
"""
import math

import numpy as np
import pytest

from fnn import data


def _dataset(counts=(40, 25, 7, 2), d=3, seed=0):
  r"""Classes of the given sizes, shuffled; row i's first feature is i."""
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(
      np.int32)
  x = rng.normal(size=(len(y), d)).astype(np.float32)
  x[:, 0] = np.arange(len(y))  # identifies the row
  x_test = rng.normal(size=(11, d)).astype(np.float32)
  y_test = rng.integers(0, len(counts), 11).astype(np.int32)
  return data.Dataset("synthetic", x, y, x_test, y_test, len(counts))


def _rows(x):
  return [tuple(r) for r in x.tolist()]


def test_fields_default_to_none_and_old_construction_works():
  ds = _dataset()
  assert ds.x_val is None and ds.y_val is None
  assert data.Dataset._fields[-2:] == ("x_val", "y_val")
  kw = data.Dataset(name="n", x=ds.x, y=ds.y, x_test=ds.x_test,
                    y_test=ds.y_test, num_classes=4)
  assert kw.x_val is None and kw.num_classes == 4


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_disjoint_and_a_permutation_with_labels_attached(fraction):
  ds = _dataset()
  sp = data.split_validation(ds, fraction)
  train_ids, val_ids = sp.x[:, 0].astype(int), sp.x_val[:, 0].astype(int)
  assert not set(train_ids) & set(val_ids)
  assert sorted([*train_ids, *val_ids]) == list(range(len(ds.x)))
  # Every row is the original row with its original label.
  np.testing.assert_array_equal(sp.x, ds.x[train_ids])
  np.testing.assert_array_equal(sp.y, ds.y[train_ids])
  np.testing.assert_array_equal(sp.x_val, ds.x[val_ids])
  np.testing.assert_array_equal(sp.y_val, ds.y[val_ids])
  # Both keep the original order.
  assert np.all(np.diff(train_ids) > 0) and np.all(np.diff(val_ids) > 0)
  assert sp.x.dtype == ds.x.dtype and sp.y_val.dtype == ds.y.dtype


@pytest.mark.parametrize("fraction", [0.1, 0.2, 1 / 3, 0.5, 0.6])
def test_stratified(fraction):
  counts = (40, 25, 7, 3)
  sp = data.split_validation(_dataset(counts), fraction)
  for c, n in enumerate(counts):
    k = int(np.sum(sp.y_val == c))
    assert abs(k - fraction * n) <= 1, (c, n, k)
    assert 1 <= k <= n - 1
    assert k + int(np.sum(sp.y == c)) == n


def test_every_class_of_two_gives_one_and_keeps_one():
  sp = data.split_validation(_dataset((30, 2, 2)), 0.05)
  assert [int(np.sum(sp.y_val == c)) for c in range(3)] == [2, 1, 1]
  assert [int(np.sum(sp.y == c)) for c in range(3)] == [28, 1, 1]


def test_a_single_example_class_stays_in_training():
  sp = data.split_validation(_dataset((20, 1)), 0.3)
  assert int(np.sum(sp.y == 1)) == 1 and not np.any(sp.y_val == 1)


def test_deterministic_per_seed():
  ds = _dataset()
  a, b = (data.split_validation(ds, 0.3, seed=5) for _ in range(2))
  for f in ("x", "y", "x_val", "y_val"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  c = data.split_validation(ds, 0.3, seed=6)
  assert not np.array_equal(a.x_val, c.x_val)
  assert len(a.x_val) == len(c.x_val)  # same counts, other examples
  d = data.split_validation(ds, 0.3)  # default seed 0
  np.testing.assert_array_equal(d.x_val, data.split_validation(
      ds, 0.3, seed=0).x_val)


def test_no_global_random_state():
  ds = _dataset()
  np.random.seed(1)
  a = data.split_validation(ds, 0.3)
  state = np.random.get_state()
  np.random.seed(2)
  b = data.split_validation(ds, 0.3)
  np.testing.assert_array_equal(a.x_val, b.x_val)
  np.random.set_state(state)


def test_test_split_and_the_rest_untouched():
  ds = _dataset()
  sp = data.split_validation(ds, 0.2)
  assert sp.x_test is ds.x_test and sp.y_test is ds.y_test
  assert sp.name == ds.name and sp.num_classes == ds.num_classes
  assert ds.x_val is None  # the input is not changed


def test_fingerprint():
  ds = _dataset()
  assert data.fingerprint(ds) == data.fingerprint(ds._replace())
  assert data.fingerprint(ds) == data.fingerprint(data.Dataset(*ds[:6]))
  sp = data.split_validation(ds, 0.2)
  assert data.fingerprint(sp) != data.fingerprint(ds)
  assert data.fingerprint(sp) == data.fingerprint(
      data.split_validation(ds, 0.2))
  assert data.fingerprint(sp) != data.fingerprint(
      data.split_validation(ds, 0.2, seed=1))
  # Moving the validation rows back to the training set is another dataset.
  merged = ds._replace(x=np.concatenate([sp.x, sp.x_val]),
                       y=np.concatenate([sp.y, sp.y_val]))
  assert data.fingerprint(merged) != data.fingerprint(sp)


def test_unstratified_for_float_or_2d_targets():
  ds = _dataset((30, 20))
  reg = ds._replace(y=ds.x[:, 1] * 2.0)  # float targets
  sp = data.split_validation(reg, 0.2, seed=3)
  assert len(sp.x_val) == 10 and len(sp.x) == 40
  np.testing.assert_array_equal(sp.y_val, reg.y[sp.x_val[:, 0].astype(int)])
  onehot = ds._replace(y=np.eye(2, dtype=np.float32)[ds.y])
  sp = data.split_validation(onehot, 0.1)
  assert sp.y_val.shape == (5, 2) and sp.y.shape == (45, 2)
  np.testing.assert_array_equal(sp.y_val, onehot.y[sp.x_val[:, 0].astype(
      int)])
  tiny = ds._replace(x=ds.x[:2], y=ds.x[:2, 1])
  sp = data.split_validation(tiny, 0.01)  # at least 1 each side
  assert len(sp.x_val) == 1 and len(sp.x) == 1


def test_digits():
  ds = data.load("digits")
  sp = data.split_validation(ds, 0.2)
  assert len(sp.x) + len(sp.x_val) == len(ds.x) == 1437
  for c in range(10):
    n = int(np.sum(ds.y == c))
    assert abs(int(np.sum(sp.y_val == c)) - 0.2 * n) <= 1


def _raises(exc, match, *args, **kwargs):
  with pytest.raises(exc, match=match) as info:
    data.split_validation(*args, **kwargs)
  assert "\n" not in str(info.value)
  return str(info.value)


@pytest.mark.parametrize("fraction, shown", [
    (0.0, "0.0"), (1.0, "1.0"), (1, "1"), (-0.1, "-0.1"), (1.5, "1.5"),
    (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"),
    (np.float64(2.0), "2.0"), (True, "True"), (False, "False"),
    (np.bool_(True), "True"),
])
def test_bad_fraction(fraction, shown):
  msg = _raises(ValueError, "--val-fraction", _dataset(), fraction)
  assert f"--val-fraction {shown} " in msg and "between 0 and 1" in msg


@pytest.mark.parametrize("fraction", ["0.1", None, [0.1], 0.1j])
def test_fraction_not_a_number(fraction):
  msg = _raises(TypeError, "--val-fraction", _dataset(), fraction)
  assert repr(fraction) in msg and "expected a number" in msg


def test_fraction_of_numpy_and_fractions_types_accepted():
  import fractions
  ds = _dataset()
  a = data.split_validation(ds, np.float32(0.25))
  b = data.split_validation(ds, fractions.Fraction(1, 4))
  np.testing.assert_array_equal(a.x_val, b.x_val)


def test_bad_seed():
  _raises(ValueError, "seed -1 is negative", _dataset(), 0.1, seed=-1)
  _raises(TypeError, "seed 1.5 is a float", _dataset(), 0.1, seed=1.5)
  _raises(TypeError, "seed True is a bool", _dataset(), 0.1, seed=True)


def test_class_left_without_training_example():
  msg = _raises(ValueError, "without a training example", _dataset(
      (40, 10, 10, 2)), 0.9)
  assert msg == ("--val-fraction 0.9 leaves class 3 (2 examples) without a "
                 "training example; use a smaller fraction")
  msg = _raises(ValueError, r"class 0 \(40 examples\)", _dataset(
      (40, 10)), 0.99)
  msg = _raises(ValueError, r"class 1 \(1 example\)", _dataset((20, 1)), 0.6)
  assert "--val-fraction 0.6" in msg
  msg = _raises(ValueError, r"class 1 \(2 examples\)", _dataset((20, 2)), 0.75)
  tiny = _dataset((2, 2))
  one = tiny._replace(x=tiny.x[:1], y=tiny.x[:1, 1])  # unstratified, 1 row
  msg = _raises(ValueError, r"the training split \(1 example\)", one, 0.7)
  assert "--val-fraction 0.7" in msg


def test_no_example_into_validation():
  singletons = _dataset((1, 1, 1))
  msg = _raises(ValueError, "into validation", singletons, 0.3)
  assert "--val-fraction 0.3" in msg and "3 training examples" in msg
  tiny = _dataset((2, 2))
  one = tiny._replace(x=tiny.x[:1], y=tiny.x[:1, 1])
  msg = _raises(ValueError, "into validation", one, 0.2)
  assert "--val-fraction 0.2" in msg


def test_already_split():
  sp = data.split_validation(_dataset(), 0.2)
  msg = _raises(ValueError, "already has a validation split", sp, 0.1)
  assert "--val-fraction 0.1" in msg and f"({len(sp.x_val)} examples)" in msg

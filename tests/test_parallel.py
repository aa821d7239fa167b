"""Data parallelism on 4 forced CPU devices (a subprocess: the XLA flag must
be set before JAX starts, and this process already has one device)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def measured():
  env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
  proc = subprocess.run([sys.executable, os.path.join(HERE,
                                                      "parallel_checks.py")],
                        capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_and_a_sharded_batch(measured):
  assert measured["devices"] == 4
  assert measured["x_sharding"] == "P('data',)"


def test_sharded_gradients_equal_single_device(measured):
  # float64: the batch sums run as 4 partial sums plus an all-reduce instead
  # of one sum, so results differ by a few ulps (relative ~1e-16..1e-15).
  for name in ("grad", "per_example_grads", "per_example_grad_norms",
               "grad_stats"):
    assert measured[name] < 1e-13, (name, measured[name])


def test_the_compiled_gradient_all_reduces(measured):
  assert measured["grad_all_reduce"] >= 1  # XLA's cross-device reduction
  assert measured["single_all_reduce"] == 0  # ... absent on one device
  assert measured["epoch_all_reduce"] >= 1


def test_indivisible_batch_is_a_clear_error(measured):
  assert measured["indivisible_error"] == (
      "batch size 10 does not divide evenly over 4 devices; use a multiple "
      "of 4 (e.g. 8)")


def test_sharded_training_matches_single_device(measured):
  # 3 epochs x 8 Adam steps with dropout, float64: per-step rounding of
  # ~1e-16 grows a little through the optimizer; 1e-10 is far below any
  # real difference (a wrong mask or batch would be O(1)).
  assert measured["train_params"] < 1e-10
  assert measured["train_loss"] < 1e-12
  assert measured["train_param_sharding"] == "P()"  # params replicated
  assert measured["dp_params"] < 1e-10  # DP-SGD with Poisson batches too


def test_any_network_shards_like_the_mlp(measured):
  # A Sequential (Conv1d, LayerNorm, a residual block): its gradient on 4
  # devices against 1, float64 (the MLP's bound), replicated like the params.
  assert measured["seq_grad"] < 1e-13
  assert measured["seq_grad_sharding"] == "P()"


@pytest.mark.slow  # 20 s of two JAX processes; the 4-device test covers sharding
def test_two_processes_with_jax_distributed_match_one():
  """scripts/multihost.py --local 2: two CPU processes (gloo collectives),
  one device each, a global batch sharded across both; float32."""
  root = os.path.dirname(HERE)
  proc = subprocess.run([sys.executable, os.path.join(root, "scripts",
                                                      "multihost.py"),
                         "--local", "2"], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=root), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  multi, single = got["multi"], got["single"]
  assert multi["processes"] == 2 and multi["devices"] == 2
  assert multi["local_devices"] == 1 and single["processes"] == 1
  # float32: the cross-process all-reduce sums in another order; 3 epochs
  # of Adam keep the difference at float32 rounding (~1e-7 relative).
  np.testing.assert_allclose(multi["w_first"], single["w_first"], rtol=1e-5,
                             atol=1e-6)
  assert abs(multi["train_loss"] - single["train_loss"]) < 1e-5

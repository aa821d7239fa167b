"""fnn._resources: memory estimates that refuse impossible runs, OOM messages."""
import time

import jax
import numpy as np
import pytest

from fnn import _resources as resources

ADAM = dict(batch_size=128, dtype_bytes=4,
            optimizer_slots=resources.OPTIMIZER_SLOTS["adam"], n_train=60000,
            n_test=10000)


def test_training_bytes_formula_by_hand():
  # sizes (3, 4, 2): P = 3*4+4 + 4*2+2 = 26, H = 6, B = 5, d = 4, s = 2.
  assert resources.parameter_count((3, 4, 2)) == 26
  expected = (4 * 26 * 4              # params, grads, 2 Adam slots
              + 5 * (3 + 2 * 6) * 4   # input, z and a per layer
              + 5 * (3 + 4 + 6) * 4   # factors a_prev (3 + 4), delta (4 + 2)
              + (10 + 6) * (3 * 4 + 4))  # dataset: features and int32 labels
  assert resources.training_bytes((3, 4, 2), batch_size=5, dtype_bytes=4,
                                  optimizer_slots=2, n_train=10,
                                  n_test=6) == expected == 1232


def test_huge_model_is_refused_fast_without_allocating():
  resources.available_bytes()  # backend start-up is not what is timed
  sizes = (40, 1_000_000, 1_000_000, 10)  # 10**12 parameters: 16 TB with Adam
  start = time.perf_counter()
  with pytest.raises(ValueError) as info:
    resources.check_fits(sizes, **ADAM, detail="float32, adam")
  assert time.perf_counter() - start < 1.0
  msg = str(info.value)
  assert "\n" not in msg
  assert msg.startswith("model (40, 1000000, 1000000, 10) has "
                        "1,000,052,000,010 parameters; training needs about ")
  assert "TB (float32, adam) but " in msg and "is available" in msg


def test_brief_example_message():
  available = resources.Available(20_300_000_000, "host RAM")
  with pytest.raises(ValueError, match=(
      r"^model \(40, 100000, 100000, 10\) has 10,005,200,010 parameters; "
      r"training needs about 160\.5 GB \(float32, adam\) but 20\.3 GB of host "
      r"RAM is available$")):
    resources.check_fits((40, 100_000, 100_000, 10), **ADAM,
                         detail="float32, adam", available=available)


def test_default_detail_names_bytes_and_slots():
  with pytest.raises(ValueError, match=r"\(8-byte values, 1 optimizer slot\) "
                     r"but 1\.0 kB of GPU memory is available"):
    resources.check_fits((10, 10), batch_size=1, dtype_bytes=8,
                         optimizer_slots=1, n_train=1, n_test=1, what="net",
                         available=resources.Available(1000, "GPU memory"))


def test_small_model_passes_and_returns_the_estimate():
  needed = resources.check_fits((40, 100, 10), **ADAM)
  assert needed == resources.training_bytes((40, 100, 10), **ADAM)
  assert 0 < needed < 50e6


def test_refuses_only_when_needed_exceeds_available():
  sizes = (5, 7, 3)
  needed = resources.training_bytes(sizes, **ADAM)
  at = resources.Available(needed, "host RAM")
  assert resources.check_fits(sizes, **ADAM, available=at) == needed
  with pytest.raises(ValueError, match=r"is available$"):
    resources.check_fits(sizes, **ADAM,
                         available=resources.Available(needed - 1, "host RAM"))
  unknown = resources.Available(None, "host RAM")  # the OS did not say
  assert resources.check_fits((40, 10**6, 10**6, 10), **ADAM,
                              available=unknown) > 10**13


@pytest.mark.parametrize("sizes", [(), (5,), (5, 0, 2), (5, -3)],
                         ids=["empty", "one", "zero-width", "negative"])
def test_bad_sizes(sizes):
  with pytest.raises(ValueError, match=r"sizes must be at least 2 positive "
                     r"widths, got"):
    resources.check_fits(sizes, **ADAM)


def test_any_network_the_mlp_formula_for_an_mlps_layers():
  """A Sequential of Dense and Activation layers is estimated exactly as the
  MLP of the same widths; the MLP itself as its sizes."""
  import fnn
  from fnn import layers as L
  sizes = (3, 4, 5, 2)
  seq = fnn.Sequential((3,), [L.Dense(4), L.Activation("relu"), L.Dense(5),
                              L.Activation("relu"), L.Dense(2)])
  mlp = fnn.MLP(sizes)
  want = resources.training_bytes(sizes, **ADAM)
  assert resources.training_bytes(seq, **ADAM) == want
  assert resources.training_bytes(mlp, **ADAM) == want
  assert resources.footprint(seq)._replace(label="") == resources.footprint(
      sizes)._replace(label="")


def test_cnn_footprint_by_hand():
  from fnn import arch
  f = resources.footprint(arch.build("cnn", 40, 10))
  assert f.parameters == 5210 and f.n_in == 40
  # Every layer's output once (and the output activation's): input 40,
  # conv/relu 19x25 twice, 10x25 twice, 5x25 twice, flatten 125, dense 10.
  outs = [19 * 25] * 2 + [10 * 25] * 2 + [5 * 25] * 2 + [125, 10]
  assert f.forward == 40 + sum(outs) + 10
  # (a_prev, delta) of the three convolutions and the dense layer.
  assert f.factors == (40 + 475) + (475 + 250) + (250 + 125) + (125 + 10)
  assert f.label == arch.describe(arch.build("cnn", 40, 10))


def test_huge_sequential_is_refused_naming_its_layers():
  from fnn import arch
  # (3 + 1) * 1e5 conv parameters, then 38 positions x 1e5 channels x 10.
  model = arch.build("conv1d:100000:3,relu,flatten", 40, 10)
  with pytest.raises(ValueError, match=r"^model conv1d:100000:3:1:0,relu,"
                     r"flatten,dense:10 has 38,400,010 parameters; training "
                     r"needs about .* but 1\.0 MB of host RAM is available$"):
    resources.check_fits(model, **ADAM, detail="float32, adam",
                         available=resources.Available(10**6, "host RAM"))


def test_host_memory_is_known_on_this_machine():
  avail = resources.host_available()
  assert avail.where == "host RAM" and avail.n_bytes > 0
  if jax.default_backend() == "cpu":
    assert resources.available_bytes() == avail


class _Device:

  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    if isinstance(self.stats, Exception):
      raise self.stats
    return self.stats


@pytest.mark.parametrize("stats,where", [
    ({"bytes_limit": 80_000_000_000, "bytes_in_use": 5}, "GPU memory"),
    (None, "host RAM"),
    ({}, "host RAM"),
    (NotImplementedError("no stats"), "host RAM"),
], ids=["limit", "none", "empty", "raises"])
def test_accelerator_memory_from_memory_stats(monkeypatch, stats, where):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *a: [_Device(stats)])
  avail = resources.available_bytes()
  assert avail.where == where
  if where == "GPU memory":
    assert avail.n_bytes == 80_000_000_000


@pytest.mark.parametrize("n,text", [(0, "0 B"), (999, "999 B"),
                                    (1234, "1.2 kB"), (160_480_000_000,
                                                       "160.5 GB"),
                                    (3e18, "3000.0 PB")])
def test_format_bytes(n, text):
  assert resources.format_bytes(n) == text


# --- resource_error_message ---------------------------------------------------

OOM = ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
       "40004000000 bytes.\nBufferAssignment OOM Debugging.\nlive: 3 buffers")


def test_xla_oom_is_one_line():
  exc = jax.errors.JaxRuntimeError(OOM)
  assert resources.resource_error_message(exc) == (
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 40004000000 "
      "bytes.")


def test_old_jaxlib_name_and_out_of_memory_wording():
  xla_runtime_error = type("XlaRuntimeError", (RuntimeError,), {})
  exc = xla_runtime_error("\nINTERNAL: Failed to allocate: Out of memory "
                          "(cudaMalloc)\nmore")
  assert resources.resource_error_message(exc) == (
      "INTERNAL: Failed to allocate: Out of memory (cudaMalloc)")


def test_long_message_is_trimmed():
  exc = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: " + "x" * 1000)
  msg = resources.resource_error_message(exc)
  assert len(msg) == 200 and msg.endswith("...")


def test_numpy_memory_error():
  with pytest.raises(MemoryError) as info:
    np.empty(2**59, np.float64)  # 4 EiB: malloc fails, nothing touched
  msg = resources.resource_error_message(info.value)
  assert msg.startswith("MemoryError: Unable to allocate") and "\n" not in msg
  assert resources.resource_error_message(MemoryError()) == (
      "MemoryError: out of host memory")


def test_wrapped_oom_is_found_through_cause():
  try:
    try:
      raise jax.errors.JaxRuntimeError(OOM)
    except RuntimeError as e:
      raise ValueError("step failed") from e
  except ValueError as wrapped:
    assert resources.resource_error_message(wrapped).startswith(
        "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize("exc", [
    jax.errors.JaxRuntimeError("INVALID_ARGUMENT: shapes differ"),
    RuntimeError("RESOURCE_EXHAUSTED: not from XLA"),
    ValueError("Out of memory"),
    KeyboardInterrupt(),
], ids=["other-xla", "plain-runtime", "value", "interrupt"])
def test_other_errors_give_none(exc):
  assert resources.resource_error_message(exc) is None

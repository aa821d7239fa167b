"""fnn.arch: the named architectures, spec strings, describe()."""
import jax
import jax.numpy as jnp
import pytest

import fnn
from fnn import arch
from fnn import layers as L


def _conv_len(length, kernel, stride, padding):
  """PyTorch's Conv1d output length (no dilation)."""
  return (length + 2 * padding - kernel) // stride + 1


def test_mlp_is_todays_network():
  model = arch.build("mlp", 40, 10, hidden=(512, 512), activation="gelu")
  assert model == fnn.MLP((40, 512, 512, 10), activation="gelu")
  assert arch.describe(model) == "MLP 40-512-512-10"
  assert arch.build("mlp", 4, 3) == fnn.MLP((4, 3))


def test_resmlp_is_mnist1d_mlpbase():
  """MLPBase: 40 -> 100 ReLU -> residual [100 -> 100 ReLU] -> 10."""
  model = arch.build("resmlp", 40, 10)
  assert isinstance(model, fnn.Sequential)
  init = "pytorch"  # the repository's models keep torch's default init
  assert model.layers == (
      L.Dense(100, init=init), L.Activation("relu"),
      L.Residual(L.Dense(100, init=init), L.Activation("relu")),
      L.Dense(10, init=init))
  assert model.in_shape == (40,) and model.n_out == 10
  assert model.shapes == ((40,), (100,), (100,), (100,), (10,))
  assert model.parameter_count() == (40 * 100 + 100) + (100 * 100 + 100) + (
      100 * 10 + 10)
  assert arch.describe(model) == "dense:100,relu,res(dense:100,relu),dense:10"


def test_cnn_is_mnist1d_convbase():
  """ConvBase: Conv1d(1, 25, 5, stride 2, padding 1), ReLU, 2x Conv1d(25, 25,
  3, stride 2, padding 1), ReLU, flatten to 125, Linear(125, 10)."""
  model = arch.build("cnn", 40, 10)
  convs = [(1, 25, 5), (25, 25, 3), (25, 25, 3)]  # (in, out, kernel)
  lengths = [40]
  for _, _, k in convs:
    lengths.append(_conv_len(lengths[-1], k, 2, 1))
  assert lengths == [40, 19, 10, 5]
  assert model.shapes == ((40,), (19, 25), (19, 25), (10, 25), (10, 25),
                          (5, 25), (5, 25), (125,), (10,))
  # PyTorch's parameter count of ConvBase: weight [out, in, k] plus bias per
  # conv, then Linear(5 * 25, 10).
  torch_count = sum(o * i * k + o for i, o, k in convs) + (5 * 25 * 10 + 10)
  assert model.parameter_count() == torch_count == 5210
  # Shapes only (traced, nothing computed: the suite stays fast).
  params = jax.eval_shape(model.init, jax.random.key(0))
  assert [tuple(p.w.shape) for p in params if isinstance(p, L.ConvParams)] == [
      (5, 1, 25), (3, 25, 25), (3, 25, 25)]  # fnn's w[k, i, o]
  out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((3, 40),
                                                                 jnp.float32))
  assert out.shape == (3, 10)
  assert arch.describe(model) == ("conv1d:25:5:2:1,relu,conv1d:25:3:2:1,relu,"
                                  "conv1d:25:3:2:1,relu,flatten,dense:10")


def test_a_spec_builds_its_layers_and_appends_the_output_layer():
  model = arch.build("conv1d:4:3:2:1,relu,layernorm,flatten,"
                     "res(dense:20,tanh,res(layernorm:0.001,dense:20))", 9, 3)
  assert model.layers == (
      L.Conv1d(4, 3, stride=2, padding=1), L.Activation("relu"),
      L.LayerNorm(), L.Flatten(),
      L.Residual(L.Dense(20), L.Activation("tanh"),
                 L.Residual(L.LayerNorm(1e-3), L.Dense(20))),
      L.Dense(3))  # appended: the spec did not end in dense
  assert model.shapes[-2:] == ((20,), (3,))
  assert all(l.init_scheme == "he" for l in (model.layers[0],
                                             model.layers[-1]))
  # A last dense of the right width is kept; spaces and case are forgiven.
  same = arch.build(" Dense:5 , TANH ,dense:3", 9, 3)
  assert same.layers == (L.Dense(5), L.Activation("tanh"), L.Dense(3))


@pytest.mark.parametrize("name", ["resmlp", "cnn", "spec"])
def test_describe_writes_the_spec_back(name):
  # 40 - 2 + 1 = 39 positions x 3 channels = 117 features.
  spec = "conv1d:3:2,gelu,flatten,res(layernorm,dense:117,relu),dense:2"
  init = "pytorch" if name != "spec" else "he"
  model = arch.build(spec if name == "spec" else name, 40, 2)
  assert arch.build(arch.describe(model), 40, 2, init=init) == model


def test_init_scheme_of_the_layers():
  assert arch.build("cnn", 40, 10, init="he").layers[0].init_scheme == "he"
  assert arch.build("resmlp", 40, 10).layers[0].init_scheme == "pytorch"
  assert arch.build("dense:4", 3, 4, init="glorot").layers[0].init_scheme == (
      "glorot")


def test_output_and_loss_pass_through():
  model = arch.build("resmlp", 5, 1, output="sigmoid",
                     loss="binary_cross_entropy")
  assert model.output.name == "sigmoid" and model.n_out == 1
  with pytest.raises(ValueError, match="needs output sigmoid"):  # no prefix
    arch.build("cnn", 40, 10, loss="binary_cross_entropy")


BAD_SPECS = [
    ("relux", r"unknown layer 'relux' in architecture spec \(did you mean "
              r"'relu'"),
    ("dense:4,maxpool:2", r"unknown layer 'maxpool:2'"),
    ("relu(dense:3)", r"unknown layer 'relu\(dense:3\)'"),
    ("res(dense:4)x", r"unknown layer 'res\(dense:4\)x'"),
    ("res(dense:4", r"unbalanced '\(' in architecture spec 'res\(dense:4'"),
    ("dense:4),relu", r"unbalanced '\)'"),
    ("res(res(dense:4)", r"unbalanced '\('"),
    ("dense", r"layer 'dense' needs 1 integer after the name \(dense:N\)"),
    ("dense:4:5", r"layer 'dense:4:5' needs 1 integer"),
    ("conv1d:3", r"layer 'conv1d:3' needs 2 to 4 integers"),
    ("conv1d:3:2:1:1:1", r"layer 'conv1d:3:2:1:1:1' needs 2 to 4 integers"),
    ("dense:x", r"layer 'dense:x' has a non-integer argument"),
    ("conv1d:3:5:0", r"layer 'conv1d:3:5:0': Conv1d stride must be a "
                     r"positive int, got 0"),
    ("dense:0", r"layer 'dense:0': Dense n_out must be a positive int"),
    ("layernorm:a", r"layer 'layernorm:a': EPS must be a number"),
    ("layernorm:1:2", r"layer 'layernorm:1:2' takes at most one number"),
    ("flatten:2", r"unknown layer 'flatten:2'"),
    ("relu:2", r"unknown layer 'relu:2'"),
    ("res()", r"layer 'res\(\)': a residual block needs at least one layer"),
    ("res(relu,res())", r"layer 'res\(\)'"),
    ("dense:4,,relu", r"empty layer in architecture spec 'dense:4,,relu'"),
    ("dense:4,", r"empty layer"),
    ("", r"architecture spec must be a non-empty string"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS,
                         ids=[s or "empty" for s, _ in BAD_SPECS])
def test_bad_specs_name_the_token(spec, message):
  with pytest.raises(ValueError, match=message) as info:
    arch.build(spec, 40, 10)
  assert "\n" not in str(info.value)


def test_res_nesting_parses_at_any_depth():
  (layer,) = arch.parse_layers("res(dense:8,res(tanh,res(layernorm)))")
  inner = layer.layers[1]
  assert isinstance(inner, L.Residual) and isinstance(inner.layers[1],
                                                      L.Residual)
  assert inner.layers[1].layers == (L.LayerNorm(),)


@pytest.mark.parametrize("spec,n_in,message", [
    ("conv1d:3:50", 40, r"--arch 'conv1d:3:50' on 40 inputs: layers\[0\] "
                        r"Conv1d.* kernel_size 50 is larger than the padded "
                        r"length 40"),
    ("cnn", 2, r"--arch 'cnn' on 2 inputs: layers\[0\] Conv1d"),
    ("res(dense:5)", 40, r"the Residual block maps \(40,\) to \(5,\)"),
    ("conv1d:3:2", 40, r"layers\[1\] Dense.* put a Flatten\(\) before it"),
    ("dense:7", 40, r"--arch 'dense:7' ends in dense:7, but the data need 10 "
                    r"outputs"),
])
def test_shapes_that_do_not_chain_are_refused(spec, n_in, message):
  with pytest.raises(ValueError, match=message):
    arch.build(spec, n_in, 10)


def test_spec_help_names_every_layer():
  for token in ("dense:N", "conv1d:C:K[:STRIDE[:PAD]]", "layernorm[:EPS]",
                "flatten", "res(", "relu"):
    assert token in arch.SPEC_HELP
  assert arch.NAMED == ("mlp", "resmlp", "cnn")
  with pytest.raises(TypeError, match="arch must be a string"):
    arch.build(None, 4, 2)


def test_user_registered_activation_in_a_spec():
  from fnn import activations
  name = "test_arch_cube"
  fnn.register_activation(name, lambda z: z**3, lambda z, a: 3 * z**2)
  try:
    model = arch.build(f"dense:4,{name}", 3, 2)
    assert arch.describe(model) == f"dense:4,{name},dense:2"
  finally:
    activations.ACTIVATIONS.pop(name)

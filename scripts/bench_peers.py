r"""Benchmark: fnn's one-pass gradient statistics against BackPACK and Opacus.

Times in one process, float32 on the CPU, networks with softmax + categorical
cross-entropy (``x ~ N(0, 1)``, integer labels), ``--arch`` (default both):

- ``mlp``: ReLU MLPs (He init), sizes 40-100-100-10, 784-100-10 and
  784-1024-1024-10 (``--sizes``);
- ``cnn``: MNIST-1D's CNN, ``fnn.arch.cnn(40, 10)`` (PyTorch init): three
  ``Conv1d`` layers (25 channels; kernel 5, 3, 3; stride 2; padding 1) with
  ReLU, flatten 125, dense 10. The torch copy is ``nn.Sequential(Conv1d,
  ReLU, ..., Flatten, Linear)`` on ``x.view(B, 1, 40)`` holding fnn's
  params: ``weight[o, i, j] = w[j, i, o]``, and the Linear's columns
  permuted from fnn's flatten order ``t * C + c`` to torch's ``c * L + t``.

(MNIST-1D's residual MLP is not here: BackPACK's ``extend`` needs its own
branching modules for a skip connection.) Each at batch 32, 128 and 1024, in
four groups:

  norms   ``fnn.per_example_grad_norms`` | BackPACK ``BatchL2Grad``;
  stats   ``fnn.grad_stats`` (mean, norms, second moment, variance, noise
          scale: one pass) | BackPACK ``Variance`` | ``SumGradSquared``;
  dp      a DP-SGD step (clip 1, noise multiplier 1, SGD lr 0.1): jitted
          ``fnn.dp_grad`` + ``optax.sgd`` update | Opacus: forward, backward,
          ``DPOptimizer(SGD).step()``, ``zero_grad()`` on a GradSampleModule;
  per_ex  materialized per-example grads: ``fnn.per_example_grads`` |
          BackPACK ``BatchGrad`` | Opacus ``grad_sample`` (forward + backward)
          | ``torch.func.vmap(grad(functional_call))`` | ``jax.vmap(jax.grad)``
          of the one-example loss ``model.mean_loss(p, x[None], y[None])``.

fnn runs under ``jax.jit`` (model static), timed with ``block_until_ready``.
BackPACK: forward + ``loss.backward()`` in ``with backpack(Ext()):`` on an
``extend``-ed ``nn.Sequential(Linear, ReLU, ...)`` (or the CNN above) +
``CrossEntropyLoss`` (mean) holding fnn's params (``weight = w.T``). Every
peer has its own model copy; torch runs a thread per usable CPU
(``--torch-threads`` sets it); results are freed after the timer stops. A
peer that fails to import is skipped, with an install hint.

Scaling (checked, not assumed; ``g_i``: example i's gradient of its own
loss). With a mean loss BackPACK works on the ``g_i / B``: fnn's norms are
``B sqrt(sum batch_l2)``, second moment ``B sum_grad_squared``, variance
``B^2 variance`` (BackPACK's is ``sgs / B - (grad / B)^2``, the population
variance of the ``g_i / B``), per-example grads ``B grad_batch``. Opacus
scales backprops by ``B`` (mean loss): ``grad_sample`` is ``g_i``;
``DPOptimizer`` clips by ``C / (|g_i| + 1e-6)``, divides by
``expected_batch_size``.

Correctness first (exit code 1 on a mismatch): per-example grads against all
four references (``CHECK_CHUNK`` examples at a time; rtol 1e-4, atol 1e-5 as
bench_grads.py), norms, second moment and variance against BackPACK (atol
``STATS_ATOL`` x the leaf's max for the last two), ``fnn.dp_grad`` against
``DPOptimizer.pre_step``, both noise 0. XLA and torch round differently, so a
pre-activation near 0 could take the other ReLU branch: rows of ``x`` with a
hidden pre-activation within ``KINK_MARGIN`` of 0 are redrawn.

Timing: per group, interleaved rounds (a, b, c, a, ...; ``PAUSE_S`` untimed
sleep when switching between jax and torch), until ``--budget`` s: at least 5
rounds, 3 where a round exceeds the budget (784-1024-1024-10 at batch 1024:
seconds a call for BatchGrad, Opacus, vmap(jax.grad); 7.6 GB of gradients
each, ~13 GB peak), at most ``--repeats``. In a round each contender runs a
block of consecutive calls filling about ``BLOCK_S`` (at most ``MAX_BLOCK``;
one call when a call is longer), each result waited for and freed: the time
per call is one sample (steady state, as in a training loop; a lone small
call after the other framework ran mostly timed a thread pool waking up).
Medians, the range of the rounds' paired peer / fnn ratios, and the other
processes' CPU use. Targets, every cell of the architecture (HOLDS / MISSED;
exit code 0 either way): MLP: norms >= 3x faster than BatchL2Grad;
grad_stats >= 2x faster than each of Variance and SumGradSquared; DP-SGD
step >= 5x faster than Opacus'; per-example grads no slower than BatchGrad.
CNN: norms >= 2x faster than BatchL2Grad; DP-SGD step >= 5x faster than
Opacus' (its stats and per-example groups are printed, without a target).
The work bound printed after them is the peer / fnn ratio of multiply-adds
per example (:func:`work_bounds`; MLPs only).

``--gpu`` runs both frameworks on CUDA, JAX at matmul precision ``highest``
(IEEE float32, as torch's default), torch synchronized after each call.

``--curvature`` times four other groups instead, on the same cells:
``fnn.diag_ggn`` (exact) | BackPACK ``DiagGGNExact``; ``fnn.diag_ggn(
mc_samples=1)`` | ``DiagGGNMC`` (one sample); ``fnn.kfac_factors(kind=
"exact")`` | ``KFLR`` | curvlinops ``KFACLinearOperator(fisher_type=
"type-2")``; ``kind="mc"`` | ``KFAC`` (one sample) | curvlinops ``"mc"``
(curvlinops' KFAC supports Linear and Conv2d only: MLPs; it is optional,
skipped with the reason when it does not import). Conventions, from the
sources: BackPACK's loss square root carries ``1/sqrt(B)`` for
``reduction="mean"`` (``CrossEntropyLossDerivatives._sqrt_hessian``), so
``diag_ggn_exact`` is the GGN of the mean loss, as fnn's; ``kflr`` /
``kfac`` of a Linear weight are ``[G, A]`` with ``G = (1/B) sum_{b,k} s
s^T`` (fnn's ``delta_cov``) and ``A = X^T X / B`` (``a_cov``); of a Conv1d
``A`` is fnn's ``a_cov`` with the patch axis ``(c_in, k)`` instead of ``(k,
c_in)``, but ``G`` sums the positions before the outer product (the bias's
GGN), where KFC (fnn) sums outer products over positions: not compared.
curvlinops scales its type-2 columns by ``1/B`` and its covariances by
``B`` (mean reduction): the same ``G`` and ``A``. Checked: the exact
diagonal and factors against each other; the Monte-Carlo estimates
statistically, each framework's against its own exact value (at least
``MC_DRAWS`` examples x samples, relative Frobenius error per leaf <=
``MC_REL_TOL``); timed, all with one sample and fnn's key fixed. Target:
fnn >= 3x faster than each peer in every cell (HOLDS / MISSED, with the
work bound, :func:`curvature_work_bounds`). ``--kfac-proto`` adds a
prototype of ``kfac_factors`` (:func:`proto_kfac_factors`) to the KFLR
group.

``--sizes`` alone (without ``--arch``) runs only those MLPs.
``--conv-proto`` swaps in ``bench_grads.py``'s prototype of faster Conv1d
contractions (not fnn's code; its results are checked like fnn's).

Usage:
  .venv/bin/python scripts/bench_peers.py [--arch mlp,cnn]
      [--sizes 40,100,100,10] [--batches 32,128] [--repeats 100]
      [--budget 2.0] [--markdown] [--json PATH] [--gpu]
      [--torch-threads N] [--conv-proto] [--curvature [--kfac-proto]]
"""
from __future__ import annotations

import os

import sys

# The benchmark is defined on the CPU; --gpu runs both sides on CUDA instead.
# Set before jax is imported.
GPU = "--gpu" in sys.argv[1:]
os.environ.setdefault("JAX_PLATFORMS", "cuda" if GPU else "cpu")

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Callable, NamedTuple, Optional  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fnn  # noqa: E402

if GPU:
  # Full float32 on both sides: torch's CUDA matmuls default to IEEE float32
  # (allow_tf32 False), JAX's to TF32, which the checks would reject.
  jax.config.update("jax_default_matmul_precision", "highest")


def _load_script(name: str):
  r"""``scripts/<name>.py`` as a module (shared helpers of the benchmarks)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# machine_info, write_json_atomic, the parser, kink_safe_inputs; OtherLoad.
bg, bt = _load_script("bench_grads"), _load_script("bench_train")

RTOL, ATOL = 1e-4, 1e-5  # as in bench_grads.py
STATS_ATOL = 1e-5  # second moment / variance: times the leaf's max |entry|
CHECK_CHUNK = 256  # examples per chunk when checking per-example gradients
MIN_REPEATS, MIN_REPEATS_SLOW = 5, 3
PAUSE_S = 0.005  # untimed, when switching between jax and torch
OTHER_LOAD_WARN = 0.1  # CPUs busy with other processes: warn above this
CLIP, NOISE, LR = 1.0, 1.0, 0.1  # DP-SGD
BLOCK_S = 0.02  # a timed sample: consecutive calls filling about this long
MAX_BLOCK = 50  # calls in one sample at most
DEVICE = "cuda" if GPU else "cpu"  # torch's
INSTALL = {"torch": "pip install torch==2.13.0",
           "backpack": "pip install --no-deps backpack-for-pytorch unfoldNd "
                       "&& pip install einops",
           "opacus": "pip install torch==2.13.0 opacus",
           # A plain install replaces the CPU torch with a CUDA build (its
           # resolver pulls torch 2.14 and nvidia-* wheels); its pure-Python
           # dependencies beside BackPACK are einconv and linear_operator.
           "curvlinops": "pip install --no-deps curvlinops-for-pytorch "
                         "einconv linear_operator"}
GROUPS = ("norms", "stats", "dp", "per_ex")
ARCHS = ("mlp", "cnn")  # BackPACK cannot extend a residual block as is
TARGETS = {  # arch: (group, baseline (None: the faster peer), least, name)
    "mlp": (
        ("norms", "BatchL2Grad", 3.0,
         "mlp: fnn norms >= 3x faster than BackPACK BatchL2Grad"),
        ("stats", None, 2.0, "mlp: fnn grad_stats >= 2x faster than each of "
         "BackPACK Variance and SumGradSquared"),
        ("dp", "Opacus", 5.0, "mlp: fnn DP-SGD step >= 5x faster than Opacus"),
        ("per_ex", "BatchGrad", 1.0,
         "mlp: fnn per-example grads no slower than BackPACK BatchGrad"),
    ),
    "cnn": (
        ("norms", "BatchL2Grad", 2.0,
         "cnn: fnn norms >= 2x faster than BackPACK BatchL2Grad"),
        ("dp", "Opacus", 5.0, "cnn: fnn DP-SGD step >= 5x faster than Opacus"),
    ),
}


class Contender(NamedTuple):
  name: str
  fn: Callable[[], object]  # one call; jax results are blocked on
  framework: str  # "jax" or "torch"
  cleanup: Optional[Callable[[], None]] = None  # untimed, after each call


# --------------------------------------------------------------------------
# fnn and JAX.

FNN = {
    "per_ex": jax.jit(fnn.per_example_grads, static_argnums=0),
    "norms": jax.jit(fnn.per_example_grad_norms, static_argnums=0),
    # What BackPACK's Variance and SumGradSquared leave behind (.grad plus
    # the statistic): fnn's mean, second moment and variance, one pass.
    "stats": jax.jit(lambda model, params, x, y: (lambda s: (
        s.mean, s.second_moment, s.variance))(
            fnn.grad_stats(model, params, x, y)), static_argnums=0),
    "dp_grad": jax.jit(fnn.dp_grad, static_argnums=0,
                       static_argnames=("clip", "noise")),
}
SGD = optax.sgd(LR)


@functools.partial(jax.jit, static_argnums=0)
def fnn_dp_step(model, params, opt_state, x, y, key):
  r"""One DP-SGD step: ``fnn.dp_grad`` then the ``optax.sgd`` update."""
  g = fnn.dp_grad(model, params, x, y, clip=CLIP, noise=NOISE, key=key).grads
  updates, opt_state = SGD.update(g, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnums=0)
def vmap_grad(model, params, x, y):
  r"""``jax.vmap(jax.grad)`` of the one-example loss: the JAX reference."""
  one = lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])  # noqa: E731
  return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)


def fnn_contenders(model, params, x, y) -> dict:
  r"""``{group: [Contender]}``: fnn's, and ``vmap(jax.grad)`` (``ref``)."""
  opt_state, key = SGD.init(params), jax.random.key(42)
  jx = lambda name, fn: [Contender(name, fn, "jax")]  # noqa: E731
  return {
      "norms": jx("fnn", lambda: FNN["norms"](model, params, x, y)),
      "stats": jx("fnn", lambda: FNN["stats"](model, params, x, y)),
      "dp": jx("fnn", lambda: fnn_dp_step(model, params, opt_state, x, y,
                                          key)),
      "per_ex": jx("fnn", lambda: FNN["per_ex"](model, params, x, y)),
      "ref": jx("vmap(jax.grad)", lambda: vmap_grad(model, params, x, y)),
  }


# --------------------------------------------------------------------------
# PyTorch peers.


def import_peers(curvature: bool = False) -> dict:
  r"""The importable peers (``torch``, ``backpack``, ``opacus``; with
  ``curvature`` ``torch``, ``backpack``, ``curvlinops``) by name."""
  peers = {}
  names = ((("torch", "torch.func"), ("backpack", "backpack.extensions"))
           + ((("curvlinops", "curvlinops"),) if curvature
              else (("opacus", "opacus.optimizers"),)))
  for name, sub in names:
    try:
      importlib.import_module(sub)
      peers[name] = sys.modules[name]
    except ImportError as e:
      print(f"peer missing, skipped: {name} ({e}); install: "
            f"{INSTALL[name]}"
            + ("; BackPACK and Opacus need it too" if name == "torch" else ""))
      if name == "torch":
        break
  return peers


def torch_mlp(torch, params):
  r"""``nn.Sequential(Linear, ReLU, ..., Linear)`` holding fnn's params."""
  layers = []
  for p in params:
    lin = torch.nn.Linear(*p.w.shape)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(np.array(p.w).T))
      lin.bias.copy_(torch.from_numpy(np.array(p.b)))
    layers += [lin, torch.nn.ReLU()]
  return torch.nn.Sequential(*layers[:-1]).to(DEVICE)


def _flatten_inputs(model) -> dict:
  r"""``{layer index: (L, C)}`` for each Dense right after a Flatten of
  ``[L, C]``: its input order is fnn's ``t * C + c``, torch's ``c * L + t``."""
  out = {}
  for i, layer in enumerate(model.layers[:-1]):
    if isinstance(layer, fnn.layers.Flatten) and len(model.shapes[i]) == 2:
      out[i + 1] = tuple(model.shapes[i])
  return out


def torch_model(torch, model, params):
  r"""The torch copy of ``model`` holding fnn's ``params``: an MLP, or a
  Sequential of Conv1d, ReLU, Flatten and Dense layers (on inputs
  ``[B, C, L]``, see :func:`torch_input`)."""
  if isinstance(model, fnn.MLP):
    return torch_mlp(torch, params)
  nn, layers, perm = torch.nn, [], _flatten_inputs(model)
  for i, (layer, p, shape) in enumerate(zip(model.layers, params,
                                            model.shapes)):
    if isinstance(layer, fnn.layers.Conv1d):
      k, c_in, c_out = p.w.shape
      mod = nn.Conv1d(c_in, c_out, k, stride=layer.stride,
                      padding=layer.padding)
      w = np.transpose(np.array(p.w), (2, 1, 0))  # [c_out, c_in, k]
    elif isinstance(layer, fnn.layers.Dense):
      mod = nn.Linear(*p.w.shape)
      w = np.array(p.w).T  # [n_out, n_in]
      if i in perm:  # columns from t * C + c to c * L + t
        length, c = perm[i]
        w = np.swapaxes(w.reshape(-1, length, c), -1, -2).reshape(w.shape)
    elif isinstance(layer, fnn.layers.Activation) and layer.name == "relu":
      layers.append(nn.ReLU())
      continue
    elif isinstance(layer, fnn.layers.Flatten):
      layers.append(nn.Flatten())
      continue
    else:
      raise ValueError(f"no torch copy of layer {layer!r}")
    with torch.no_grad():
      mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
      mod.bias.copy_(torch.from_numpy(np.array(p.b)))
    layers.append(mod)
  return nn.Sequential(*layers).to(DEVICE)


def torch_input(model, x) -> np.ndarray:
  r"""fnn's ``x: [B, L]`` or ``[B, L, C]`` as torch's Conv1d input
  ``[B, C, L]``; an MLP's ``[B, n_in]`` as it is."""
  x = np.array(x)
  if isinstance(model, fnn.MLP) or not any(
      isinstance(l, fnn.layers.Conv1d) for l in model.layers):
    return x
  return x[:, None, :] if x.ndim == 2 else np.ascontiguousarray(
      np.swapaxes(x, 1, 2))


def _to_fnn(model, tensors, scale=1.0):
  r"""torch's parameter tensors ``[w0, b0, w1, ...]`` (Linear ``[..., out,
  in]``, Conv1d ``[..., out, in, k]``; any leading batch axes) in fnn's
  params layout for ``model``."""
  # A copy: zero_grad() and the next backward overwrite torch's buffers.
  t = [v.detach().cpu().numpy() * np.float32(scale) for v in tensors]
  pairs = iter(zip(t[::2], t[1::2]))
  if isinstance(model, fnn.MLP):
    return tuple(fnn.Dense(np.swapaxes(w, -1, -2), b) for w, b in pairs)
  out, perm = [], _flatten_inputs(model)
  for i, layer in enumerate(model.layers):
    if isinstance(layer, fnn.layers.Conv1d):
      w, b = next(pairs)
      out.append(fnn.layers.ConvParams(np.swapaxes(w, -1, -3), b))
    elif isinstance(layer, fnn.layers.Dense):
      w, b = next(pairs)
      if i in perm:  # [..., O, C L] (c * L + t) -> [..., L C, O] (t * C + c)
        length, c = perm[i]
        w = np.swapaxes(w.reshape(w.shape[:-1] + (c, length)), -1, -3)
        out.append(fnn.Dense(w.reshape(w.shape[:-3] + (length * c, -1)), b))
      else:
        out.append(fnn.Dense(np.swapaxes(w, -1, -2), b))
    else:
      out.append(())
  return tuple(out)


class TorchPeers:
  r"""The torch side of one (model, batch) cell: one model copy per peer."""

  def __init__(self, peers: dict, model, params, x, y):
    torch = peers["torch"]
    self.to_fnn = functools.partial(_to_fnn, model)
    self.x = torch.from_numpy(torch_input(model, x)).to(DEVICE)
    self.y = torch.from_numpy(np.array(y).astype(np.int64)).to(DEVICE)
    self.ce = torch.nn.CrossEntropyLoss()  # reduction "mean", as fnn
    self.bp = self.gsm = self.dp = None
    if "backpack" in peers:
      from backpack import extend
      self.bp = extend(torch_model(torch, model, params))
      self.bp_ce = extend(torch.nn.CrossEntropyLoss())
    if "opacus" in peers:
      from opacus import GradSampleModule
      from opacus.optimizers import DPOptimizer
      self.gsm = GradSampleModule(torch_model(torch, model, params))
      self.dp = GradSampleModule(torch_model(torch, model, params))
      self.dp_opt = DPOptimizer(
          torch.optim.SGD(self.dp.parameters(), lr=LR),
          noise_multiplier=NOISE, max_grad_norm=CLIP,
          expected_batch_size=self.x.shape[0])
    self.plain = torch_model(torch, model, params)
    self.tparams = {k: v.detach() for k, v in self.plain.named_parameters()}

  # The timed calls.

  def backpack(self, ext: str, x, y):
    from backpack import backpack, extensions
    loss = self.bp_ce(self.bp(x), y)
    with backpack(getattr(extensions, ext)()):
      loss.backward()

  def clear_backpack(self):
    for p in self.bp.parameters():
      p.grad = None
      for field in ("grad_batch", "batch_l2", "variance", "sum_grad_squared"):
        if hasattr(p, field):
          delattr(p, field)

  def grad_sample(self, x, y):
    self.ce(self.gsm(x), y).backward()

  def clear_grad_sample(self):  # zero_grad also sets grad_sample to None
    self.gsm.zero_grad(set_to_none=True)

  def dp_step(self):
    self.ce(self.dp(self.x), self.y).backward()
    self.dp_opt.step()
    self.dp_opt.zero_grad()

  def torch_func(self, x, y):
    from torch.func import functional_call, grad, vmap

    def one(p, xi, yi):
      return self.ce(functional_call(self.plain, p, (xi[None],)), yi[None])

    return vmap(grad(one), in_dims=(None, 0, 0))(self.tparams, x, y)

  def contenders(self) -> dict:
    r"""``{group: [Contender]}`` of the peers that are there."""
    out = {g: [] for g in GROUPS}
    xy = (self.x, self.y)
    if self.bp is not None:
      for group, ext in (("norms", "BatchL2Grad"), ("stats", "Variance"),
                         ("stats", "SumGradSquared"), ("per_ex", "BatchGrad")):
        out[group].append(Contender(ext, functools.partial(
            self.backpack, ext, *xy), "torch", self.clear_backpack))
    if self.gsm is not None:
      out["dp"].append(Contender("Opacus", self.dp_step, "torch"))
      out["per_ex"].append(Contender("Opacus", functools.partial(
          self.grad_sample, *xy), "torch", self.clear_grad_sample))
    out["per_ex"].append(Contender(
        "torch.func", functools.partial(self.torch_func, *xy), "torch"))
    return out

  # Results for the checks, in fnn's scale and layout.

  def backpack_result(self, ext: str, field: str, sl=slice(None)) -> list:
    self.backpack(ext, self.x[sl], self.y[sl])
    out = [getattr(p, field) for p in self.bp.parameters()]
    self.clear_backpack()
    return out

  def per_example(self, sl: slice) -> dict:
    r"""Per-example gradient references for examples ``sl``, lazily."""
    x, y = self.x[sl], self.y[sl]
    refs = {"torch.func": lambda: self.to_fnn(self.torch_func(x, y).values())}
    if self.bp is not None:  # grad_batch: of the chunk's mean loss, g_i / n
      refs["BackPACK BatchGrad"] = lambda: self.to_fnn(self.backpack_result(
          "BatchGrad", "grad_batch", sl), x.shape[0])
    if self.gsm is not None:
      def opacus():
        self.grad_sample(x, y)
        out = self.to_fnn([p.grad_sample for p in self.gsm.parameters()])
        self.clear_grad_sample()
        return out
      refs["Opacus grad_sample"] = opacus
    return refs

  def opacus_clipped_mean(self):
    r"""``DPOptimizer``'s gradient with noise 0: the clipped mean."""
    self.dp_opt.noise_multiplier = 0.0
    self.ce(self.dp(self.x), self.y).backward()
    self.dp_opt.pre_step()  # clip, sum, noise, / expected_batch_size
    out = self.to_fnn([p.grad for p in self.dp.parameters()])
    self.dp_opt.zero_grad()
    self.dp_opt.noise_multiplier = NOISE
    return out


# --------------------------------------------------------------------------
# Correctness.


@jax.jit
def _check_leaf(got, want, atol_abs, atol_rel):
  r"""``(max |got - want|, max excess over the tolerance, atol)``."""
  atol = atol_abs + atol_rel * jnp.max(jnp.abs(want))
  err = jnp.abs(got - want)
  excess = jnp.where(jnp.isfinite(err), err - atol - RTOL * jnp.abs(want),
                     jnp.inf)
  return jnp.max(err), jnp.max(excess), atol


def check_close(label: str, got, want, scaled_atol: bool = False) -> float:
  r"""Exits with code 1 unless ``|got - want| <= atol + RTOL |want|``.

  Leaf by leaf; ``atol = ATOL``, or ``STATS_ATOL * max |want|`` of the leaf
  with ``scaled_atol``. Returns the largest ``|got - want|``.
  """
  got_l, want_l = jax.tree.leaves(got), jax.tree.leaves(want)
  if [g.shape for g in got_l] != [w.shape for w in want_l]:
    _abort(f"{label}: shapes differ: {[g.shape for g in got_l]} vs "
           f"{[w.shape for w in want_l]}")
  worst = 0.0
  for i, (g, w) in enumerate(zip(got_l, want_l)):
    err, excess, atol = (float(v) for v in _check_leaf(
        g, jnp.asarray(w), 0.0 if scaled_atol else ATOL,
        STATS_ATOL if scaled_atol else 0.0))
    if not excess <= 0.0:
      _abort(f"{label}: leaf {i} (shape {g.shape}): max |fnn - ref| = "
             f"{err:.3g} exceeds atol {atol:.3g} + rtol {RTOL:g} * |ref| by "
             f"{excess:.3g}")
    worst = max(worst, err)
  return worst


def _abort(message: str):
  print(f"\nbench_peers.py: MISMATCH, aborting: {message}", file=sys.stderr)
  sys.exit(1)


def check_cell(model, params, x, y, tp: Optional[TorchPeers]) -> dict:
  r"""Checks every fnn result against every reference; returns max diffs."""
  b, diffs = x.shape[0], {}
  where = f"{bg.model_label(model)}, batch {b}"
  for lo in range(0, b, CHECK_CHUNK):  # per-example gradients, by chunks
    sl = slice(lo, lo + CHECK_CHUNK)
    got = FNN["per_ex"](model, params, x[sl], y[sl])
    refs = {"vmap(jax.grad)": lambda: vmap_grad(model, params, x[sl], y[sl]),
            **(tp.per_example(sl) if tp is not None else {})}
    for name, ref in refs.items():
      d = check_close(f"per-example grads vs {name}, {where}, examples "
                      f"{lo}:{lo + x[sl].shape[0]}", got, ref())
      diffs[f"per_ex vs {name}"] = max(diffs.get(f"per_ex vs {name}", 0.0), d)
    del got
  if tp is not None and tp.bp is not None:
    bl2 = sum(tp.backpack_result("BatchL2Grad", "batch_l2")).cpu().numpy()
    diffs["norms vs BatchL2Grad"] = check_close(
        f"norms vs BackPACK BatchL2Grad (B sqrt(sum)), {where}",
        FNN["norms"](model, params, x, y), b * np.sqrt(bl2))
    _, second_moment, variance = FNN["stats"](model, params, x, y)
    for ext, field, got, scale in (
        ("SumGradSquared", "sum_grad_squared", second_moment, b),
        ("Variance", "variance", variance, b * b)):
      diffs[f"{field} vs {ext}"] = check_close(
          f"grad_stats vs BackPACK {ext} (x {scale}), {where}", got,
          tp.to_fnn(tp.backpack_result(ext, field), scale), scaled_atol=True)
  if tp is not None and tp.dp is not None:
    diffs["dp_grad vs Opacus"] = check_close(
        f"dp_grad (noise 0) vs Opacus DPOptimizer.pre_step, {where}",
        FNN["dp_grad"](model, params, x, y, clip=CLIP, noise=0.0,
                       key=jax.random.key(0)).grads, tp.opacus_clipped_mean())
  return diffs


# --------------------------------------------------------------------------
# Timing.


def _sync(framework: str) -> None:
  r"""Waits for the framework's queued device work (torch on CUDA)."""
  if GPU and framework == "torch":
    sys.modules["torch"].cuda.synchronize()


def _time_call(c: Contender, calls: int = 1) -> float:
  r"""Seconds per call of ``calls`` consecutive calls of ``c``.

  Each call's result is waited for (``block_until_ready``; CUDA synchronize
  for torch on the GPU) and freed, and its cleanup run, before the next call,
  inside the timed block.
  """
  t0 = time.perf_counter()
  for _ in range(calls):
    out = c.fn()
    if c.framework == "jax":
      jax.block_until_ready(out)
    _sync(c.framework)
    del out  # freed before the next call, as the torch grad fields are
    if c.cleanup is not None:
      c.cleanup()
  return (time.perf_counter() - t0) / calls


def block_sizes(first_s: list[float]) -> list[int]:
  r"""Calls per timed sample: enough consecutive calls to fill ``BLOCK_S``.

  A sample is a block of consecutive calls (steady state, as in a training
  loop) rather than one call after the other framework ran: a lone call of a
  sub-millisecond function then mostly measures waking the thread pool up.
  Slow calls (over ``BLOCK_S``) are timed one at a time, as before.
  """
  return [max(1, min(MAX_BLOCK, math.ceil(BLOCK_S / max(t, 1e-6))))
          for t in first_s]


def time_group(contenders: list[Contender], max_repeats: int,
               budget_s: float) -> tuple[list[list[float]], list[int]]:
  r"""Interleaved rounds a, b, c, a, ...: per contender, s per call.

  A round times one block of consecutive calls per contender
  (:func:`block_sizes`). Rounds run until ``rounds * median(round) >=
  budget_s``; at least ``MIN_REPEATS`` (``MIN_REPEATS_SLOW`` where a round
  exceeds the budget), at most ``max_repeats`` rounds.
  """
  first = [_time_call(c) for c in contenders]  # warm, and sizes the blocks
  calls = block_sizes(first)
  samples, rounds, last = [[] for _ in contenders], [], None
  while len(rounds) < max_repeats:
    if rounds:
      n, round_s = len(rounds), statistics.median(rounds)
      least = MIN_REPEATS_SLOW if round_s > budget_s else MIN_REPEATS
      if n >= least and n * round_s >= budget_s:
        break
    for s, c, k in zip(samples, contenders, calls):
      if last is not None and c.framework != last:
        time.sleep(PAUSE_S)  # let the other framework's threads go idle
      s.append(_time_call(c, k))
      last = c.framework
    rounds.append(sum(s[-1] * k for s, k in zip(samples, calls)))
  return samples, calls


def round_ratio_range(cs: list[Contender], samples) -> dict:
  r"""Per peer, the lowest and highest of the rounds' ``peer / fnn`` ratios.

  Rounds are interleaved, so each round's ratio is a paired measurement; a
  median speedup whose range straddles a target is a tie within this
  machine's noise, not a result.
  """
  fnn_s = samples[[c.name for c in cs].index("fnn")]
  return {c.name: [min(r := [p / f for p, f in zip(s, fnn_s)]), max(r)]
          for c, s in zip(cs, samples) if c.name != "fnn"}


def bench_cell(model, params, x, y, peers, max_repeats, budget_s, log
               ) -> dict:
  r"""Checks, then times the four groups of one (sizes, batch) cell."""
  t0 = time.perf_counter()
  tp = TorchPeers(peers, model, params, x, y) if "torch" in peers else None
  mlp = isinstance(model, fnn.MLP)
  cell = {"arch": bg.arch_of(model), "model": bg.model_label(model),
          "sizes": list(model.sizes) if mlp else None,
          "batch": int(x.shape[0]),
          "work_bound": work_bounds(model.sizes) if mlp else None,
          "max_abs_diff": check_cell(model, params, x, y, tp)}
  groups = fnn_contenders(model, params, x, y)
  for group, cs in (tp.contenders() if tp else {}).items():
    groups[group] += cs
  groups["per_ex"] += groups.pop("ref")
  for c in (c for cs in groups.values() for c in cs):
    _time_call(c)  # warm up (compile) every contender
  cell["warmup_s"] = time.perf_counter() - t0
  with bt.OtherLoad() as load:
    for group, cs in groups.items():
      samples, calls = time_group(cs, max_repeats, budget_s)
      ms = {c.name: 1e3 * statistics.median(s) for c, s in zip(cs, samples)}
      cell[group] = {
          "ms": ms, "repeats": len(samples[0]),
          "calls_per_sample": {c.name: k for c, k in zip(cs, calls)},
          "samples_ms": {c.name: [1e3 * t for t in s]
                         for c, s in zip(cs, samples)},
          "speedup": {k: v / ms["fnn"] for k, v in ms.items() if k != "fnn"},
          "speedup_range": round_ratio_range(cs, samples)}
  cell.update(other_load_cpus=load.cpus, steal_cpus=load.steal)
  log(f"  {cell['model']:>18} batch {x.shape[0]:>5}: "
      + "; ".join(f"{g} " + "/".join(f"{v:.3g}" for v in cell[g]["ms"]
                                     .values()) + f" ms x{cell[g]['repeats']}"
                  for g in GROUPS)
      + f"; checks max |diff| {max(cell['max_abs_diff'].values()):.2g}")
  return cell


# --------------------------------------------------------------------------
# Curvature (--curvature): fnn's exact-GGN family against BackPACK's
# second-order extensions and, where installed, curvlinops' KFAC.

CURV_GROUPS = ("diag_ggn", "diag_ggn_mc", "kflr", "kfac")
CURV_KEY = 42  # fnn's Monte-Carlo draws (the same each timed call)
# Statistical checks of the Monte-Carlo estimates: each framework's estimate
# from MC_DRAWS (examples x samples, at least) draws against its own exact
# value, per leaf, ||mc - exact||_F / ||exact||_F <= MC_REL_TOL. Both sides
# are unbiased (a label drawn from softmax(z), the loss's gradient as the
# column: E[c c^T] = H); with >= 4096 rank-one terms per entry the error
# measured here was 0.01-0.06 (the output layer's 10-entry bias the
# largest), so 0.2 leaves room for a bad seed and still catches a factor of
# 2 or a missing 1/B.
MC_DRAWS = 4096
MC_REL_TOL = 0.2
# BackPACK's extension and the field it fills, per group.
BACKPACK_CURV = {"diag_ggn": ("DiagGGNExact", "diag_ggn_exact"),
                 "diag_ggn_mc": ("DiagGGNMC", "diag_ggn_mc"),
                 "kflr": ("KFLR", "kflr"), "kfac": ("KFAC", "kfac")}
CURVLINOPS = {"kflr": ("curvlinops type-2", "type-2"),
              "kfac": ("curvlinops mc", "mc")}
CURV_LEAST = 3.0  # fnn at least this many times faster than each peer
CURV_TARGETS = {  # arch: ((group, peer), ...); the name says the target
    "mlp": (("diag_ggn", "DiagGGNExact"), ("diag_ggn_mc", "DiagGGNMC"),
            ("kflr", "KFLR"), ("kfac", "KFAC"),
            ("kflr", "curvlinops type-2"), ("kfac", "curvlinops mc")),
    "cnn": (("diag_ggn", "DiagGGNExact"), ("diag_ggn_mc", "DiagGGNMC"),
            ("kflr", "KFLR"), ("kfac", "KFAC")),
}
CURV_TITLES = {"diag_ggn": "fnn.diag_ggn (exact)",
               "diag_ggn_mc": "fnn.diag_ggn(mc_samples=1)",
               "kflr": "fnn.kfac_factors(kind='exact')",
               "kfac": "fnn.kfac_factors(kind='mc')"}

FNN_CURV = {
    "diag_ggn": jax.jit(fnn.diag_ggn, static_argnums=0,
                        static_argnames=("mc_samples",)),
    "kfac": jax.jit(fnn.kfac_factors, static_argnums=0,
                    static_argnames=("kind",)),
}


def proto_kfac_factors(model, params, x, y, *, kind: str, key=None):
  r"""A prototype for ``fnn/stats.py``'s ``kfac_factors`` (``--kfac-proto``):
  the same factors, with ``a_cov`` and ``a_mean`` from the ``B`` examples'
  inputs instead of the ``B K`` (example, column) rows.

  ``kfac_factors(kind="exact")`` flattens the square-root factors to ``B K``
  rows and calls each kind's ``kfac``, so ``a_prev.T @ a_prev`` runs over
  ``K`` copies of every input (then divides by ``K``): ``K sum n_in^2``
  multiply-adds an example instead of ``sum n_in^2`` (27.1M against 2.7M at
  784-1024-1024-10, more than the ``K`` backward passes' 10.6M). Here the
  input covariance takes column 0 (``a_prev`` is the same in every column,
  as ``Outer.diag_ggn`` already uses) and only ``delta_cov`` runs over the
  ``B K`` rows. Not fnn's code."""
  from fnn import curvature, gradients
  from fnn.layers import kinds
  fs = curvature.sqrt_factors(model, params, x, y,
                              mc_samples=1 if kind == "mc" else 0, key=key)
  b = x.shape[0]
  out = []
  for _, _, lkind, f in gradients.kind_leaves(model, fs):
    rows = lambda v: v.reshape((-1,) + v.shape[2:])  # noqa: E731  [B K, ...]
    if isinstance(lkind, kinds.Outer):
      a, d = f.a_prev[:, 0], rows(f.delta)  # (B, n_in), (B K, n_out)
      out.append(fnn.KFACFactors(a.T @ a / b, d.T @ d / b, jnp.mean(a, 0)))
    elif isinstance(lkind, kinds.Conv):
      # One 2-D matmul each over the (example, position) rows (XLA:CPU's
      # dot with two contracting dims is slow, see bench_grads --conv-proto).
      p = f.patches[:, 0]  # (B, T, k c_in)
      p2 = p.reshape(-1, p.shape[-1])  # (B T, k c_in)
      d2 = f.delta.reshape(-1, f.delta.shape[-1])  # (B K T, c_out)
      out.append(fnn.KFACFactors(p2.T @ p2 / b, d2.T @ d2 / b,
                                 jnp.mean(jnp.sum(p, 1), 0)))
    else:
      out.append(None)
  return tuple(out)


PROTO_KFAC = jax.jit(proto_kfac_factors, static_argnums=0,
                     static_argnames=("kind",))


def fnn_curv_contenders(model, params, x, y, proto: bool) -> dict:
  r"""``{group: [Contender]}``: fnn's side of the curvature groups."""
  key = jax.random.key(CURV_KEY)
  jx = lambda name, fn: Contender(name, fn, "jax")  # noqa: E731
  out = {
      "diag_ggn": [jx("fnn", lambda: FNN_CURV["diag_ggn"](model, params, x,
                                                         y))],
      "diag_ggn_mc": [jx("fnn", lambda: FNN_CURV["diag_ggn"](
          model, params, x, y, mc_samples=1, key=key))],
      "kflr": [jx("fnn", lambda: FNN_CURV["kfac"](model, params, x, y,
                                                   kind="exact"))],
      "kfac": [jx("fnn", lambda: FNN_CURV["kfac"](model, params, x, y,
                                                   kind="mc", key=key))],
  }
  if proto:
    out["kflr"].append(jx("fnn proto", lambda: PROTO_KFAC(
        model, params, x, y, kind="exact")))
  return out


def _kron_perms(model, params) -> list:
  r"""Per parameter layer, the index map from fnn's input-factor order to
  torch's (``None``: the same): a Conv1d's patches are ``(k, c_in)`` in fnn
  (``j c_in + c``) and ``(c_in, k)`` in torch's unfold (``c k + j``); a Dense
  after a Flatten of ``[L, C]`` reads ``t C + c`` in fnn, ``c L + t`` in
  torch."""
  if isinstance(model, fnn.MLP):
    return [None] * len(model.sizes[1:])
  perms, flat = [], _flatten_inputs(model)
  for i, (layer, p) in enumerate(zip(model.layers, params)):
    if isinstance(layer, fnn.layers.Conv1d):
      k, c_in, _ = p.w.shape
      perms.append(np.array([c * k + j for j in range(k)
                             for c in range(c_in)]))
    elif isinstance(layer, fnn.layers.Dense):
      if i in flat:
        length, c = flat[i]
        perms.append(np.array([cc * length + t for t in range(length)
                               for cc in range(c)]))
      else:
        perms.append(None)
  return perms


class CurvPeers:
  r"""The torch side of one curvature cell: a BackPACK-extended copy (and
  curvlinops' KFAC operators, MLPs only), holding fnn's params."""

  def __init__(self, peers: dict, model, params, x, y):
    torch = peers["torch"]
    self.torch, self.model = torch, model
    self.to_fnn = functools.partial(_to_fnn, model)
    self.x = torch.from_numpy(torch_input(model, x)).to(DEVICE)
    self.y = torch.from_numpy(np.array(y).astype(np.int64)).to(DEVICE)
    self.bp = self.cl = None
    if "backpack" in peers:
      from backpack import extend
      self.bp = extend(torch_model(torch, model, params))
      self.bp_ce = extend(torch.nn.CrossEntropyLoss())
    if "curvlinops" in peers and isinstance(model, fnn.MLP):
      self.cl_model = torch_model(torch, model, params)
      self.cl = {name: self.kfac_operator(fisher, 1)
                 for name, fisher in CURVLINOPS.values()}

  def kfac_operator(self, fisher: str, mc_samples: int):
    from curvlinops import KFACLinearOperator
    return KFACLinearOperator(
        self.cl_model, self.torch.nn.CrossEntropyLoss(),
        list(self.cl_model.parameters()), [(self.x, self.y)],
        check_deterministic=False, fisher_type=fisher,
        mc_samples=mc_samples, num_data=self.x.shape[0],
        num_per_example_loss_terms=1)

  def backpack(self, ext: str, **kwargs):
    from backpack import backpack, extensions
    loss = self.bp_ce(self.bp(self.x), self.y)
    with backpack(getattr(extensions, ext)(**kwargs)):
      loss.backward()

  def clear_backpack(self):
    for p in self.bp.parameters():
      p.grad = None
      for _, field in BACKPACK_CURV.values():
        if hasattr(p, field):
          delattr(p, field)

  @staticmethod
  def kfac_factors(op):
    r"""(Re)computes curvlinops' Kronecker factors (from empty caches)."""
    op._input_covariances, op._gradient_covariances = {}, {}
    op.compute_kronecker_factors()

  @staticmethod
  def clear_kfac(op):
    op._input_covariances, op._gradient_covariances = {}, {}

  def contenders(self) -> dict:
    out = {g: [] for g in CURV_GROUPS}
    if self.bp is not None:
      for group, (ext, _) in BACKPACK_CURV.items():
        out[group].append(Contender(ext, functools.partial(
            self.backpack, ext), "torch", self.clear_backpack))
    if self.cl is not None:
      for group, (name, _) in CURVLINOPS.items():
        op = self.cl[name]
        out[group].append(Contender(
            name, functools.partial(self.kfac_factors, op), "torch",
            functools.partial(self.clear_kfac, op)))
    return out

  # Results for the checks, in fnn's layout.

  def backpack_result(self, ext: str, **kwargs) -> list:
    self.backpack(ext, **kwargs)
    field = dict(BACKPACK_CURV.values())[ext]
    out = [getattr(p, field) for p in self.bp.parameters()]
    self.clear_backpack()
    return out

  def backpack_kron(self, ext: str, **kwargs) -> list:
    r"""Per parameter layer ``(G, A)``: BackPACK's ``weight.<field> = [G,
    A]`` (``kron(G, A)``: output factor first), as numpy."""
    res = self.backpack_result(ext, **kwargs)
    return [(w[0].detach().cpu().numpy(), w[1].detach().cpu().numpy())
            for w in res[::2]]

  def curvlinops_kron(self, fisher: str, mc_samples: int = 1) -> list:
    op = self.kfac_operator(fisher, mc_samples)
    op.compute_kronecker_factors()
    names = list(op._mapping)  # module names, in the params' order
    return [(op._gradient_covariances[n].detach().cpu().numpy(),
             op._input_covariances[n].detach().cpu().numpy()) for n in names]


def _rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _check_mc(label: str, got_leaves, want_leaves) -> float:
  r"""Exits with code 1 unless every leaf's relative Frobenius error is at
  most ``MC_REL_TOL``; returns the largest."""
  worst = 0.0
  for i, (g, w) in enumerate(zip(got_leaves, want_leaves)):
    err = _rel_err(g, w)
    if not err <= MC_REL_TOL:
      _abort(f"{label}: leaf {i}: ||mc - exact|| / ||exact|| = {err:.3g} > "
             f"{MC_REL_TOL:g}")
    worst = max(worst, err)
  return worst


def _fnn_kron(factors, perms) -> list:
  r"""fnn's ``KFACFactors`` per layer as ``(delta_cov, a_cov)`` numpy, the
  input factor permuted to torch's order (``perms``: :func:`_kron_perms`)."""
  out = []
  for f, perm in zip(factors, perms):
    a = np.asarray(f.a_cov)
    inv = None if perm is None else np.argsort(perm)
    out.append((np.asarray(f.delta_cov),
                a if inv is None else a[np.ix_(inv, inv)]))
  return out


def check_curvature_cell(model, params, x, y, cp: Optional[CurvPeers],
                         proto: bool) -> dict:
  r"""Checks fnn's curvature results against BackPACK's (and curvlinops')
  where their conventions agree, and the Monte-Carlo estimates
  statistically; returns the largest differences (exit code 1 on a
  mismatch)."""
  b, diffs = x.shape[0], {}
  where = f"{bg.model_label(model)}, batch {b}"
  mlp = isinstance(model, fnn.MLP)
  perms = _kron_perms(model, params)
  exact = FNN_CURV["diag_ggn"](model, params, x, y)
  kflr = FNN_CURV["kfac"](model, params, x, y, kind="exact")
  kfac = FNN_CURV["kfac"](model, params, x, y, kind="mc",
                          key=jax.random.key(CURV_KEY))
  m = max(1, math.ceil(MC_DRAWS / b))
  keys = jax.random.split(jax.random.key(CURV_KEY + 1), m)
  # fnn's Monte-Carlo estimates against its exact values.
  diffs["fnn diag_ggn_mc (rel)"] = _check_mc(
      f"fnn.diag_ggn(mc_samples={m}) vs exact, {where}",
      jax.tree.leaves(FNN_CURV["diag_ggn"](model, params, x, y,
                                           mc_samples=m, key=keys[0])),
      jax.tree.leaves(exact))
  mc_g = [np.mean([np.asarray(FNN_CURV["kfac"](
      model, params, x, y, kind="mc", key=k)[i].delta_cov) for k in keys], 0)
      for i in range(len(kflr))]
  diffs["fnn kfac mc delta_cov (rel)"] = _check_mc(
      f"fnn.kfac_factors(kind='mc') delta_cov, mean of {m} draws, vs "
      f"kind='exact', {where}", mc_g, [f.delta_cov for f in kflr])
  diffs["fnn kfac mc a_cov"] = check_close(
      f"kfac_factors a_cov: kind='mc' vs 'exact', {where}",
      [f.a_cov for f in kfac], [f.a_cov for f in kflr], scaled_atol=True)
  if proto:
    diffs["kfac proto vs fnn"] = check_close(
        f"--kfac-proto kfac_factors vs fnn's, {where}",
        PROTO_KFAC(model, params, x, y, kind="exact"), kflr,
        scaled_atol=True)
  if cp is None:
    return diffs
  fnn_kflr = _fnn_kron(kflr, perms)
  if cp.bp is not None:
    diffs["diag_ggn vs DiagGGNExact"] = check_close(
        f"diag_ggn vs BackPACK DiagGGNExact, {where}", exact,
        cp.to_fnn(cp.backpack_result("DiagGGNExact")), scaled_atol=True)
    diffs["BackPACK DiagGGNMC (rel)"] = _check_mc(
        f"BackPACK DiagGGNMC(mc_samples={m}) vs DiagGGNExact, {where}",
        jax.tree.leaves(cp.to_fnn(cp.backpack_result("DiagGGNMC",
                                                      mc_samples=m))),
        jax.tree.leaves(exact))
    bp_kflr = cp.backpack_kron("KFLR")
    # BackPACK's Conv G is the bias's GGN (positions summed before the
    # outer product), KFC's (fnn's) sums the outer products over positions:
    # only the input factor is comparable there.
    convs = [not mlp and isinstance(l, fnn.layers.Conv1d)
             for l in (_param_layers(model) if not mlp else perms)]
    diffs["kfac exact vs KFLR"] = check_close(
        f"kfac_factors(kind='exact') (delta_cov, a_cov) vs BackPACK KFLR "
        f"(G, A), {where}",
        [f if not conv else f[1:] for f, conv in zip(fnn_kflr, convs)],
        [f if not conv else f[1:] for f, conv in zip(bp_kflr, convs)],
        scaled_atol=True)
    bp_kfac = cp.backpack_kron("KFAC", mc_samples=m)
    diffs["kfac mc a_cov vs KFAC"] = check_close(
        f"kfac_factors(kind='mc') a_cov vs BackPACK KFAC A, {where}",
        [f[1] for f in _fnn_kron(kfac, perms)], [f[1] for f in bp_kfac],
        scaled_atol=True)
    diffs["BackPACK KFAC G (rel)"] = _check_mc(
        f"BackPACK KFAC(mc_samples={m}) G vs KFLR G, {where}",
        [f[0] for f in bp_kfac], [f[0] for f in bp_kflr])
  if cp.cl is not None:
    diffs["kfac exact vs curvlinops type-2"] = check_close(
        f"kfac_factors(kind='exact') vs curvlinops KFAC type-2, {where}",
        fnn_kflr, cp.curvlinops_kron("type-2"), scaled_atol=True)
    cl_mc = cp.curvlinops_kron("mc", m)
    diffs["curvlinops mc G (rel)"] = _check_mc(
        f"curvlinops KFAC mc (mc_samples={m}) G vs fnn exact, {where}",
        [f[0] for f in cl_mc], [f[0] for f in fnn_kflr])
    diffs["kfac mc a_cov vs curvlinops mc"] = check_close(
        f"kfac_factors a_cov vs curvlinops mc input covariance, {where}",
        [f[1] for f in fnn_kflr], [f[1] for f in cl_mc], scaled_atol=True)
  return diffs


def _param_layers(model) -> list:
  r"""The parameter layers (Conv1d, Dense) of a Sequential, in order."""
  return [l for l in model.layers
          if isinstance(l, (fnn.layers.Conv1d, fnn.layers.Dense))]


def curvature_work_bounds(sizes) -> dict:
  r"""Peer / fnn multiply-adds per example, per (group, peer): the speedup
  at equal FLOP/s (an MLP; ``K = n_out``).

  ``F = sum n_in n_out`` (a forward pass, or a weight contraction), ``D =
  F - n_0 n_1`` (deltas below the top layer), ``A = sum n_in^2``, ``G =
  sum n_out^2`` (one example's input and output covariances). BackPACK runs
  the gradient's backward (``D + F``) besides its extension; it propagates
  the ``K`` columns (``K D``), contracts the diagonal as ``sum_k`` first
  (``F``), forms ``G`` once for the weight and once for the bias. curvlinops'
  KFAC runs a full ``torch.autograd.grad`` per column (``D + F`` each).

  * diag GGN exact: fnn ``2F + K D``, BackPACK ``3F + D + K D``;
  * diag GGN MC (one sample): fnn ``2F + D``, BackPACK ``3F + 2D``;
  * KFLR: fnn ``F + K D + K A + K G`` (``a_cov`` over the ``B K`` rows;
    ``A`` with ``--kfac-proto``), BackPACK ``3F + D + K D + A + 2K G``,
    curvlinops ``F + K (D + F) + A + K G``;
  * KFAC (one sample): fnn ``F + D + A + G``, BackPACK ``3F + 2D + A +
    2G``, curvlinops ``2F + D + A + G``.
  """
  f = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  d = f - sizes[0] * sizes[1]
  k = sizes[-1]
  a = sum(n * n for n in sizes[:-1])
  g = sum(n * n for n in sizes[1:])
  fnn_w = {"diag_ggn": 2 * f + k * d, "diag_ggn_mc": 2 * f + d,
           "kflr": f + k * d + k * a + k * g, "kfac": f + d + a + g}
  peer_w = {("diag_ggn", "DiagGGNExact"): 3 * f + d + k * d,
            ("diag_ggn_mc", "DiagGGNMC"): 3 * f + 2 * d,
            ("kflr", "KFLR"): 3 * f + d + k * d + a + 2 * k * g,
            ("kfac", "KFAC"): 3 * f + 2 * d + a + 2 * g,
            ("kflr", "curvlinops type-2"): f + k * (d + f) + a + k * g,
            ("kfac", "curvlinops mc"): 2 * f + d + a + g}
  out = {f"{grp}/{peer}": w / fnn_w[grp] for (grp, peer), w in peer_w.items()}
  proto = f + k * d + a + k * g
  out["kflr/KFLR (fnn proto)"] = peer_w[("kflr", "KFLR")] / proto
  out["kflr/curvlinops type-2 (fnn proto)"] = peer_w[
      ("kflr", "curvlinops type-2")] / proto
  return out


def bench_curvature_cell(model, params, x, y, peers, max_repeats, budget_s,
                         log, proto: bool) -> dict:
  r"""Checks, then times the curvature groups of one (model, batch)."""
  t0 = time.perf_counter()
  cp = CurvPeers(peers, model, params, x, y) if "torch" in peers else None
  mlp = isinstance(model, fnn.MLP)
  cell = {"arch": bg.arch_of(model), "model": bg.model_label(model),
          "sizes": list(model.sizes) if mlp else None,
          "batch": int(x.shape[0]),
          "work_bound": curvature_work_bounds(model.sizes) if mlp else None,
          "loadavg_start": os.getloadavg()[0],
          "max_abs_diff": check_curvature_cell(model, params, x, y, cp,
                                               proto)}
  groups = fnn_curv_contenders(model, params, x, y, proto)
  for group, cs in (cp.contenders() if cp else {}).items():
    groups[group] += cs
  for c in (c for cs in groups.values() for c in cs):
    _time_call(c)  # warm up (compile) every contender
  cell["warmup_s"] = time.perf_counter() - t0
  with bt.OtherLoad() as load:
    for group, cs in groups.items():
      samples, calls = time_group(cs, max_repeats, budget_s)
      ms = {c.name: 1e3 * statistics.median(s) for c, s in zip(cs, samples)}
      cell[group] = {
          "ms": ms, "repeats": len(samples[0]),
          "calls_per_sample": {c.name: k for c, k in zip(cs, calls)},
          "samples_ms": {c.name: [1e3 * t for t in s]
                         for c, s in zip(cs, samples)},
          "speedup": {k: v / ms["fnn"] for k, v in ms.items() if k != "fnn"},
          "speedup_range": round_ratio_range(cs, samples)}
  cell.update(other_load_cpus=load.cpus, steal_cpus=load.steal,
              loadavg_end=os.getloadavg()[0])
  log(f"  {cell['model']:>18} batch {x.shape[0]:>5}: "
      + "; ".join(f"{g} " + "/".join(f"{v:.3g}" for v in cell[g]["ms"]
                                     .values()) + f" ms x{cell[g]['repeats']}"
                  for g in CURV_GROUPS))
  return cell


def evaluate_curv_targets(cells: list[dict]) -> list[dict]:
  out = []
  archs = list(dict.fromkeys(c["arch"] for c in cells))
  for arch in archs:
    for group, peer in CURV_TARGETS[arch]:
      name = (f"{arch}: {CURV_TITLES[group]} >= {CURV_LEAST:g}x faster "
              f"than {peer}")
      vals = [(c[group]["speedup"][peer], c) for c in cells
              if c["arch"] == arch and peer in c[group]["speedup"]]
      if not vals:
        out.append({"name": name, "value": None, "holds": None})
        continue
      worst, c = min(vals, key=lambda vc: vc[0])
      out.append({"name": name, "value": worst, "holds": worst >= CURV_LEAST,
                  "round_range": c[group]["speedup_range"][peer],
                  "worst_cell": [c["model"], c["batch"]],
                  "per_cell": [[c2["model"], c2["batch"], v] for v, c2 in vals],
                  "work_bound": (c["work_bound"] or {}).get(
                      f"{group}/{peer}")})
  return out


CURV_COLUMNS = (  # header, group, contender (ms) or "x" + peer (speedup)
    ("fnn diag", "diag_ggn", "fnn"), ("DiagGGNExact", "diag_ggn",
                                      "DiagGGNExact"),
    ("speedup", "diag_ggn", "xDiagGGNExact"),
    ("fnn diag MC", "diag_ggn_mc", "fnn"),
    ("DiagGGNMC", "diag_ggn_mc", "DiagGGNMC"),
    ("speedup", "diag_ggn_mc", "xDiagGGNMC"),
    ("fnn KFLR", "kflr", "fnn"), ("KFLR", "kflr", "KFLR"),
    ("speedup", "kflr", "xKFLR"),
    ("cl type-2", "kflr", "curvlinops type-2"),
    ("speedup", "kflr", "xcurvlinops type-2"),
    ("fnn proto", "kflr", "fnn proto"),
    ("fnn KFAC", "kfac", "fnn"), ("KFAC", "kfac", "KFAC"),
    ("speedup", "kfac", "xKFAC"), ("cl mc", "kfac", "curvlinops mc"),
    ("speedup", "kfac", "xcurvlinops mc"))


def format_curvature(cells, targets, markdown: bool, proto: bool) -> str:
  cols = [c for c in CURV_COLUMNS if proto or c[2] != "fnn proto"]
  header = ("model", "batch", *(c[0] for c in cols), "load", "repeats")
  rows = []
  for c in cells:
    row = [c["model"], str(c["batch"])]
    for _, group, name in cols:
      if name.startswith("x"):
        v = c[group]["speedup"].get(name[1:])
        row.append("-" if v is None else f"{v:.1f}x")
      else:
        v = c[group]["ms"].get(name)
        row.append("-" if v is None else bg._ms(v))
    row.append(f"{c['loadavg_start']:.1f}-{c['loadavg_end']:.1f}")
    row.append("/".join(str(c[g]["repeats"]) for g in CURV_GROUPS))
    rows.append(row)
  if markdown:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
  else:
    widths = [max(len(h), *(len(r[i]) for r in rows))
              for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(  # noqa: E731
        v.ljust(w) if i < 1 else v.rjust(w)
        for i, (v, w) in enumerate(zip(r, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
  bullet = "- " if markdown else "  "
  lines += ["", "Speedup = peer ms / fnn ms (cl = curvlinops KFAC, "
            "fisher_type type-2 / mc); load = 1-minute load average at the "
            "cell's start-end.", "", f"Targets (every cell of the "
            f"architecture; work bound = peer / fnn multiply-adds, MLPs):"]
  for t in targets:
    if t["holds"] is None:
      lines.append(f"{bullet}NOT MEASURED (peer missing or unsupported): "
                   f"{t['name']}")
      continue
    label, batch = t["worst_cell"]
    wb = t.get("work_bound")
    lines.append(
        f"{bullet}{'HOLDS' if t['holds'] else 'MISSED'}: {t['name']} (worst "
        f"{t['value']:.2f}x, rounds {t['round_range'][0]:.2f}-"
        f"{t['round_range'][1]:.2f}x, {label} batch {batch}"
        + (f"; work bound {wb:.2f}x" if wb is not None else "") + ")")
  return "\n".join(lines)


def curvature_main(args, archs, all_sizes, batches, info, peers, log,
                   start) -> int:
  r"""``--curvature``: checks and times the curvature groups per cell."""
  print(f"curvature groups: {', '.join(CURV_TITLES.values())} against "
        f"BackPACK DiagGGNExact, DiagGGNMC(mc_samples=1), KFLR, "
        f"KFAC(mc_samples=1) (forward + loss.backward() in the extension's "
        f"context, CrossEntropyLoss mean) and curvlinops KFACLinearOperator "
        f"(fisher_type type-2 / mc, mc_samples 1; compute_kronecker_factors "
        f"on one batch; MLPs: it supports Linear and Conv2d only); fnn's "
        f"key fixed; MC estimates checked statistically ({MC_DRAWS}+ draws, "
        f"relative Frobenius error <= {MC_REL_TOL:g} against each "
        f"framework's exact value), the exact ones against each other\n",
        flush=True)
  cells = []
  for model, params, x, y in _cells(archs, all_sizes, batches):
    cells.append(bench_curvature_cell(model, params, x, y, peers,
                                      args.repeats, args.budget, log,
                                      args.kfac_proto))
  targets = evaluate_curv_targets(cells)
  print(format_curvature(cells, targets, args.markdown, args.kfac_proto))
  if any(c["sizes"] is not None for c in cells):
    print("\nWork bounds (peer / fnn multiply-adds per example):")
    for sizes in dict.fromkeys(tuple(c["sizes"]) for c in cells
                               if c["sizes"] is not None):
      wb = curvature_work_bounds(sizes)
      print(f"  {bg._sizes_text(sizes)}: " + ", ".join(
          f"{k} {v:.2f}x" for k, v in wb.items()))
  loads = [c["other_load_cpus"] for c in cells
           if c["other_load_cpus"] is not None]
  if loads:
    print(f"\nOther processes kept {max(loads):.2f} CPUs busy at most while "
          f"timing a cell" + (" (WARNING: disturbed; rerun on a quiet machine)"
                              if max(loads) > OTHER_LOAD_WARN else ""))
  wall_s = time.perf_counter() - start
  print(f"\nTotal wall time: {wall_s:.1f} s")
  if args.json:
    bg.write_json_atomic(args.json, {
        "benchmark": "scripts/bench_peers.py --curvature",
        "fnn": fnn.__version__, "machine": info,
        "config": {"archs": list(archs),
                   "sizes": [list(s) for s in all_sizes],
                   "batches": list(batches), "max_repeats": args.repeats,
                   "budget_s": args.budget, "peers": sorted(peers),
                   "kfac_proto": args.kfac_proto,
                   **{k.lower(): globals()[k] for k in (
                       "MIN_REPEATS", "MIN_REPEATS_SLOW", "RTOL", "ATOL",
                       "STATS_ATOL", "MC_DRAWS", "MC_REL_TOL", "CURV_KEY",
                       "CURV_LEAST", "BLOCK_S", "MAX_BLOCK", "DEVICE")},
                   "kink_margin": bg.KINK_MARGIN},
        "cells": cells, "targets": targets, "wall_s": wall_s,
    })
    print(f"Wrote {args.json}")
  return 0


def _cells(archs, all_sizes, batches):
  r"""``(model, params, x, y)`` per cell, as the gradient groups draw them
  (MLPs He init)."""
  for model in bg.build_models(archs, all_sizes):
    params = (model.init(jax.random.key(0), jnp.float32, scheme="he")
              if isinstance(model, fnn.MLP)
              else model.init(jax.random.key(0), jnp.float32))
    for batch in batches:
      kx, ky = jax.random.split(jax.random.fold_in(jax.random.key(1), batch))
      x = bg.kink_safe_inputs(model, params, kx, batch)
      y = jax.random.randint(ky, (batch,), 0, model.n_out)
      yield model, params, x, y


# --------------------------------------------------------------------------
# Summary and output.


def _speedup(cell: dict, group: str, baseline: Optional[str]):
  r"""fnn's speedup over ``baseline`` (None: over the fastest torch peer)."""
  sp = {k: v for k, v in cell[group]["speedup"].items()
        if k != "vmap(jax.grad)"}
  return (min(sp.values()) if sp else None) if baseline is None else sp.get(
      baseline)


def evaluate_targets(cells: list[dict]) -> list[dict]:
  out = []
  archs = list(dict.fromkeys(c["arch"] for c in cells))
  for arch, (group, baseline, least, name) in (
      (a, t) for a in archs for t in TARGETS[a]):
    vals = [(v, c) for c in cells if c["arch"] == arch
            if (v := _speedup(c, group, baseline)) is not None]
    worst, c = min(vals, key=lambda vc: vc[0]) if vals else (None, None)
    rng = None
    if c is not None:
      peers = c[group]["speedup_range"]
      rng = peers[baseline] if baseline is not None else peers[min(
          (k for k in peers if k != "vmap(jax.grad)"),
          key=lambda k: c[group]["speedup"][k])]
    out.append({"name": name, "value": worst, "round_range": rng,
                "holds": None if c is None else worst >= least,
                "worst_cell": c and [c["model"], c["batch"]]})
  return out


COLUMNS = (  # header, group, contender (ms) or "x" + baseline (speedup)
    ("fnn norms", "norms", "fnn"), ("BatchL2Grad", "norms", "BatchL2Grad"),
    ("speedup", "norms", "xBatchL2Grad"), ("fnn grad_stats", "stats", "fnn"),
    ("Variance", "stats", "Variance"), ("SumGradSq", "stats", "SumGradSquared"),
    ("speedup*", "stats", "x"), ("fnn DP step", "dp", "fnn"),
    ("Opacus DP", "dp", "Opacus"), ("speedup", "dp", "xOpacus"),
    ("fnn per-ex", "per_ex", "fnn"), ("BatchGrad", "per_ex", "BatchGrad"),
    ("Opacus gs", "per_ex", "Opacus"), ("torch.func", "per_ex", "torch.func"),
    ("vmap(jax.grad)", "per_ex", "vmap(jax.grad)"),
    ("vs BatchGrad", "per_ex", "xBatchGrad"))
HEADER = ("model", "batch", *(col[0] for col in COLUMNS), "repeats")


def table_rows(cells: list[dict]) -> list[tuple[str, ...]]:
  rows = []
  for c in cells:
    row = [c["model"], str(c["batch"])]
    for _, group, name in COLUMNS:
      if name.startswith("x"):
        v = _speedup(c, group, name[1:] or None)
        row.append("-" if v is None else f"{v:.1f}x")
      else:
        v = c[group]["ms"].get(name)
        row.append("-" if v is None else bg._ms(v))
    rows.append((*row, "/".join(str(c[g]["repeats"]) for g in GROUPS)))
  return rows


def format_table(cells: list[dict], markdown: bool) -> str:
  rows = table_rows(cells)
  if markdown:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADER) - 2)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
  widths = [max(len(h), *(len(r[i]) for r in rows))
            for i, h in enumerate(HEADER)]
  fmt = lambda r: "  ".join(  # noqa: E731
      v.ljust(w) if i < 1 else v.rjust(w)
      for i, (v, w) in enumerate(zip(r, widths)))
  return "\n".join([fmt(HEADER), "  ".join("-" * w for w in widths)]
                   + [fmt(r) for r in rows])


def work_bounds(sizes) -> dict:
  r"""Peer / fnn multiply-adds per example, by group: the speedup at equal
  FLOP/s, which a compute-bound cell cannot beat by much.

  ``F = sum n_in n_out`` (forward), ``D = F - n_0 n_1`` (the deltas below
  the top layer; nobody needs the input's), ``W = F`` (a weight-gradient
  contraction). norms: fnn ``F + D`` against BatchL2Grad's full backward
  ``2F + D`` (its ``.grad`` included); stats: fnn's mean and second moment
  ``3F + D`` against SumGradSquared's or Variance's ``3F + D``.
  """
  f = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  d = f - sizes[0] * sizes[1]
  return {"norms": (2 * f + d) / (f + d), "stats": 1.0}


def format_bounds(cells: list[dict]) -> str:
  lines = ["Work bound (peer / fnn multiply-adds per example; the speedup at "
           "equal FLOP/s):"]
  for sizes in dict.fromkeys(tuple(c["sizes"]) for c in cells
                             if c["sizes"] is not None):
    b = work_bounds(sizes)
    lines.append(f"  {bg._sizes_text(sizes)}: norms {b['norms']:.2f}x "
                 f"(fnn F + D vs BatchL2Grad 2F + D), stats "
                 f"{b['stats']:.2f}x (3F + D on both sides)")
  return "\n".join(lines)


def format_targets(targets: list[dict], full_grid: bool,
                   markdown: bool) -> str:
  bullet = "- " if markdown else "  "
  lines = ["Targets, on every cell of the architecture" + (
      "" if full_grid else " (defined over the full grid; this run is a "
      "subset)") + ":"]
  for t in targets:
    if t["holds"] is None:
      lines.append(f"{bullet}NOT MEASURED (peer missing): {t['name']}")
    else:
      label, batch = t["worst_cell"]
      lines.append(f"{bullet}{'HOLDS' if t['holds'] else 'MISSED'}: "
                   f"{t['name']} (worst {t['value']:.2f}x, rounds "
                   f"{t['round_range'][0]:.2f}-{t['round_range'][1]:.2f}x, "
                   f"{label} batch {batch})")
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line.


def main(argv=None) -> int:
  parser = bg.build_parser()
  parser.description = __doc__.splitlines()[0]
  parser.add_argument("--gpu", action="store_true",
                      help="run JAX and torch on CUDA (matmul precision "
                           "'highest' for JAX: IEEE float32 on both sides)")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="torch's intra-op threads (default 0: one per "
                           "usable CPU). On a machine that other processes "
                           "keep busy, 1 can be many times faster for small "
                           "models (the threads wait on each other)")
  parser.add_argument("--kfac-proto", action="store_true",
                      help="with --curvature: also time a prototype of "
                           "kfac_factors(kind='exact') whose input "
                           "covariance runs over the B examples, not the "
                           "B K (example, column) rows; for the owners of "
                           "fnn/stats.py")
  args = parser.parse_args(argv)
  if args.hvp_proto or args.trace_proto:
    parser.error("--hvp-proto and --trace-proto are bench_grads.py's (no "
                 "peer here)")
  if args.kfac_proto and not args.curvature:
    parser.error("--kfac-proto needs --curvature")
  try:
    all_sizes = bg._parse_sizes(args.sizes)
    batches = bg._parse_batches(args.batches)
    archs = (("mlp",) if args.sizes else ARCHS) if not args.arch else \
        bg._parse_archs(args.arch, bool(args.sizes))
  except argparse.ArgumentTypeError as e:
    parser.error(str(e))
  if set(archs) - set(ARCHS):
    parser.error(f"--arch: {','.join(sorted(set(archs) - set(ARCHS)))} has "
                 f"no BackPACK copy here; choose from {','.join(ARCHS)}")
  if args.sizes and "mlp" not in archs:
    parser.error("--sizes sets the MLPs; add mlp to --arch")
  if args.torch_threads < 0:
    parser.error("--torch-threads must be >= 0")
  if args.conv_proto:  # bench_grads.py's prototype of faster Conv1d kinds
    bg.install_conv_proto()
    print("--conv-proto: fnn's Conv1d total/norms replaced by "
          "scripts/bench_grads.py's prototype (not fnn's code)")
  if args.repeats < 1 or args.budget < 0 or min(batches) < 2:
    parser.error("need --repeats >= 1, --budget >= 0 and batches >= 2 "
                 "(grad_stats needs 2 examples)")

  start = time.perf_counter()
  warnings.filterwarnings("ignore", module="opacus")
  warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
  info = bg.machine_info()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  print(f"fnn vs BackPACK / Opacus (scripts/bench_peers.py), fnn "
        f"{fnn.__version__}")
  print(f"machine: {info['cpu']} ({info['machine']}), cpu count "
        f"{info['cpu_count']} ({info['usable_cpus']} usable), "
        f"{info['platform']}")
  peers = import_peers(args.curvature)
  if "torch" in peers:
    peers["torch"].set_num_threads(args.torch_threads or info["usable_cpus"])
    info.update(torch=peers["torch"].__version__,
                torch_threads=peers["torch"].get_num_threads())
  if "opacus" in peers:
    info["opacus"] = peers["opacus"].__version__
  if "backpack" in peers:
    info["backpack"] = importlib.metadata.version("backpack-for-pytorch")
  if "curvlinops" in peers:
    info["curvlinops"] = importlib.metadata.version("curvlinops-for-pytorch")
  print(f"jax {info['jax']} (jaxlib {info['jaxlib']}), backend "
        f"{info['backend']}, float32; torch {info.get('torch', '-')} "
        f"({info.get('torch_threads', '-')} threads), "
        + (f"curvlinops {info.get('curvlinops', '-')}" if args.curvature
           else f"opacus {info.get('opacus', '-')}")
        + f", backpack {info.get('backpack', '-')}")
  if args.curvature:
    print(f"times: median ms per call of interleaved samples (repeats: "
          f"{'/'.join(CURV_GROUPS)}), a sample a block of consecutive calls "
          f"filling ~{BLOCK_S * 1e3:g} ms (at most {MAX_BLOCK}), budget "
          f"{args.budget:g} s per group, at most {args.repeats}")
    if info["backend"] != "cpu":
      print(f"WARNING: backend is {info['backend']}, not cpu")
    print(flush=True)
    return curvature_main(args, archs, all_sizes, batches, info, peers, log,
                          start)
  print(f"times: median ms per call of interleaved samples (repeats: "
        f"norms/stats/dp/per-ex), a sample a block of consecutive calls "
        f"filling ~{BLOCK_S * 1e3:g} ms (at most {MAX_BLOCK}), budget "
        f"{args.budget:g} s per group, at most "
        f"{args.repeats}; speedup = peer ms / fnn ms; speedup* = over the "
        f"faster of BackPACK Variance and SumGradSquared")
  print(f"DP step: clip {CLIP:g}, noise multiplier {NOISE:g}, SGD lr {LR:g}; "
        f"fnn: jit(dp_grad + optax.sgd update); Opacus: forward + backward + "
        f"DPOptimizer.step() + zero_grad()")
  if GPU:
    print(f"device: {info['device']}; torch on "
          f"{peers['torch'].cuda.get_device_name() if 'torch' in peers else '-'}")
  elif info["backend"] != "cpu":
    print(f"WARNING: backend is {info['backend']}, not cpu")
  print(flush=True)

  cells = []
  for model in bg.build_models(archs, all_sizes):
    params = (model.init(jax.random.key(0), jnp.float32, scheme="he")
              if isinstance(model, fnn.MLP)
              else model.init(jax.random.key(0), jnp.float32))
    for batch in batches:
      kx, ky = jax.random.split(jax.random.fold_in(jax.random.key(1), batch))
      x = bg.kink_safe_inputs(model, params, kx, batch)
      y = jax.random.randint(ky, (batch,), 0, model.n_out)
      cells.append(bench_cell(model, params, x, y, peers, args.repeats,
                              args.budget, log))

  full_grid = (set(batches) == set(bg.DEFAULT_BATCHES) and
               ("mlp" not in archs or set(all_sizes) == set(bg.DEFAULT_SIZES)))
  targets = evaluate_targets(cells)
  print(format_table(cells, args.markdown))
  print()
  print(format_targets(targets, full_grid, args.markdown))
  print()
  if any(c["sizes"] is not None for c in cells):
    print(format_bounds(cells))
  loads = [c["other_load_cpus"] for c in cells
           if c["other_load_cpus"] is not None]
  if loads:
    print(f"\nOther processes kept {max(loads):.2f} CPUs busy at most while "
          f"timing a cell" + (" (WARNING: disturbed; rerun on a quiet machine)"
                              if max(loads) > OTHER_LOAD_WARN else ""))
  wall_s = time.perf_counter() - start
  print(f"\nTotal wall time: {wall_s:.1f} s")
  if args.json:
    bg.write_json_atomic(args.json, {
        "benchmark": "scripts/bench_peers.py", "fnn": fnn.__version__,
        "machine": info,
        "config": {"archs": list(archs),
                   "sizes": [list(s) for s in all_sizes],
                   "batches": list(batches), "max_repeats": args.repeats,
                   "budget_s": args.budget, "peers": sorted(peers),
                   "full_grid": full_grid, "conv_proto": args.conv_proto,
                   **{k.lower(): globals()[k] for k in (
                       "MIN_REPEATS", "MIN_REPEATS_SLOW", "RTOL", "ATOL",
                       "STATS_ATOL", "CLIP", "NOISE", "LR",
                       "BLOCK_S", "MAX_BLOCK", "DEVICE")},
                   "kink_margin": bg.KINK_MARGIN},
        "cells": cells, "targets": targets, "wall_s": wall_s,
    })
    print(f"Wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

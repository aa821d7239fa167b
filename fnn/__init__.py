r"""fnn: feedforward networks with a hand-derived backward pass, in JAX.

The public API::

  model = fnn.MLP((4, 5, 3), activation="tanh", output="softmax",
                  loss="categorical_cross_entropy")
  params = model.init(jax.random.key(0))
  grads = fnn.grad(model, params, x, y)   # == jax.grad(model.mean_loss)

Training::

  opt = fnn.make_optimizer("adamw", 1e-3, schedule="cosine", total_steps=n)
  state = fnn.init_state(model, opt, jax.random.key(0))
  state, history = fnn.fit(model, opt, state, fnn.data.load("digits"),
                           epochs=40, batch_size=32)

The names are imported lazily (PEP 562): ``import fnn`` costs nothing, and the
first use of a name imports its submodule (and JAX). This keeps ``fnn
--help`` and ``fnn --version`` fast, and lets the command line install its
interrupt handler before JAX is imported.
"""
import importlib

__version__ = "0.1.0"

# Each public name and the submodule that defines it.
_EXPORTS = {
    "activations": ("ACTIVATIONS", "Activation", "register_activation"),
    "backward": ("backprop", "dense_backward", "input_grad"),
    "curvature": ("diag_ggn", "ggn_trace", "grad_gram"),
    "curvature_vp": ("check_layer_rops", "ggn_vp", "hessian_eigs", "hvp"),
    "gradcheck": ("check_grads",),
    "gradients": ("factors", "grad", "per_example_grad_norms",
                  "per_example_grads", "per_example_losses", "value_and_grad"),
    "losses": ("LOSSES", "Loss", "register_loss"),
    "many": ("fit_many", "init_many"),
    "model": ("INIT_SCHEMES", "MLP", "Dense", "Params"),
    "quantities": ("check_quantities",),
    "regularize": ("dropout_masks", "l2_grad", "l2_penalty"),
    "sequential": ("Sequential",),
    "stats": ("DPGrad", "GradStats", "KFACFactors", "dp_epsilon", "dp_grad",
              "grad_stats", "kfac_factors"),
    "train": ("Diverged", "StepConfig", "TrainState", "evaluate", "fit",
              "init_state", "make_optimizer", "train_epoch", "train_step"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

# Submodules that ``import fnn`` used to load eagerly; ``fnn.<name>`` imports
# them on first use, so ``import fnn; fnn.losses.LOSSES`` keeps working.
_SUBMODULES = ("activations", "arch", "backward", "curvature",
               "curvature_vp", "data", "gradcheck", "gradients", "layers",
               "losses", "many", "model", "parallel", "quantities", "regularize",
               "sequential", "stats", "train")


def valid_pairs() -> list[tuple[str, str]]:
  r"""Every registered ``(output activation, loss)`` pair ``fnn.MLP`` accepts."""
  from fnn import activations, losses
  return losses.valid_pairs(activations.output_activations())


def __getattr__(name: str):
  if name in _WHERE:
    value = getattr(importlib.import_module(f"fnn.{_WHERE[name]}"), name)
  elif name in _SUBMODULES:
    value = importlib.import_module(f"fnn.{name}")
  else:
    raise AttributeError(f"module 'fnn' has no attribute {name!r}")
  globals()[name] = value  # the next lookup skips __getattr__
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


__all__ = sorted([*_WHERE, "data", "valid_pairs"])

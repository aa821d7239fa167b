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
"""
from fnn import data
from fnn.activations import ACTIVATIONS, Activation, register_activation
from fnn.backward import backprop, dense_backward, input_grad
from fnn.gradcheck import check_grads
from fnn.gradients import (grad, per_example_grad_norms, per_example_grads,
                           per_example_losses, value_and_grad)
from fnn.losses import LOSSES, Loss, register_loss
from fnn.model import INIT_SCHEMES, MLP, Dense, Params
from fnn.regularize import dropout_masks, l2_grad, l2_penalty
from fnn.stats import (DPGrad, GradStats, KFACFactors, dp_epsilon, dp_grad,
                       grad_stats, kfac_factors)
from fnn.train import (Diverged, StepConfig, TrainState, evaluate, fit,
                       init_state, make_optimizer, train_epoch, train_step)


def valid_pairs() -> list[tuple[str, str]]:
  r"""Every registered ``(output activation, loss)`` pair ``fnn.MLP`` accepts."""
  from fnn import activations, losses
  return losses.valid_pairs(activations.output_activations())


__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "DPGrad", "Dense", "Diverged", "GradStats",
    "KFACFactors", "dp_epsilon", "dp_grad", "grad_stats", "kfac_factors", "INIT_SCHEMES", "LOSSES",
    "Loss", "MLP", "Params", "StepConfig", "TrainState", "backprop", "check_grads", "data",
    "dense_backward", "dropout_masks", "evaluate", "fit", "grad", "init_state",
    "input_grad", "l2_grad", "l2_penalty", "make_optimizer",
    "per_example_grad_norms", "per_example_grads", "per_example_losses", "register_activation",
    "register_loss",
    "train_epoch", "train_step", "valid_pairs", "value_and_grad",
]

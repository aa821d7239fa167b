r"""fnn: feedforward networks with a hand-derived backward pass, in JAX.

The public API::

  model = fnn.MLP((4, 5, 3), activation="tanh", output="softmax",
                  loss="categorical_cross_entropy")
  params = model.init(jax.random.key(0))
  grads = fnn.grad(model, params, x, y)   # == jax.grad(model.mean_loss)
"""
from fnn.activations import ACTIVATIONS, Activation
from fnn.backward import backprop, dense_backward, input_grad
from fnn.gradients import (grad, per_example_grad_norms, per_example_grads,
                           per_example_losses, value_and_grad)
from fnn.losses import LOSSES, Loss
from fnn.model import INIT_SCHEMES, MLP, Dense, Params


def valid_pairs() -> list[tuple[str, str]]:
  r"""Every registered ``(output activation, loss)`` pair ``fnn.MLP`` accepts."""
  from fnn import activations, losses
  return losses.valid_pairs(activations.OUTPUT_ACTIVATIONS)


__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "Dense", "INIT_SCHEMES", "LOSSES", "Loss",
    "MLP", "Params", "backprop", "dense_backward", "grad", "input_grad",
    "per_example_grad_norms", "per_example_grads", "per_example_losses",
    "valid_pairs", "value_and_grad",
]

from fnn.regularize import dropout_masks, l2_grad, l2_penalty  # noqa: E402
__all__ += ["dropout_masks", "l2_grad", "l2_penalty"]

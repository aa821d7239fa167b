"""Shared test helpers: models over the whole registry, data, references."""
import jax
import jax.numpy as jnp

import fnn
from fnn import activations

HIDDEN = activations.HIDDEN_ACTIVATIONS
PAIRS = fnn.valid_pairs()
# Odd widths so that a transposed weight or a swapped axis cannot pass by
# accident: n_in 5, hidden 7, 3, 9, n_out 3.
WIDTHS = (5, 7, 3, 9, 3)


def sizes_for(depth):
  """``depth`` dense layers: (5, 3), (5, 7, 3), (5, 7, 3, 3), (5, 7, 3, 9, 3)."""
  return WIDTHS[:depth] + (WIDTHS[-1],)


def targets(model, key, batch, dtype=jnp.float64, labels=True):
  """Targets that fit the model's loss: labels, probabilities or reals."""
  n_out = model.sizes[-1]
  name = model.loss.name
  if name == "categorical_cross_entropy":
    if labels:
      return jax.random.randint(key, (batch,), 0, n_out)
    return jax.nn.softmax(jax.random.normal(key, (batch, n_out), dtype))
  if name == "binary_cross_entropy":
    return jax.random.uniform(key, (batch, n_out), dtype)
  return jax.random.normal(key, (batch, n_out), dtype)


def problem(model, seed=0, batch=6, dtype=jnp.float64, scheme="glorot",
            labels=True):
  """``(params, x, y)`` for ``model``, all drawn from explicit keys."""
  kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
  params = model.init(kp, dtype, scheme=scheme)
  x = jax.random.normal(kx, (batch, model.sizes[0]), dtype)
  return params, x, targets(model, ky, batch, dtype, labels)


def one_example_loss(model):
  """The reference loss of one example, from ``model.mean_loss``."""
  return lambda p, xi, yi: model.mean_loss(p, xi[None], yi[None])


def reference_per_example(model, params, x, y):
  """``jax.vmap(jax.grad)`` of the one-example loss: materialized grads."""
  return jax.vmap(jax.grad(one_example_loss(model)),
                  in_axes=(None, 0, 0))(params, x, y)


def tree_norms(per_example):
  """Per-example L2 norms of a tree whose leaves have a leading batch axis."""
  leaves = jax.tree.leaves(per_example)
  b = leaves[0].shape[0]
  return jnp.sqrt(sum(jnp.sum(l.reshape(b, -1) ** 2, axis=1) for l in leaves))


def cli_error(capsys, argv):
  """Runs ``fnn argv`` in process; asserts exit 2 with ONE stderr line and no
  traceback, and returns that stderr text."""
  from fnn import cli
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse's own usage errors
    code = e.code
  assert code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  return err

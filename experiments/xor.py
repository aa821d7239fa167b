r"""XOR with hand-derived gradients, using the API by hand (no trainer).

A 2-8-1 tanh network with a sigmoid output and binary cross-entropy
(seeds 000/001) learns noisy XOR by full-batch gradient descent (optax.sgd),
with every step's gradient from ``fnn.value_and_grad``. At the start and the
end it compares that gradient with ``jax.grad(model.mean_loss)``.

Usage:
  python experiments/xor.py [--steps 2000] [--lr 0.5] [--seed 0]
"""
from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import optax

import fnn


def make_xor(key, n):
  """``n`` points around the four corners of the unit square, label XOR."""
  kc, kn = jax.random.split(key)
  corners = jax.random.randint(kc, (n, 2), 0, 2)
  x = corners * 2.0 - 1.0 + 0.25 * jax.random.normal(kn, (n, 2))
  return x, (corners[:, 0] ^ corners[:, 1]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def step(model, opt, params, opt_state, x, y):
  loss, grads = fnn.value_and_grad(model, params, x, y)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def max_abs_diff(model, params, x, y):
  ours = fnn.grad(model, params, x, y)
  ref = jax.grad(model.mean_loss)(params, x, y)
  return max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--lr", type=float, default=0.5)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  key_data, key_test, key_init = jax.random.split(jax.random.key(args.seed), 3)
  x, y = make_xor(key_data, 512)
  x_test, y_test = make_xor(key_test, 512)
  model = fnn.MLP((2, 8, 1), activation="tanh", output="sigmoid",
                  loss="binary_cross_entropy")
  params = model.init(key_init, scheme="glorot")
  opt = optax.sgd(args.lr)
  opt_state = opt.init(params)
  print(f"{model}\n|fnn.grad - jax.grad| at init: "
        f"{max_abs_diff(model, params, x, y):.2e} (float32)")
  for i in range(1, args.steps + 1):
    params, opt_state, loss = step(model, opt, params, opt_state, x, y)
    if i % (args.steps // 10 or 1) == 0:
      acc = jnp.mean((model.apply(params, x_test)[:, 0] > 0.5) == (y_test > 0.5))
      print(f"step {i:5d}  train loss {float(loss):.4f}  test accuracy "
            f"{float(acc):.3f}")
  print(f"|fnn.grad - jax.grad| at the end: "
        f"{max_abs_diff(model, params, x, y):.2e} (float32)")


if __name__ == "__main__":
  main()

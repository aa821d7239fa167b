"""The seeds' closed forms, each from its own formula, against fnn.

Each reference below is written in plain numpy in the seed's own notation
(column vectors, ``W = w.T``), independent of fnn's code.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import backward as bp

RTOL, ATOL = 1e-12, 1e-14  # float64, same formula in a different order


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("n_out", [1, 3])
def test_seeds_000_001_sigmoid_layer_with_bce(n_out):
  """dZ = A - Y, dW = (1/m) dZ A_prev^T, db = (1/m) sum dZ, dA_prev = W^T dZ."""
  rng = np.random.default_rng(0)
  m, n_in = 8, 4
  W = rng.normal(size=(n_out, n_in))          # seed 000: Z = W X + b
  b = rng.normal(size=(n_out, 1))
  X = rng.normal(size=(n_in, m))              # one example per column
  Y = rng.integers(0, 2, size=(n_out, m)).astype(np.float64)
  A = _sigmoid(W @ X + b)
  dZ = A - Y
  dW = dZ @ X.T / m
  db = dZ.sum(axis=1) / m
  dA_prev = W.T @ dZ                          # per example, [n_in, m]

  model = fnn.MLP((n_in, n_out), output="sigmoid", loss="binary_cross_entropy")
  params = (fnn.Dense(jnp.asarray(W.T), jnp.asarray(b[:, 0])),)
  x, y = jnp.asarray(X.T), jnp.asarray(Y.T)
  (grads,) = fnn.grad(model, params, x, y)
  np.testing.assert_allclose(grads.w, dW.T, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(grads.b, db, rtol=RTOL, atol=ATOL)
  # Seed 000's loss, averaged over m samples (seed 001).
  loss = -np.mean(np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A), axis=0))
  np.testing.assert_allclose(model.mean_loss(params, x, y), loss, rtol=RTOL)
  for i in range(m):
    # dL/dA_prev = dL/dZ * W through one dense layer's backward ...
    _, da_prev = fnn.dense_backward(params[0].w, x[i], jnp.asarray(dZ[:, i]))
    np.testing.assert_allclose(da_prev, dA_prev[:, i], rtol=RTOL, atol=ATOL)
    # ... which, for a single layer, is the network's input gradient.
    np.testing.assert_allclose(fnn.input_grad(model, params, x[i], y[i]),
                               dA_prev[:, i], rtol=RTOL, atol=ATOL)
  # The unfused chain of seed 000 (dL/dA * A(1 - A)) gives the same dZ.
  dLdA = -Y / A + (1 - Y) / (1 - A)
  np.testing.assert_allclose(dLdA * A * (1 - A), dZ, rtol=1e-10, atol=1e-12)


def test_seed_002_chain_of_single_sigmoid_neurons():
  """C = (a^3 - y)^2 through three single sigmoid neurons, term by term."""
  rng = np.random.default_rng(1)
  w = rng.normal(size=4)[1:]  # w^1, w^2, w^3 (index 0 unused)
  b = rng.normal(size=3)
  x, y = 0.7, 0.2
  a, z = [x], []
  for l in range(3):
    z.append(w[l] * a[-1] + b[l])
    a.append(_sigmoid(z[-1]))
  ds = [_sigmoid(zl) * (1 - _sigmoid(zl)) for zl in z]  # sigma'(z^l)
  dC_da = [0.0] * 4
  dC_da[3] = 2 * (a[3] - y)                            # dC/da^(L)
  dC_dw, dC_db = [0.0] * 3, [0.0] * 3
  for l in (2, 1, 0):                                  # layers L, L-1, L-2
    dC_dw[l] = dC_da[l + 1] * ds[l] * a[l]
    dC_db[l] = dC_da[l + 1] * ds[l]
    dC_da[l] = dC_da[l + 1] * ds[l] * w[l]

  model = fnn.MLP((1, 1, 1, 1), activation="sigmoid", output="sigmoid",
                  loss="squared_error")
  params = tuple(fnn.Dense(jnp.array([[w[l]]]), jnp.array([b[l]]))
                 for l in range(3))
  xs, ys = jnp.array([x]), jnp.array([y])
  grads = fnn.backprop(model, params, xs, ys)
  for l in range(3):
    np.testing.assert_allclose(grads[l].w[0, 0], dC_dw[l], rtol=RTOL)
    np.testing.assert_allclose(grads[l].b[0], dC_db[l], rtol=RTOL)
  # dC/da^(l) at every layer: the backward's delta^l @ w^l.T.
  _, factors = bp.loss_and_factors(model, params, xs, ys)
  for l in range(3):
    np.testing.assert_allclose(params[l].w @ factors[l].delta, [dC_da[l]],
                               rtol=RTOL)


def _nielsen_backprop(weights, biases, x, y):
  """network.py's backprop, verbatim in numpy (column vectors, C = |a-y|^2/2)."""
  activation, activations, zs = x, [x], []
  for W, b in zip(weights, biases):
    z = W @ activation + b
    zs.append(z)
    activation = _sigmoid(z)
    activations.append(activation)
  sp = lambda z: _sigmoid(z) * (1 - _sigmoid(z))
  delta = (activations[-1] - y) * sp(zs[-1])             # BP1
  nabla_b, nabla_w = [delta], [delta @ activations[-2].T]  # BP3, BP4
  for l in range(2, len(weights) + 1):
    delta = (weights[-l + 1].T @ delta) * sp(zs[-l])       # BP2
    nabla_b.insert(0, delta)
    nabla_w.insert(0, delta @ activations[-l - 1].T)
  return nabla_w, nabla_b


def test_seed_003_bp1_to_bp4_and_the_minibatch_step():
  rng = np.random.default_rng(2)
  sizes = (6, 5, 4, 3)
  weights = [rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:])]
  biases = [rng.normal(size=(o, 1)) for o in sizes[1:]]
  m, eta = 10, 3.0
  X = rng.normal(size=(m, sizes[0]))
  Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], size=m)]

  model = fnn.MLP(sizes, activation="sigmoid", output="sigmoid",
                  loss="half_squared_error")
  params = tuple(fnn.Dense(jnp.asarray(W.T), jnp.asarray(b[:, 0]))
                 for W, b in zip(weights, biases))
  sum_w = [np.zeros_like(W) for W in weights]
  sum_b = [np.zeros_like(b) for b in biases]
  for i in range(m):
    nw, nb = _nielsen_backprop(weights, biases, X[i][:, None], Y[i][:, None])
    got = fnn.backprop(model, params, jnp.asarray(X[i]), jnp.asarray(Y[i]))
    for l, layer in enumerate(got):
      np.testing.assert_allclose(layer.w, nw[l].T, rtol=RTOL, atol=ATOL)
      np.testing.assert_allclose(layer.b, nb[l][:, 0], rtol=RTOL, atol=ATOL)
      sum_w[l] += nw[l]
      sum_b[l] += nb[l]
  # update_mini_batch: w <- w - (eta/m) sum_x dC_x/dw, and the same for b.
  want = [(W - eta / m * sw, b - eta / m * sb)
          for W, b, sw, sb in zip(weights, biases, sum_w, sum_b)]
  grads = fnn.grad(model, params, jnp.asarray(X), jnp.asarray(Y))
  stepped = jax.tree.map(lambda p, g: p - eta * g, params, grads)
  for (W, b), layer in zip(want, stepped):
    np.testing.assert_allclose(layer.w, W.T, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.b, b[:, 0], rtol=RTOL, atol=ATOL)

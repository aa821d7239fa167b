r"""Every closed-form result of the four seed write-ups, checked numerically.

Each result is evaluated from its OWN formula (numpy, in the seed's notation:
column vectors ``Z = W X + b``, ``W = w.T``) on random float64 inputs and
compared with fnn's hand-derived backward and with ``jax.grad``. Where a
seed's text has a slip, the row shows the formula as written next to the
corrected one, and the numbers say which is right.

Writes ``experiments/results/seed_derivations.md`` (and ``.json``).

Usage:
  .venv/bin/python experiments/seed_derivations.py [--seed 0] [--out DIR]

Errors are ``max |formula - other| / max |other|`` (float64); a row agrees
when both are below 1e-10.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402
from fnn import backward, checkpoint  # noqa: E402

AGREE = 1e-10  # float64: the same sums in another order agree to ~1e-15


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


class Rows:
  r"""Collects the table: one row per result."""

  def __init__(self):
    self.rows = []

  def add(self, seed, result, formula, value, fnn_value, jax_value,
          note=""):
    e_fnn, e_jax = _err(value, fnn_value), _err(value, jax_value)
    verdict = "agrees" if max(e_fnn, e_jax) < AGREE else "DIFFERS"
    if "as written" in result:
      verdict += " (slip in the text; the corrected form agrees)" if (
          verdict == "DIFFERS") else " (slip not visible numerically)"
    self.rows.append(dict(seed=seed, result=result, formula=formula,
                          vs_fnn=e_fnn, vs_jax_grad=e_jax, verdict=verdict,
                          note=note))


def seed_000_001(rows: Rows, rng) -> None:
  r"""One sigmoid layer with binary cross-entropy, m examples."""
  m, n_in, n_out = 8, 4, 3
  W = rng.normal(size=(n_out, n_in))
  b = rng.normal(size=(n_out, 1))
  X = rng.normal(size=(n_in, m))  # one example per column
  Y = rng.integers(0, 2, size=(n_out, m)).astype(np.float64)
  Z = W @ X + b
  A = _sigmoid(Z)
  model = fnn.MLP((n_in, n_out), output="sigmoid", loss="binary_cross_entropy")
  params = (fnn.Dense(jnp.asarray(W.T), jnp.asarray(b[:, 0])),)
  x, y = jnp.asarray(X.T), jnp.asarray(Y.T)

  # Per-example references from jax.grad of one example's loss with respect
  # to A, Z and A_prev (sum over units, as the seed's L).
  def loss_of_a(a, yy):
    return -jnp.sum(yy * jnp.log(a) + (1 - yy) * jnp.log(1 - a))

  def loss_of_z(z, yy):
    return loss_of_a(jax.nn.sigmoid(z), yy)

  def loss_of_aprev(ap, yy):
    return loss_of_z(jnp.asarray(W) @ ap + jnp.asarray(b[:, 0]), yy)

  dLdA_jax = jax.vmap(jax.grad(loss_of_a))(jnp.asarray(A.T), y).T
  dAdZ_jax = jax.vmap(jax.vmap(jax.grad(jax.nn.sigmoid)))(jnp.asarray(Z.T)).T
  dLdZ_jax = jax.vmap(jax.grad(loss_of_z))(jnp.asarray(Z.T), y).T
  dLdAp_jax = jax.vmap(jax.grad(loss_of_aprev))(x, y).T

  dLdA = -Y / A + (1 - Y) / (1 - A)
  rows.add("000, 001", "dL/dA", "-y/A + (1-y)/(1-A)", dLdA,
           fnn.losses.binary_cross_entropy_grad(jnp.asarray(A), Y), dLdA_jax)
  rows.add("000, 001", "dA/dZ", "A (1 - A)", A * (1 - A),
           fnn.activations.sigmoid_grad(jnp.asarray(Z), jnp.asarray(A)),
           dAdZ_jax)
  fnn_dz = jnp.stack([backward.output_delta(
      model, backward.forward(model, params, x[i])[-1], y[i])
      for i in range(m)], axis=1)
  rows.add("000", "dL/dZ", "A - y", A - Y, fnn_dz, dLdZ_jax)
  written = dLdA * A - Y
  rows.add("000", "dL/dZ, as written in step 2",
           "(-y/A + (1-y)/(1-A)) A - y", written, fnn_dz, dLdZ_jax,
           note="slip: the text multiplies by A and subtracts y; the factor "
           "is dA/dZ = A (1 - A), giving (dL/dA) A (1 - A) = A - y (next row)")
  rows.add("000", "dL/dZ, corrected step 2", "(-y/A + (1-y)/(1-A)) A (1 - A)",
           dLdA * A * (1 - A), fnn_dz, dLdZ_jax)

  # The averaged forms (seed 001; seed 000 per example with A_previous).
  (g,) = fnn.grad(model, params, x, y)
  (g_jax,) = jax.grad(model.mean_loss)(params, x, y)
  dZ = A - Y
  rows.add("000, 001", "dL/dW", "(1/m) sum (A - y) A_prev^T", dZ @ X.T / m,
           np.asarray(g.w).T, np.asarray(g_jax.w).T,
           note="seed 000 writes the factor as 'A_rrevious': a typo of "
           "A_previous (= x), which is what is computed here")
  rows.add("000, 001", "dL/db", "(1/m) sum (A - y)", dZ.sum(axis=1) / m,
           g.b, g_jax.b)
  fnn_dap = jnp.stack([fnn.dense_backward(params[0].w, x[i],
                                          jnp.asarray(dZ[:, i]))[1]
                       for i in range(m)], axis=1)
  rows.add("000", "dL/dA_prev", "W^T dL/dZ  (the text: dL/dZ * W)",
           W.T @ dZ, fnn_dap, dLdAp_jax)
  rows.add("001", "dL/dW in the row form z = A_prev W + B",
           "(1/m) A_prev^T (A - y)", X @ dZ.T / m, g.w, g_jax.w,
           note="seed 001 defines z = A_prev W + B (rows) but writes "
           "(A - y)(A_prev)^T, the column form: the same matrix transposed")
  loss = -np.mean(np.sum(Y * np.log(A) + (1 - Y) * np.log1p(-A), axis=0))
  rows.add("001", "L averaged over M samples",
           "(1/M) sum -(y ln y^ + (1-y) ln(1-y^))", loss,
           fnn.value_and_grad(model, params, x, y)[0],
           model.mean_loss(params, x, y))


def seed_002(rows: Rows, rng) -> None:
  r"""Three single sigmoid neurons, C = (a^(L) - y)^2."""
  w = rng.normal(size=3)  # w^(L-2), w^(L-1), w^(L)
  b = rng.normal(size=3)
  x, y = 0.7, 0.2
  a, z = [x], []  # a[0] = a^(L-3) = x
  for l in range(3):
    z.append(w[l] * a[-1] + b[l])
    a.append(_sigmoid(z[-1]))
  sp = [_sigmoid(v) * (1 - _sigmoid(v)) for v in z]
  model = fnn.MLP((1, 1, 1, 1), activation="sigmoid", output="sigmoid",
                  loss="squared_error")
  params = tuple(fnn.Dense(jnp.array([[w[l]]]), jnp.array([b[l]]))
                 for l in range(3))
  xs, ys = jnp.array([x]), jnp.array([y])
  g = fnn.backprop(model, params, xs, ys)
  g_jax = jax.grad(lambda p: model.mean_loss(p, xs[None], ys[None]))(params)
  _, factors = backward.loss_and_factors(model, params, xs, ys)
  # dC/da^(l): fnn's delta^(l+1) @ w^(l+1).T; jax.grad of C through a^(l).

  def cost_from(level, value):
    act = value
    for l in range(level, 3):
      act = jax.nn.sigmoid(w[l] * act + b[l])
    return (act - y) ** 2

  names = {2: "L", 1: "L-1", 0: "L-2"}
  dC_da = {3: 2 * (a[3] - y)}
  rows.add("002", "dC/da^(L)", "2 (a^(L) - y)", dC_da[3],
           fnn.losses.squared_error_grad(jnp.array([a[3]]), ys)[0],
           jax.grad(lambda v: (v - y) ** 2)(a[3]))
  for l in (2, 1, 0):
    n, prev = names[l], {2: "L-1", 1: "L-2", 0: "L-3"}[l]
    dw = dC_da[l + 1] * sp[l] * a[l]
    db = dC_da[l + 1] * sp[l]
    dC_da[l] = dC_da[l + 1] * sp[l] * w[l]
    rows.add("002", f"dC/dw^({n})",
             f"dC/da^({n}) sigma'(z^({n})) a^({prev})", dw, g[l].w[0, 0],
             g_jax[l].w[0, 0])
    rows.add("002", f"dC/db^({n})", f"dC/da^({n}) sigma'(z^({n}))", db,
             g[l].b[0], g_jax[l].b[0])
    if l > 0:
      rows.add("002", f"dC/da^({prev})",
               f"dC/da^({n}) sigma'(z^({n})) w^({n})", dC_da[l],
               (params[l].w @ factors[l].delta)[0],
               jax.grad(lambda v, l=l: cost_from(l, v))(a[l]))
  written = dC_da[1] * sp[0] * a[1]  # a^(L-2) where a^(L-3) belongs
  rows.add("002", "dC/dw^(L-2), as written",
           "dC/da^(L-2) sigma'(z^(L-2)) a^(L-2)", written, g[0].w[0, 0],
           g_jax[0].w[0, 0],
           note="slip: z^(L-2) = w^(L-2) a^(L-3) + b^(L-2), so the last "
           "factor is a^(L-3) (the input x), as in the dC/dw^(L-2) row above")


def _nielsen_backprop(weights, biases, x, y):
  r"""network.py's backprop, verbatim in numpy (C = |a - y|^2 / 2)."""
  activation, activations, zs = x, [x], []
  for W, b in zip(weights, biases):
    z = W @ activation + b
    zs.append(z)
    activation = _sigmoid(z)
    activations.append(activation)
  sp = lambda v: _sigmoid(v) * (1 - _sigmoid(v))
  deltas = [(activations[-1] - y) * sp(zs[-1])]  # BP1
  for l in range(2, len(weights) + 1):
    deltas.insert(0, (weights[-l + 1].T @ deltas[0]) * sp(zs[-l]))  # BP2
  return deltas, activations


def seed_003(rows: Rows, rng) -> None:
  r"""BP1-BP4 (Nielsen, ch. 2) and the mini-batch SGD step."""
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
  xi, yi = jnp.asarray(X[0]), jnp.asarray(Y[0])
  deltas, acts = _nielsen_backprop(weights, biases, X[0][:, None],
                                   Y[0][:, None])
  _, factors = backward.loss_and_factors(model, params, xi, yi)
  g = fnn.backprop(model, params, xi, yi)
  g_jax = jax.grad(lambda p: model.mean_loss(p, xi[None], yi[None]))(params)
  L = len(weights)
  # delta^l = dC/dz^l from jax: the gradient of C with respect to b^l.
  rows.add("003", "BP1: delta^L", "grad_a C (.) sigma'(z^L)",
           deltas[-1][:, 0], factors[-1].delta, g_jax[-1].b)
  for l in range(L - 1):
    rows.add("003", f"BP2: delta^{l + 2} (layer {l + 1} of {L})",
             "((w^{l+1})^T delta^{l+1}) (.) sigma'(z^l)", deltas[l][:, 0],
             factors[l].delta, g_jax[l].b)
  for l in range(L):
    rows.add("003", f"BP3: dC/db^{l + 2}", "delta^l", deltas[l][:, 0],
             g[l].b, g_jax[l].b)
    rows.add("003", f"BP4: dC/dw^{l + 2}", "a^{l-1}_k delta^l_j",
             deltas[l] @ acts[l].T, np.asarray(g[l].w).T,
             np.asarray(g_jax[l].w).T)
  # update_mini_batch: w <- w - (eta/m) sum_x dC_x/dw.
  sum_w = [np.zeros_like(W) for W in weights]
  for i in range(m):
    d, a = _nielsen_backprop(weights, biases, X[i][:, None], Y[i][:, None])
    for l in range(L):
      sum_w[l] += d[l] @ a[l].T
  want = np.concatenate([(W - eta / m * s).ravel()
                         for W, s in zip(weights, sum_w)])
  x, y = jnp.asarray(X), jnp.asarray(Y)
  step = lambda grads: np.concatenate([
      (np.asarray(p.w) - eta * np.asarray(gr.w)).T.ravel()
      for p, gr in zip(params, grads)])
  rows.add("003", "mini-batch SGD step", "w - (eta/m) sum_x dC_x/dw", want,
           step(fnn.grad(model, params, x, y)),
           step(jax.grad(model.mean_loss)(params, x, y)))


def markdown(rows: list[dict]) -> str:
  lines = [
      "# The seeds' closed forms, evaluated", "",
      "Each result from its own formula (numpy, float64, random inputs) "
      "against fnn's hand-derived backward and `jax.grad`. Errors: "
      "`max |formula - other| / max |other|`; a row agrees below "
      f"{AGREE:g}. Produced by `experiments/seed_derivations.py`.", "",
      "| seed | result | formula | vs fnn | vs jax.grad | verdict |",
      "|---|---|---|---:|---:|---|"]
  for r in rows:
    lines.append(f"| {r['seed']} | {r['result']} | `{r['formula']}` | "
                 f"{r['vs_fnn']:.1e} | {r['vs_jax_grad']:.1e} | "
                 f"{r['verdict']} |")
  notes = [r for r in rows if r["note"]]
  if notes:
    lines += ["", "Notes:", ""]
    lines += [f"- seed {r['seed']}, {r['result']}: {r['note']}."
              for r in notes]
  return "\n".join(lines) + "\n"


def run(seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  rows = Rows()
  seed_000_001(rows, rng)
  seed_002(rows, rng)
  seed_003(rows, rng)
  return rows.rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0,
                      help="numpy seed of the random inputs")
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results"),
      help="output directory (default experiments/results)")
  args = parser.parse_args(argv)
  rows = run(args.seed)
  os.makedirs(args.out, exist_ok=True)
  text = markdown(rows)
  checkpoint.atomic_write_bytes(os.path.join(args.out, "seed_derivations.md"),
                                lambda f: f.write(text.encode()))
  checkpoint.atomic_write_bytes(
      os.path.join(args.out, "seed_derivations.json"),
      lambda f: f.write(json.dumps(rows, indent=1).encode()))
  print(text)
  slips = [r for r in rows if "as written" in r["result"]]
  wrong = [r for r in rows if r["verdict"] != "agrees" and r not in slips]
  print(f"{len(rows)} results; {len(slips)} slips in the seeds' text shown "
        f"as written; {len(wrong)} disagreements elsewhere")
  return 1 if wrong else 0


if __name__ == "__main__":
  sys.exit(main())

r"""Full-batch gradient descent on MNIST-1D at the edge of stability.

Cohen et al. (ICLR 2021), "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability": with step size ``eta``, full-batch GD on a
network first *sharpens* (the top eigenvalue of the training loss's Hessian,
the sharpness, grows) until it reaches ``2/eta``, the largest curvature at
which GD is stable on a quadratic, and then hovers just around ``2/eta``
while the loss keeps going down, non-monotonically.

Setup (Cohen et al.'s own choices where they fit the CPU): the first
``--n`` (1,000) examples of MNIST-1D's training set (``fnn.data.load
("mnist1d")``, standardized), a 40-100-100-10 tanh MLP with PyTorch's
default initialization (``scheme="pytorch"``, as their PyTorch models; from
Glorot's larger init the sharpness starts above most ``2/eta`` and first
falls), the squared loss ``1/2 |f(x) - e_y|^2`` on the logits (identity
output, ``half_squared_error``, one-hot targets; their "MSE"), plain GD
``params <- params - eta grad`` on the whole subset, the same initial
params for every ``eta``. Float32 throughout (for speed on the CPU; the
Lanczos check below bounds what that costs the eigenvalue).

Every ``--every`` steps the sharpness is measured with
``fnn.hessian_eigs(model, params, x, y, 1, key=..., iters=--iters)``: Lanczos
on fnn's hand-derived Hessian-vector product (Pearlmutter's R through the
hand-written backward) of the full-batch loss. The GD steps between two
measurements are one jitted ``lax.scan``. After the last step each run's
sharpness is measured again with ``3 * --iters`` Lanczos steps; the JSON
keeps both (``lanczos_check``).

Summary per ``eta``: the largest measured sharpness and the median over the
last third of the steps, each as a fraction of ``2/eta``; the first step at
which the sharpness reached ``2/eta``; the fraction of steps on which the
loss went UP, before and after that step (GD on a stable quadratic never
goes up).

Writes ``experiments/results/edge_of_stability.{json,md,png}``.

Usage:
  .venv/bin/python experiments/edge_of_stability.py [--etas 0.2,0.1333,...]
      [--steps 5000] [--every 25] [--n 1000] [--iters 20] [--seed 0]
  .venv/bin/python experiments/edge_of_stability.py --replot  # PNG from JSON
"""
from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import data as data_lib

from _common import (RESULTS, add_replot_flag, machine, pyplot, replot,
                     save_figure, write)

NAME = "edge_of_stability"
SIZES = (40, 100, 100, 10)
# 2/eta = 10, 15, 20, 25: every one of them above the sharpness at the
# PyTorch init (about 5) and reached within 5,000 steps on the 1,000-example
# subset (probed: sharpening takes about the same gradient-flow time
# eta * steps for each eta, ~170 to reach 20).
ETAS = (2 / 10, 2 / 15, 2 / 20, 2 / 25)


def make_problem(n: int = 1000, *, seed: int = 0, sizes=SIZES, dataset=None):
  r"""The model, the full batch and the initial params.

  Args:
    n: the first ``n`` training examples.
    seed: the params' PRNG seed.
    sizes: the MLP's sizes (tanh hidden layers).
    dataset: a :class:`fnn.data.Dataset` (default MNIST-1D).

  Returns:
    ``(model, params, x: [n, d], y: [n, K] one-hot targets)``, float32 (the
    params' dtype follows JAX's default float, x64 in the tests).
  """
  ds = data_lib.load("mnist1d") if dataset is None else dataset
  if not 1 <= n <= len(ds.x):
    raise ValueError(f"n must be in [1, {len(ds.x)}], got {n}")
  model = fnn.MLP(tuple(sizes), activation="tanh", output="identity",
                  loss="half_squared_error")
  params = model.init(jax.random.key(seed), dtype=jnp.zeros(()).dtype,
                      scheme="pytorch")
  dtype = jax.tree.leaves(params)[0].dtype
  x = jnp.asarray(ds.x[:n], dtype)
  y = jnp.asarray(np.eye(sizes[-1])[ds.y[:n]], dtype)  # (n, K)
  return model, params, x, y


@functools.partial(jax.jit, static_argnums=(0, 5))
def _sharpness(model, params, x, y, key, iters):
  return fnn.hessian_eigs(model, params, x, y, 1, key=key, iters=iters)[0]


def sharpness(model, params, x, y, *, key, iters: int = 20) -> float:
  r"""The top eigenvalue of the full-batch loss's Hessian at ``params``:
  ``fnn.hessian_eigs`` (Lanczos on the hand-derived ``fnn.hvp``) with
  ``min(iters, P)`` steps (``P`` the parameter count)."""
  p = sum(leaf.size for leaf in jax.tree.leaves(params))
  return float(_sharpness(model, params, x, y, key, min(int(iters), p)))


@functools.partial(jax.jit, static_argnums=(0, 5))
def gd_steps(model, params, x, y, eta, steps):
  r"""``steps`` full-batch GD steps ``params <- params - eta grad`` in one
  ``lax.scan``, the gradient fnn's hand-derived one.

  Returns:
    ``(params, losses: [steps])``, each loss at the params BEFORE its step.
  """
  def body(p, _):
    loss, g = fnn.value_and_grad(model, p, x, y)
    return jax.tree.map(lambda w, dw: w - eta * dw, p, g), loss
  return jax.lax.scan(body, params, None, length=steps)


def run_eta(model, params, x, y, eta: float, *, steps: int, every: int,
            key, iters: int = 20, check_iters: int = 0) -> dict:
  r"""GD with step size ``eta`` for ``steps`` steps, the sharpness measured
  every ``every`` steps (and after the last).

  Returns:
    A dict: ``eta``, ``sharpness_steps`` and ``sharpness`` (lists), ``loss``
    (per step, before it), ``diverged`` (the step at which the loss stopped
    being finite, else None), ``final_accuracy`` (training), ``seconds``
    (GD and measurements), and with ``check_iters`` the final sharpness by
    that many Lanczos steps (``lanczos_check``).
  """
  if steps < 1 or every < 1:
    raise ValueError(f"steps and every must be >= 1, got {steps}, {every}")
  t0 = time.perf_counter()
  losses, at, sharp, diverged = [], [], [], None
  step = 0
  while True:
    at.append(step)
    sharp.append(sharpness(model, params, x, y,
                           key=jax.random.fold_in(key, step), iters=iters))
    if step >= steps:
      break
    n = min(every, steps - step)
    params, chunk = gd_steps(model, params, x, y, eta, n)
    chunk = np.asarray(chunk, np.float64)
    bad = ~np.isfinite(chunk)
    if bad.any():  # checked outside the jitted steps
      first = int(np.argmax(bad))
      losses.extend(chunk[:first].tolist())
      diverged = step + first
      break
    losses.extend(chunk.tolist())
    step += n
  out = dict(eta=float(eta), two_over_eta=2 / float(eta),
             sharpness_steps=at, sharpness=sharp,
             # 5 significant digits: float32's are ~7; keeps the JSON small
             loss=[float(f"{v:.5g}") for v in losses],
             diverged=diverged, seconds=time.perf_counter() - t0)
  if diverged is None:
    out["final_loss"] = float(model.mean_loss(params, x, y))
    pred = jnp.argmax(model.apply(params, x), -1)
    out["final_accuracy"] = float(jnp.mean(pred == jnp.argmax(y, -1)))
    if check_iters:
      out["lanczos_check"] = dict(
          iters=[iters, check_iters],
          sharpness=[sharp[-1], sharpness(
              model, params, x, y, key=jax.random.fold_in(key, steps + 1),
              iters=check_iters)])
  return out


def summarize(r: dict) -> dict:
  r"""One run's figures (see the module docstring)."""
  s = np.asarray(r["sharpness"], np.float64)
  at = np.asarray(r["sharpness_steps"])
  target = r["two_over_eta"]
  total = at[-1]
  last = s[at >= total * 2 / 3] if total else s
  reached = np.flatnonzero(s >= target)
  first = int(at[reached[0]]) if reached.size else None
  loss = np.asarray(r["loss"], np.float64)
  up = np.diff(loss) > 0
  cut = first if first is not None else len(loss)
  frac = lambda v: float(v.mean()) if v.size else None  # noqa: E731
  return dict(
      eta=r["eta"], two_over_eta=target, initial_sharpness=float(s[0]),
      max_sharpness=float(s.max()), max_ratio=float(s.max() / target),
      median_last_third=float(np.median(last)),
      median_last_third_ratio=float(np.median(last) / target),
      first_step_at_2_over_eta=first, steps=int(total),
      loss_up_before=frac(up[:max(cut - 1, 0)]),
      loss_up_after=frac(up[max(cut - 1, 0):]) if first is not None else None,
      final_loss=r.get("final_loss"), final_accuracy=r.get("final_accuracy"),
      diverged=r["diverged"], seconds=r["seconds"])


def plot(path, payload):
  r"""Sharpness against step with ``2/eta`` dashed, and the loss, one color
  per ``eta``, from the JSON payload that :func:`main` writes."""
  plt = pyplot()
  fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
  for i, r in enumerate(payload["runs"]):
    c = f"C{i}"
    label = f"eta = {r['eta']:.4g} (2/eta = {r['two_over_eta']:.4g})"
    ax1.plot(r["sharpness_steps"], r["sharpness"], color=c, label=label)
    ax1.axhline(r["two_over_eta"], color=c, ls="--", lw=1)
    ax2.plot(np.arange(len(r["loss"])), r["loss"], color=c, lw=0.8,
             label=label)
  ax1.set_ylabel("sharpness: top Hessian eigenvalue\n(full-batch loss)")
  ax1.set_title("dashed: 2/eta, the stability limit of GD on a quadratic")
  ax1.legend(fontsize=8, loc="upper left")
  ax2.set_yscale("log")
  ax2.set_ylabel("full-batch training loss (1/2 |f - e_y|^2)")
  ax2.set_xlabel("gradient descent step")
  cfg = payload["config"]
  fig.suptitle(f"Edge of stability: full-batch GD on MNIST-1D "
               f"({cfg['n']} examples)\nMLP {'-'.join(map(str, cfg['sizes']))}"
               f" tanh, squared loss, float32; sharpness by fnn.hessian_eigs")
  fig.tight_layout()
  save_figure(fig, path)


def _floats(value: str) -> list[float]:
  try:
    out = [float(v) for v in value.split(",") if v.strip()]
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e))
  if not out or min(out) <= 0:
    raise argparse.ArgumentTypeError(f"need positive step sizes, got {value!r}")
  return out


def markdown(payload) -> str:
  cfg = payload["config"]
  lines = [
      "# Edge of stability: full-batch GD on MNIST-1D", "",
      f"`{payload['command']}`; {payload['date']}; {payload['machine']}; "
      f"JAX {payload['versions']['jax']}, NumPy "
      f"{payload['versions']['numpy']}; float32; {payload['seconds']:.0f} s "
      f"in all.", "",
      f"First {cfg['n']} MNIST-1D training examples, MLP "
      f"{'-'.join(map(str, cfg['sizes']))} tanh (PyTorch init, seed "
      f"{cfg['seed']}), loss 1/2 |f(x) - e_y|^2, plain full-batch GD, "
      f"{cfg['steps']} steps. Sharpness every {cfg['every']} steps: "
      f"`fnn.hessian_eigs(k=1, iters={cfg['iters']})` (Lanczos on the "
      f"hand-derived Hessian-vector product).", "",
      "| eta | 2/eta | initial | max sharpness (/ 2/eta) | median last "
      "third (/ 2/eta) | first step >= 2/eta | loss up: before / after | "
      "final loss | train acc | s |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
  for s in payload["summary"]:
    first = s["first_step_at_2_over_eta"]
    lines.append(
        f"| {s['eta']:.4g} | {s['two_over_eta']:.4g} | "
        f"{s['initial_sharpness']:.2f} | {s['max_sharpness']:.2f} "
        f"({s['max_ratio']:.2f}) | {s['median_last_third']:.2f} "
        f"({s['median_last_third_ratio']:.2f}) | "
        f"{'never' if first is None else first} | "
        f"{pct(s['loss_up_before'])} / {pct(s['loss_up_after'])} | "
        + (f"diverged at {s['diverged']} | -" if s["diverged"] is not None else
           f"{s['final_loss']:.4f} | {s['final_accuracy']:.3f}")
        + f" | {s['seconds']:.0f} |")
  lines.append("")
  checks = [(r["eta"], r["lanczos_check"]) for r in payload["runs"]
            if "lanczos_check" in r]
  if checks:
    worst = max(abs(c["sharpness"][0] - c["sharpness"][1])
                / abs(c["sharpness"][1]) for _, c in checks)
    iters = checks[0][1]["iters"]
    lines.append(f"Lanczos check at the final params: {iters[0]} vs "
                 f"{iters[1]} steps differ by at most "
                 f"{worst:.1e} (relative) over the runs.")
  hover = [s for s in payload["summary"] if s["first_step_at_2_over_eta"]
           is not None and s["first_step_at_2_over_eta"] <= s["steps"] * 2 / 3]
  lines.append(
      f"Reached 2/eta within the first two thirds of training: "
      f"{len(hover)} of {len(payload['summary'])} step sizes"
      + (f"; over their last third the median sharpness was "
         f"{min(s['median_last_third_ratio'] for s in hover):.2f}-"
         f"{max(s['median_last_third_ratio'] for s in hover):.2f} of 2/eta."
         if hover else "."))
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--etas", type=_floats, default=list(ETAS),
                      help="comma-separated step sizes (default 2/10, 2/15, "
                      "2/20, 2/25)")
  parser.add_argument("--steps", type=int, default=5000)
  parser.add_argument("--every", type=int, default=25,
                      help="GD steps between two sharpness measurements")
  parser.add_argument("--n", type=int, default=1000,
                      help="training examples (the first n of MNIST-1D's)")
  parser.add_argument("--iters", type=int, default=20,
                      help="Lanczos steps per sharpness measurement")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=RESULTS)
  add_replot_flag(parser, NAME)
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out, NAME, plot)
  if args.steps < 1 or args.every < 1 or args.iters < 1:
    parser.error("--steps, --every and --iters must be at least 1")
  command = (f"experiments/{NAME}.py " + " ".join(
      sys.argv[1:] if argv is None else argv)).strip()
  t0 = time.perf_counter()
  model, params, x, y = make_problem(args.n, seed=args.seed)
  runs = []
  for i, eta in enumerate(args.etas):
    r = run_eta(model, params, x, y, eta, steps=args.steps, every=args.every,
                key=jax.random.key(1000 + i), iters=args.iters,
                check_iters=3 * args.iters)
    runs.append(r)
    s = summarize(r)
    print(f"eta {eta:.4g} (2/eta {2 / eta:.4g}): sharpness "
          f"{s['initial_sharpness']:.2f} -> max {s['max_sharpness']:.2f}, "
          f"last third {s['median_last_third']:.2f} "
          f"({s['median_last_third_ratio']:.2f} of 2/eta), "
          f"{r['seconds']:.0f} s", flush=True)
  payload = dict(
      config=dict(n=args.n, sizes=list(SIZES), steps=args.steps,
                  every=args.every, iters=args.iters, seed=args.seed,
                  etas=list(args.etas), dtype="float32", init="pytorch",
                  loss="half_squared_error", activation="tanh"),
      command=command, date=datetime.date.today().isoformat(),
      machine=machine(), versions=dict(jax=jax.__version__,
                                       numpy=np.__version__,
                                       python=sys.version.split()[0]),
      seconds=time.perf_counter() - t0,
      summary=[summarize(r) for r in runs], runs=runs)
  md = markdown(payload)
  write(args.out, NAME, payload, md)
  plot(f"{args.out}/{NAME}.png", payload)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())

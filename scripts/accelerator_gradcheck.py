r"""Gradient correctness on an accelerator: float32 there, float64 CPU reference.

For every hidden activation x (output, loss) pair of the sweep at the given
depths, the hand-derived gradient (:func:`fnn.value_and_grad`, float32,
jitted on the default device: GPU or TPU when present) is compared with
``jax.grad(model.mean_loss)`` in float64 on the CPU, once per matmul
precision:

- ``highest``: ``jax_default_matmul_precision="highest"`` (true float32
  matmuls): the error should be float32 rounding, as on the CPU;
- ``default``: the device's default (TF32 on NVIDIA Ampere and later, bf16
  passes on TPU): shows what the fast default does to the gradient.

Errors are ``max |hand - ref| / max |ref|`` per leaf (the largest leaf per
configuration), as in ``fnn.check_grads``. Writes JSON (``--json``) and
prints a summary. Exit 1 if any configuration under ``highest`` exceeds the
float32 expectation (1e-4) by far (1e-2, "wrong"), else 0.

Usage:
  python scripts/accelerator_gradcheck.py [--depths 1,2,3] [--batch 64]
      [--json results.json] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # the CPU reference is float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402
from fnn import gradcheck, sweep  # noqa: E402

WRONG = gradcheck.WRONG
EXPECT = gradcheck.TOLERANCES["float32"]


def scaled_error(hand, ref) -> float:
  return max(float(np.max(np.abs(np.asarray(h, np.float64) - r))
                   / max(np.max(np.abs(r)), 1e-300))
             for h, r in zip(jax.tree.leaves(hand), jax.tree.leaves(ref)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="1,3")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--width", type=int, default=256,
                      help="hidden width (wide enough for TF32 to show)")
  parser.add_argument("--limit", type=int, help="first N configurations")
  parser.add_argument("--json", help="write the results here")
  args = parser.parse_args(argv)
  cpu = jax.devices("cpu")[0]
  device = jax.devices()[0]
  models = sweep.sweep_models(tuple(int(d) for d in args.depths.split(",")))
  models = [fnn.MLP((32,) + (args.width,) * (m.num_layers - 1) + (10,),
                    activation=m.activation or "relu", output=m.output,
                    loss=m.loss) for m in models]
  if args.limit:
    models = models[:args.limit]
  rows, t0 = [], time.perf_counter()
  hand_fn = jax.jit(fnn.value_and_grad, static_argnums=0)
  ref_fn = jax.jit(jax.grad(lambda m, p, x, y: m.mean_loss(p, x, y),
                            argnums=1), static_argnums=0)
  for i, model in enumerate(models):
    with jax.default_device(cpu):
      params64, x64, y64 = sweep.problem(model, jax.random.key(i), args.batch)
      ref = jax.device_get(ref_fn(model, params64, x64, y64))
    params32 = jax.device_put(jax.tree.map(lambda p: p.astype(jnp.float32),
                                           params64), device)
    x32 = jax.device_put(x64.astype(jnp.float32), device)
    y32 = jax.device_put(y64.astype(jnp.float32) if jnp.issubdtype(
        y64.dtype, jnp.floating) else y64.astype(jnp.int32), device)
    row = dict(sizes=list(model.sizes),
               activation=model.activation[0].name if model.activation
               else "(none)", output=model.output.name, loss=model.loss.name)
    for precision in ("highest", "default"):
      with jax.default_matmul_precision(precision):
        _, hand = hand_fn(model, params32, x32, y32)
        row[precision] = scaled_error(jax.device_get(hand), ref)
    rows.append(row)
  wall = time.perf_counter() - t0
  summary = {}
  for precision in ("highest", "default"):
    errs = np.array([r[precision] for r in rows])
    summary[precision] = dict(max=float(errs.max()),
                              median=float(np.median(errs)),
                              above_expectation=int(np.sum(errs > EXPECT)),
                              wrong=int(np.sum(errs > WRONG)))
  out = dict(device=str(device), platform=device.platform,
             device_kind=getattr(device, "device_kind", ""),
             jax=jax.__version__, python=platform.python_version(),
             configurations=len(rows), seconds=wall, expectation=EXPECT,
             summary=summary, rows=rows)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  print(f"device {out['device']} ({out['device_kind']}), jax {jax.__version__}"
        f": {len(rows)} configurations in {wall:.1f} s")
  for precision, s in summary.items():
    print(f"  matmul precision {precision:>7}: max error {s['max']:.2e}, "
          f"median {s['median']:.2e}, {s['above_expectation']} above the "
          f"float32 expectation {EXPECT:g}, {s['wrong']} above {WRONG:g}")
  return 1 if summary["highest"]["wrong"] else 0


if __name__ == "__main__":
  sys.exit(main())

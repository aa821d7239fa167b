"""Run in a subprocess by test_parallel.py: JAX must start with 4 CPU devices.

Prints one JSON object of measurements; the test asserts on them.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

import fnn  # noqa: E402
from fnn import arch, data, parallel, train  # noqa: E402


def maxdiff(a, b):
  return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-300))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  out = {"devices": len(jax.devices())}
  mesh = parallel.make_mesh()
  model = fnn.MLP((5, 7, 9, 3), activation="tanh")
  params = model.init(jax.random.key(0), jnp.float64)
  x = jax.random.normal(jax.random.key(1), (16, 5), jnp.float64)
  y = jnp.arange(16) % 3
  ps = parallel.replicate(mesh, params)
  xs, ys = parallel.shard_batch(mesh, x, y)
  out["x_sharding"] = str(xs.sharding.spec)
  for name in ("grad", "per_example_grads", "per_example_grad_norms"):
    f = jax.jit(getattr(fnn, name), static_argnums=0)
    out[name] = maxdiff(f(model, ps, xs, ys), f(model, params, x, y))
  f = jax.jit(fnn.grad_stats, static_argnums=0)
  one, sharded = f(model, params, x, y), f(model, ps, xs, ys)
  out["grad_stats"] = maxdiff(sharded, one)
  hlo = jax.jit(fnn.grad, static_argnums=0).lower(
      model, ps, xs, ys).compile().as_text()
  out["grad_all_reduce"] = hlo.count("all-reduce")
  single = jax.jit(fnn.grad, static_argnums=0).lower(
      model, params, x, y).compile().as_text()
  out["single_all_reduce"] = single.count("all-reduce")
  try:
    parallel.shard_batch(mesh, x[:10])
  except ValueError as e:
    out["indivisible_error"] = str(e)
  # A short training run: 4-device data parallel vs one device.
  ds = data.load("moons", key=jax.random.key(0), n_train=256, n_test=64)
  ds = ds._replace(x=ds.x.astype(np.float64), x_test=ds.x_test.astype(np.float64))
  model = fnn.MLP((2, 16, 16, 2), activation="tanh")
  opt = train.make_optimizer("adam", 1e-2)
  cfg = train.StepConfig(dropout=0.2)
  runs = {}
  for label, m in (("one", None), ("four", mesh)):
    state = train.init_state(model, opt, jax.random.key(3), jnp.float64)
    final, hist = train.fit(model, opt, state, ds, epochs=3, batch_size=32,
                            cfg=cfg._replace(mesh=m))
    runs[label] = (final, hist)
  out["train_params"] = maxdiff(runs["four"][0].params, runs["one"][0].params)
  out["train_loss"] = abs(runs["four"][1][-1]["train_loss"]
                          - runs["one"][1][-1]["train_loss"])
  out["train_param_sharding"] = str(runs["four"][0].params[0].w.sharding.spec)
  epoch_hlo = train.train_epoch.lower(
      model, opt, cfg._replace(mesh=mesh), 32,
      parallel.replicate(mesh, train.init_state(model, opt, jax.random.key(3),
                                                jnp.float64)),
      parallel.replicate(mesh, jnp.asarray(ds.x)),
      parallel.replicate(mesh, jnp.asarray(ds.y))).compile().as_text()
  out["epoch_all_reduce"] = epoch_hlo.count("all-reduce")
  # DP-SGD, Poisson batches, sharded.
  dp = cfg._replace(dp_clip=1.0, dp_noise=1.0)
  state = train.init_state(model, opt, jax.random.key(3), jnp.float64)
  a, _ = train.fit(model, opt, state, ds, epochs=1, batch_size=32, cfg=dp)
  b, _ = train.fit(model, opt, state, ds, epochs=1, batch_size=32,
                   cfg=dp._replace(mesh=mesh))
  out["dp_params"] = maxdiff(b.params, a.params)
  # Any network: a Sequential (convolution, LayerNorm, a residual block, ()
  # entries) replicated, its batch sharded: the hand-derived gradient
  # all-reduced (the step and the epoch around it are the MLP's, above).
  seq = arch.build("conv1d:3:2:1:1,relu,layernorm,flatten,res(dense:9,tanh)",
                   2, 2)
  # Params drawn with NumPy in the model's shapes: no init to compile.
  rng = np.random.default_rng(0)
  is_shape = lambda t: isinstance(t, tuple) and len(t) > 0 and all(
      isinstance(n, int) for n in t)
  params = jax.tree.map(lambda shape: jnp.asarray(rng.normal(size=shape)),
                        seq.param_shapes, is_leaf=is_shape)
  xm, ym = jnp.asarray(ds.x[:16]), jnp.asarray(ds.y[:16])
  f = jax.jit(fnn.grad, static_argnums=0)
  sharded = f(seq, parallel.replicate(mesh, params),
              *parallel.shard_batch(mesh, xm, ym))
  out["seq_grad"] = maxdiff(sharded, f(seq, params, xm, ym))
  out["seq_grad_sharding"] = str(sharded[0].w.sharding.spec)
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())

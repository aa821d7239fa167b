r"""Multi-host data parallelism: one process per host, jax.distributed.

On every host run, with the same coordinator (host:port of process 0):

  python scripts/multihost.py --coordinator HOST0:1234 --num-processes N \
      --process-id I [--steps 20]

Each process calls :func:`fnn.parallel.initialize` (``jax.distributed.
initialize``, with gloo collectives on the CPU) before anything else in JAX,
builds a ``data`` mesh over EVERY process's devices, loads the same dataset
(identical on all hosts: generated from a fixed seed), and trains with the
global batch sharded over all devices: each host computes the hand-derived
per-example gradients of its own examples, XLA all-reduces the mean across
hosts. Process 0 prints the result as JSON.

``--local N`` starts N such processes on this machine (coordinator on
localhost) and checks that they agree with a single-process run: the test
of the code path, on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys


def worker(args) -> int:
  from fnn import parallel
  parallel.initialize(args.coordinator, args.num_processes, args.process_id)
  import jax
  import numpy as np
  import fnn
  from fnn import data, train
  mesh = parallel.make_mesh()
  ds = data.load("moons", key=jax.random.key(0), n_train=512, n_test=128)
  model = fnn.MLP((2, 32, 32, 2), activation="tanh")
  opt = train.make_optimizer("adam", 1e-2)
  state = train.init_state(model, opt, jax.random.key(1))
  cfg = train.StepConfig(mesh=mesh if mesh.size > 1 else None)
  final, hist = train.fit(model, opt, state, ds, epochs=args.epochs,
                          batch_size=64, cfg=cfg)
  w = np.asarray(jax.device_get(final.params[0].w.addressable_data(0)))
  out = dict(process=jax.process_index(), processes=jax.process_count(),
             devices=jax.device_count(), local_devices=jax.local_device_count(),
             test_accuracy=hist[-1]["test_accuracy"],
             train_loss=hist[-1]["train_loss"], w_checksum=float(np.sum(w)),
             w_first=w.ravel()[:4].tolist())
  if jax.process_index() == 0:
    print(json.dumps(out), flush=True)
  return 0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def local(args) -> int:
  r"""N processes here, then a single-process run; prints both results."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.abspath(__file__), "--coordinator",
         f"localhost:{port}", "--num-processes", str(args.local),
         "--epochs", str(args.epochs)]
  procs = [subprocess.Popen(cmd + ["--process-id", str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(args.local)]
  outs = [p.communicate(timeout=600) for p in procs]
  if any(p.returncode for p in procs):
    for p, (o, e) in zip(procs, outs):
      print(f"process exit {p.returncode}: {e[-2000:]}", file=sys.stderr)
    return 1
  multi = json.loads(outs[0][0].strip().splitlines()[-1])
  single_cmd = [sys.executable, os.path.abspath(__file__), "--coordinator",
                f"localhost:{_free_port()}", "--num-processes", "1",
                "--process-id", "0", "--epochs", str(args.epochs)]
  single = json.loads(subprocess.run(single_cmd, env=env, capture_output=True,
                                     text=True, check=True,
                                     timeout=600).stdout.strip().splitlines()[-1])
  print(json.dumps(dict(multi=multi, single=single)))
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--coordinator", help="HOST:PORT of process 0")
  parser.add_argument("--num-processes", type=int)
  parser.add_argument("--process-id", type=int)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--local", type=int, metavar="N",
                      help="start N processes on this machine and compare "
                      "with one process")
  args = parser.parse_args(argv)
  if args.local:
    return local(args)
  if None in (args.coordinator, args.num_processes, args.process_id):
    parser.error("--coordinator, --num-processes and --process-id are "
                 "required (or --local N)")
  return worker(args)


if __name__ == "__main__":
  sys.exit(main())

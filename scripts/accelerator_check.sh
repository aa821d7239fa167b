#!/usr/bin/env bash
# On a GPU or TPU machine: gradient correctness in float32 against a float64
# CPU reference (matmul precision "highest" and the device default), then the
# benchmarks; every result as JSON under $OUT (default accelerator-results/).
#
#   pip install -e ".[cuda]"     # or ".[tpu]"; then:
#   bash scripts/accelerator_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-accelerator-results}
PY=${PY:-python}
mkdir -p "$OUT"
$PY -c "import jax; print('devices:', jax.devices()); print('jax', jax.__version__)" | tee "$OUT/devices.txt"
# 1. float32 gradients on the device vs float64 on the CPU, both precisions.
$PY scripts/accelerator_gradcheck.py --json "$OUT/gradcheck.json" | tee "$OUT/gradcheck.txt"
# 2. fnn gradcheck on the device in bfloat16 and float32 (float64 references).
$PY -m fnn gradcheck --sizes 784,1024,1024,10 --activation relu --mode directional \
    --dtype bfloat16 --batch 256 --format json > "$OUT/gradcheck_bf16.json" || true
$PY -m fnn gradcheck --sizes 784,1024,1024,10 --activation relu --mode directional \
    --dtype float32 --batch 256 --format json > "$OUT/gradcheck_f32.json" || true
# 3. Throughput: training steps/s and FLOP/s against a large matmul; fnn.grad vs jax.grad.
$PY scripts/bench_scale.py --markdown --json "$OUT/bench_scale.json" | tee "$OUT/bench_scale.txt"
# 4. The core gradient benchmark on the device (the CPU grid's models).
JAX_PLATFORMS= $PY scripts/bench_grads.py --batches 128,1024 --markdown \
    --json "$OUT/bench_grads.json" | tee "$OUT/bench_grads.txt" || true
# 5. fnn against BackPACK and Opacus, both on the GPU (where torch has CUDA).
$PY scripts/bench_peers.py --gpu --markdown --json "$OUT/bench_peers_gpu.json" \
    | tee "$OUT/bench_peers_gpu.txt" || true
echo "results in $OUT/"

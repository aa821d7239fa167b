#!/usr/bin/env bash
# Issue 15's accelerator measurement: model-steps/s of K runs in one program
# (fnn.fit_many) for K = 1, 8, 64, 256, for the MNIST-1D default (MLP
# 40-512-512-10) and the CNN, and the fraction of the device's matmul FLOP/s
# (XLA's FLOP count of an epoch; PEAK_TFLOPS defaults to an H100 SXM's dense
# TF32 tensor figure, 494.7; give FP32 67 to compare with non-tensor peak).
# Run from the repository root on the accelerator machine, with the venv set
# up (make setup) or its wheels carried in. Writes experiments/results/.
set -euo pipefail
PY=${PY:-.venv/bin/python}
PEAK=${PEAK_TFLOPS:-494.7}
OUT=${OUT:-experiments/results}
"$PY" scripts/bench_train.py --runs 1,8,64,256 --models mlp512,cnn \
  --peak-tflops "$PEAK" --markdown --json "$OUT/bench_train_runs_gpu.json" \
  | tee "$OUT/bench_train_runs_gpu.md"

#!/usr/bin/env bash
# The one device check for kernels_pallas/prefix_attention.py, for a session with an H200:
#   1. kernel correctness on the GPU (odd lengths, GQA, empty suffix, uneven tree; f32+bf16),
#   2. a block-size sweep at the target shape (B=64, P=8192, S=256, H=32, D=128),
#   3. the full benchmark grid (naive XLA vs XLA decomposition vs Pallas).
# Results (JSON, rewritten after every row, so a timeout keeps what finished) go to $OUT when
# set (the device tool), else benchmarks/results/. Budget: ~6-9 minutes; run with a 600 s
# limit, then copy the JSON into benchmarks/results/ and commit it.
# Usage (device tool): bash benchmarks/gpu_check_prefix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # naive variant sizes itself by free memory
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
"$PY" -m benchmarks.prefix_attention --gpu-check --iters 10 2>&1 | tee "${OUT:-/tmp}/gpu_check_prefix.log"

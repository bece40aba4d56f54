#!/usr/bin/env bash
# The ONE script to run on the H200 for kernels_pallas/lowbit_matmul.py (device time is short:
# ~15 min including start-up). Order: correctness on the GPU first (every kernel variant, real
# Triton compile), then the PERFORMANCE.md target shape, then the full table. Every step writes
# its JSON under benchmarks/results/ row by row, so a step cut by its time limit still leaves
# its partial numbers ("results": {"complete": false, ...}). Commit those JSON files afterwards.
#
#   bash benchmarks/gpu_check_lowbit.sh            # PYTHON=/path/to/python to pick the venv
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export XLA_PYTHON_CLIENT_PREALLOCATE=false

$PY - <<'PYEOF' || { echo "no GPU backend: aborting"; exit 2; }
import jax
print(jax.__version__, jax.devices())
assert jax.default_backend() == "gpu", jax.default_backend()
PYEOF

echo "== 1/3 correctness (check-only, all bits x dims x M) =="
timeout 180 $PY -m benchmarks.lowbit_matmul --preset check --check-only
check_rc=$?
if [ $check_rc -ne 0 ]; then
  echo "correctness step failed (rc=$check_rc): not timing a wrong or broken kernel."
  exit $check_rc
fi

echo "== 2/3 target shape K=8192 N=24576 =="
timeout 240 $PY -m benchmarks.lowbit_matmul --preset target --iters 20

echo "== 3/3 full Llama table =="
timeout 300 $PY -m benchmarks.lowbit_matmul --preset full --iters 10
echo "done; results in benchmarks/results/"

#!/usr/bin/env bash
# One device call: the GPU tests of seeded sampling / window plans / bf16 eager, then the 3B soak.
# Usage on the device machine: bash benchmarks/soak_device.sh  (logs and results under $OUT)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,memory.used --format=csv > "$OUT/gpu.txt" 2>&1
timeout ${TEST_TIMEOUT:-110} python -m pytest -q -p no:cacheprovider tests/test_gpu_eager.py tests/test_graphs_gpu.py \
    -k "${TEST_FILTER:-cuda or lse or seed or no_cuda_allocation or falls_back or (replay_equals_eager and single)}" \
    > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
tail -4 "$OUT/pytest_gpu.log"
timeout ${SOAK_TIMEOUT:-300} python benchmarks/soak.py --preset 3b --requests ${REQUESTS:-10000} \
    --max-seconds ${SOAK_SECONDS:-230} --size ${SIZES:-112 448 112 448} --out-dir "$OUT" ${SOAK_ARGS:-} \
    > "$OUT/soak.log" 2>&1
echo "soak rc=$?" >> "$OUT/soak.log"
tail -40 "$OUT/soak.log"

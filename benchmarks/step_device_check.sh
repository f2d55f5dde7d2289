#!/usr/bin/env bash
# One device call for the fused kernels (issue 12): their GPU tests, then the step A/B benchmark.
# Usage on the device machine: bash benchmarks/step_device_check.sh   (logs under $OUT)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
timeout ${TEST_TIMEOUT:-240} python -m pytest -q -p no:cacheprovider -x ${TESTS:-tests/test_kernels.py tests/test_kernels_gpu.py} \
    > "$OUT/pytest_kernels.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_kernels.log"
tail -15 "$OUT/pytest_kernels.log"
if [ -n "${TUNE:-}" ]; then
  timeout 200 python benchmarks/step_attention_tune.py > "$OUT/tune.log" 2>&1
  echo "tune rc=$?" >> "$OUT/tune.log"
  tail -12 "$OUT/tune.log"
fi
timeout ${BENCH_TIMEOUT:-300} python benchmarks/step_kernels.py --preset 3b --batch ${BATCH:-1 8 32} \
    --out-dir "$OUT" ${BENCH_ARGS:-} > "$OUT/step.log" 2>&1
echo "step rc=$?" >> "$OUT/step.log"
grep -v "^|" "$OUT/step.log" | tail -30
grep "^| [0-9]" "$OUT/step.log" | head -12

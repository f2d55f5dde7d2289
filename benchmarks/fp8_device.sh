#!/usr/bin/env bash
# One device call for FP8 (issue 15): the FP8 GPU tests in the background while the random 3B is
# written, loaded, calibrated and reported on; the A/B timings wait for the tests to finish.
# Usage on the device machine: bash benchmarks/fp8_device.sh  (writes logs under $OUT)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
( timeout ${TEST_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider tests/test_calib_gpu.py > "$OUT/pytest_fp8_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_fp8_gpu.log"; touch "$OUT/tests.done" ) &
timeout ${BENCH_TIMEOUT:-420} python benchmarks/fp8_ab.py --preset 3b --out-dir "$OUT" --tag fp8-3b \
    --wait-for "$OUT/tests.done" ${BENCH_ARGS:-} > "$OUT/fp8_ab.log" 2>&1
echo "fp8_ab rc=$?" >> "$OUT/fp8_ab.log"
wait
tail -4 "$OUT/pytest_fp8_gpu.log"
tail -60 "$OUT/fp8_ab.log"

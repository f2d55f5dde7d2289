#!/usr/bin/env bash
# One device call for FP8 (issue 15): the FP8 GPU tests in the background while the random 3B is
# written, loaded, calibrated and measured for fidelity (benchmarks/fp8_fused.py); its timings
# wait for the tests; then latency.py A/B (bf16 graphs vs FP8 graphs) on the same checkpoint.
# Usage on the device machine: bash benchmarks/fp8_device.sh  (writes logs under $OUT)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/fp8ck
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
( timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider tests/test_calib_gpu.py tests/test_fp8_fused.py \
    > "$OUT/pytest_fp8_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_fp8_gpu.log"; touch "$OUT/tests.done" ) &
timeout ${BENCH_TIMEOUT:-350} python benchmarks/fp8_fused.py --preset 3b --write-to /tmp/fp8ck --out-dir "$OUT" \
    --wait-for "$OUT/tests.done" ${BENCH_ARGS:-} > "$OUT/fp8_fused.log" 2>&1
echo "fp8_fused rc=$?" >> "$OUT/fp8_fused.log"
wait
CAL=$(ls "$OUT"/*_calib.json 2>/dev/null | head -1)
if [ -n "$CAL" ] && [ "${LATENCY:-1}" = 1 ]; then
  timeout ${LAT_TIMEOUT:-140} python benchmarks/latency.py --checkpoint /tmp/fp8ck/3b --a graphs=on \
      --b "graphs=on,fp8=$CAL" --batch 1 32 --iters 10 --slow-iters 4 --out-dir "$OUT" --tag latency-fp8 \
      > "$OUT/latency.log" 2>&1
  echo "latency rc=$?" >> "$OUT/latency.log"
fi
tail -4 "$OUT/pytest_fp8_gpu.log"
tail -80 "$OUT/fp8_fused.log"
tail -12 "$OUT/latency.log" 2>/dev/null

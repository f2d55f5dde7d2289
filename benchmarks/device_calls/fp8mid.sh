#!/usr/bin/env bash
# The mid-rows FP8 GEMM (calib/fp8_mid_gemm.py, issue 15): its gpu tests, the per-shape A/B against _scaled_mm
# (benchmarks/fp8_mid_ab.py), then end to end A = defaults (GRAPHRT_FP8_MID=auto), B = GRAPHRT_FP8_MID=off,
# FP8 scope `lm`, interleaved in one process. Logs under $OUT. TESTS=0 / GEMM=0 skip those parts.
source "$(dirname "$0")/preamble.sh"
if [ "${TESTS:-1}" = 1 ]; then
  timeout 150 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_fp8_mid_gemm.py tests/test_fp8_skinny.py \
      > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"; grep -E "passed|failed|FAILED|Error|rc=|rel err" "$OUT/pytest_gpu.log" | tail -40
  el tests
fi
if [ "${GEMM:-1}" = 1 ]; then
  timeout ${GEMM_TIMEOUT:-170} python benchmarks/fp8_mid_ab.py --rows ${ROWS:-96 384 464 512 1024} --out-dir "$OUT" \
      --tag fp8mid > "$OUT/gemm.log" 2>&1
  echo "gemm rc=$?" >> "$OUT/gemm.log"; grep -E "M=|rc=" "$OUT/gemm.log"; el gemm
fi
checkpoint_3b
calibrate_3b
timeout ${LAT_TIMEOUT:-230} python benchmarks/latency.py --checkpoint /tmp/ck3b --a "graphs=on,fp8=$CAL" \
    --b "graphs=on,fp8=$CAL,env.GRAPHRT_FP8_MID=off" \
    --batch ${BATCHES:-32 8 1} --iters ${ITERS:-8} --out-dir "$OUT" --tag fp8mid > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"; grep -E '^\| [AB] |rc=|FP8 mid' "$OUT/latency.log"; el latency

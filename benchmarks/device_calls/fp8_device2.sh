#!/usr/bin/env bash
# Second FP8 device call: tune the weight-only GEMM's tiles (benchmarks/w8a16_tune.py), then the
# fused step and end to end again with those tiles (GRAPHRT_W8A16_CONFIGS), bf16 vs FP8 modes.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
( timeout 150 python -m pytest -q -p no:cacheprovider tests/test_fp8_fused.py > "$OUT/pytest_cpu_on_device.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_cpu_on_device.log" ) &
timeout ${TUNE_TIMEOUT:-110} python benchmarks/w8a16_tune.py --out "$OUT/w8a16_configs.json" > "$OUT/w8a16_tune.log" 2>&1
echo "tune rc=$?" >> "$OUT/w8a16_tune.log"
wait
CFG=""
[ -s "$OUT/w8a16_configs.json" ] && CFG="$OUT/w8a16_configs.json"
GRAPHRT_W8A16_CONFIGS=$CFG timeout ${BENCH_TIMEOUT:-170} python benchmarks/fp8_fused.py --preset 3b --out-dir "$OUT" \
    --tag fp8-fused-tuned --calib-pairs 16 --held-out 2 --skip fidelity,tokens --modes w8a8,w8a16,w8a16-int8 \
    > "$OUT/fp8_fused.log" 2>&1
echo "fp8_fused rc=$?" >> "$OUT/fp8_fused.log"
tail -3 "$OUT/pytest_cpu_on_device.log"
cat "$OUT/w8a16_tune.log" | cut -c1-400
tail -40 "$OUT/fp8_fused.log"

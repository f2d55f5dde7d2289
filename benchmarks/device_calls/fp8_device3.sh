#!/usr/bin/env bash
# Third FP8 device call: the GPU tests on the final code (tuned W8A16 tiles built in) beside a
# fidelity run on more held-out pairs (48) for the three modes and the bf16-rounding probe.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
( timeout 200 python -m pytest -q -p no:cacheprovider tests/test_calib_gpu.py tests/test_fp8_fused.py \
    > "$OUT/pytest_fp8_gpu.log" 2>&1; echo "pytest rc=$?" >> "$OUT/pytest_fp8_gpu.log" ) &
timeout 200 python benchmarks/fp8_fused.py --preset 3b --out-dir "$OUT" --tag fp8-fidelity48 --held-out 48 \
    --fidelity-short --skip step,e2e,tokens > "$OUT/fp8_fused.log" 2>&1
echo "fp8_fused rc=$?" >> "$OUT/fp8_fused.log"
wait
tail -6 "$OUT/pytest_fp8_gpu.log"
tail -25 "$OUT/fp8_fused.log"

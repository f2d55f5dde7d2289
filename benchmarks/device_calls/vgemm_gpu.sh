#!/usr/bin/env bash
# One device call for the vision GEMM (issues 13/15): the new GEMM's GPU tests, the GEMM + tower
# A/B (benchmarks/vision_gemm.py), then the other vision GPU tests (they must still pass).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_gemm.py > "$OUT/pytest_vgemm.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_vgemm.log"; tail -15 "$OUT/pytest_vgemm.log" | cut -c1-800; el "gemm tests"
timeout 330 python benchmarks/vision_gemm.py --out "$OUT/vgemm.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
grep -E '^M=|^vision|rc=|Error|error|\[' "$OUT/bench.log" | cut -c1-1800 | head -60; el "bench"
timeout $(( 560 - ($(date +%s) - T0) )) python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_kernels.py \
    tests/test_vision.py tests/test_vision_attention.py tests/test_vision_attention_ws.py \
    tests/test_vision_hopper_attention.py tests/test_vision_cudnn.py tests/test_fp8_vision.py > "$OUT/pytest_vision.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_vision.log"; tail -8 "$OUT/pytest_vision.log" | cut -c1-600; el "vision tests"

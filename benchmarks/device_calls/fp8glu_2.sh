#!/usr/bin/env bash
# fp8glu, device call 2: the GPU tests with the fused gate/up GEMM: its own (kernel at the 3B's
# shapes, mid checkpoint graphs = eager with it on and off), then the existing FP8 graph tests with
# GRAPHRT_FP8_GATE_UP=triton (every W8A8 prefill on the new kernel).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/test_fp8_swiglu_gpu.py -s > "$OUT/pytest_glu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_glu.log"; grep -E "rows |passed|failed|Error|rc=" "$OUT/pytest_glu.log" | tail -15
GRAPHRT_FP8_GATE_UP=triton timeout 300 python -m pytest -q -p no:cacheprovider -m gpu tests/test_calib_gpu.py \
    tests/test_fp8_fused.py > "$OUT/pytest_fp8_triton.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_fp8_triton.log"; grep -E "passed|failed|FAILED|rc=" "$OUT/pytest_fp8_triton.log" | tail -15

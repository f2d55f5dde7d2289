#!/usr/bin/env bash
# fp8glu, device call 1: the FP8 gate/up + SiLU*mul + quantize GEMM's candidates against _scaled_mm +
# the pass at 512 / 4,096 / 16,384 rows, then its kernel-level GPU tests.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
timeout 240 python benchmarks/fp8_swiglu.py --rows ${ROWS:-512 4096 16384} --reps ${REPS:-20} --out-dir "$OUT" \
    ${CANDS:+--candidates $CANDS} > "$OUT/gemm.log" 2>&1
echo "bench rc=$?" >> "$OUT/gemm.log"; cat "$OUT/gemm.log" | grep -v "^wrote" | tail -60
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu -k "not eager" tests/test_fp8_swiglu_gpu.py -s \
    > "$OUT/pytest1.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest1.log"; grep -E "rows |passed|failed|Error|rc=" "$OUT/pytest1.log" | tail -15

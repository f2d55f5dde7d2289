#!/usr/bin/env bash
# FP8 on the current tree (issue 15, third part), one device call: the FP8 GPU tests in the
# background while the random 3B is written, loaded and calibrated (64 pairs); then, after the
# tests, bf16 vs w8a8 (split-K skinny GEMM, tiles chosen per shape) vs w8a8-untuned (the kernel
# before) on graphs: one step at B=1/8/32, the prefill graph, end to end at B=1/32, kernel tables
# (benchmarks/fp8_fused.py); then the per-shape GEMM table (benchmarks/fp8_skinny_ab.py).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/fp8ck
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
( timeout ${TEST_TIMEOUT:-240} python -m pytest -q -p no:cacheprovider tests/test_calib_gpu.py tests/test_fp8_fused.py \
    tests/test_fp8_skinny.py > "$OUT/pytest_fp8_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_fp8_gpu.log"; touch "$OUT/tests.done" ) &
timeout ${BENCH_TIMEOUT:-330} python benchmarks/fp8_fused.py --preset 3b --write-to /tmp/fp8ck --out-dir "$OUT" \
    --tag fp8-current --modes w8a8 --untuned --skip fidelity,tokens --batch 1 8 32 --e2e-batch 1 32 \
    --wait-for "$OUT/tests.done" ${BENCH_ARGS:-} > "$OUT/fp8_fused.log" 2>&1
echo "fp8_fused rc=$?" >> "$OUT/fp8_fused.log"
wait
timeout ${AB_TIMEOUT:-100} python benchmarks/fp8_skinny_ab.py --rows 12 --out-dir "$OUT" ${AB_ARGS:-} \
    > "$OUT/skinny_ab.log" 2>&1
echo "skinny_ab rc=$?" >> "$OUT/skinny_ab.log"
tail -5 "$OUT/pytest_fp8_gpu.log"
grep -v "^{" "$OUT/fp8_fused.log" | tail -60
tail -12 "$OUT/skinny_ab.log"

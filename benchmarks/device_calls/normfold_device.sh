#!/usr/bin/env bash
# One device call for the norms folded into the swap-AB step GEMMs (issue 12, point 2): the fold's
# GPU tests, the fused-graph and graphs-vs-eager tests, then the step A/B at B = 1, 8, 32: fused (its
# norm mode from BENCH_NORM, default kernel) vs fused-normfold (GRAPHRT_STEP_NORM=fold). The
# 2026-11-25 runs predate the variant's rename: SETS=fused,fused-normkernel (=kernel) with
# BENCH_NORM=auto (run 1) and BENCH_NORM=fold ("forced"). Results: $OUT/r.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
R="$OUT/r"; mkdir -p "$R"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( ${DEADLINE:-570} - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)" > "$R/ckpt.log" 2>&1 &
CK=$!
timeout ${TEST_TIMEOUT:-240} python -m pytest -q -p no:cacheprovider -x ${TESTS:-tests/test_norm_fold_gpu.py} > "$R/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$R/pytest_gpu.log"; grep -E "passed|failed|Error|assert" "$R/pytest_gpu.log" | tail -8 | cut -c1-400; el "gpu tests"
wait $CK; el "checkpoint"
GRAPHRT_STEP_NORM=${BENCH_NORM:-kernel} timeout $(left) python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch ${STEP_BATCH:-1 8 32} \
    --sets ${SETS:-fused,fused-normfold} --rounds ${ROUNDS:-8} --out-dir "$R" --tag ${STEP_TAG:-normfold-step} > "$R/step.log" 2>&1
echo "step rc=$?" >> "$R/step.log"
grep -E '^\{|choices|graphs in|rc=|Error' "$R/step.log" | cut -c1-1200 | head -40; el "step"

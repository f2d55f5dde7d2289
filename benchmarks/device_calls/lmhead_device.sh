#!/usr/bin/env bash
# Device call of the lmhead pass (issue 12, 2026-11-25): the step's LM head on the swap-AB GEMM
# (GRAPHRT_STEP_LMHEAD=swab|transposed) and PDL launches of the step's end kernels (GRAPHRT_STEP_END_PDL=auto|off).
# Tests: the new lmhead tests, the PDL chain, the fused graphs vs torch vs eager, the step softmax / top-k / tail.
# Then one MTP step, interleaved: fused (both on) against each lever off and both off (fused-lmold).
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
if [ "${TESTS:-}" != none ]; then
    timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider -m gpu --durations=8 \
        tests/test_lmhead_step.py ${TESTS:-tests/test_pdl_gpu.py tests/test_kernels_gpu.py tests/test_step_softmax.py tests/test_step_topk.py tests/test_step_tail.py} \
        > "$OUT/pytest_gpu.log" 2>&1
    echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
    grep -E "passed|failed|error|FAILED|ERROR|rc=" "$OUT/pytest_gpu.log" | tail -12; el tests
fi
checkpoint_3b
timeout ${STEP_TIMEOUT:-360} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch ${BATCHES:-1 8 32} \
    --sets ${STEP_SETS:-fused,fused-lmcublas,fused-endnopdl,fused-lmold} \
    --rounds ${ROUNDS:-8} --out-dir "$OUT" --tag lmhead > "$OUT/step.log" 2>&1
echo "step rc=$?" >> "$OUT/step.log"; grep -E "floor|^\{|rc=|Error|error|choices|skinny_gemm M=" "$OUT/step.log" | cut -c1-260 | head -60; el step

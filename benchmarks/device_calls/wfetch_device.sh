#!/usr/bin/env bash
# Device call of the wfetch pass (issue 12, 2026-11-25): the swap-AB GEMM's early weight reads before its
# PDL wait (GRAPHRT_STEP_EARLY_W). Tests: the PDL chain in a CUDA graph bit-equal with every switch value,
# the PDL chain of the step kernels, the fused graphs vs torch vs eager. Then one MTP step, interleaved:
# fused (off) against register tiles 1/2/4 and the small L2 prefetch 2/4 (B=1 only uses PDL; B=8/32 are the control).
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
# call 2: TESTS=none STEP_SETS=fused,fused-l2e2,fused-l2e4 ROUNDS=16 (the confirmation of the prefetch only)
if [ "${TESTS:-}" != none ]; then
    timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider -m gpu --durations=8 \
        tests/test_swab_early.py ${TESTS:-tests/test_pdl_gpu.py tests/test_kernels_gpu.py} > "$OUT/pytest_gpu.log" 2>&1
    echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
    grep -E "passed|failed|error|FAILED|ERROR|rc=" "$OUT/pytest_gpu.log" | tail -12; el tests
fi
checkpoint_3b
timeout ${STEP_TIMEOUT:-330} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch 1 8 32 \
    --sets ${STEP_SETS:-fused,fused-early1,fused-early2,fused-early4,fused-l2e2,fused-l2e4} \
    --rounds ${ROUNDS:-10} --out-dir "$OUT" --tag wfetch > "$OUT/step.log" 2>&1
echo "step rc=$?" >> "$OUT/step.log"; grep -E "floor|^\{|rc=|Error|error|choices" "$OUT/step.log" | cut -c1-260 | head -60; el step

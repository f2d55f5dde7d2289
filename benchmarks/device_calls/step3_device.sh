#!/usr/bin/env bash
# (Historical: GRAPHRT_STEP_MERGE and its test were removed after this call; commit bf2353b has them.)
# Device call of the step3 pass (2026-11-25): the step attention's merge inside the split kernel
# (GRAPHRT_STEP_MERGE=last, the last-arriving program merges): its bit-equality test (eager and in a
# replayed graph) and the GPU tests touching step attention, then one MTP step, interleaved: fused
# against fused-mergelast at B=1/8/32, cache 461 and 2000 (--long), 10 rounds.
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider -m gpu --durations=8 \
    tests/test_step_merge_last.py ${TESTS:-tests/test_kernels_gpu.py tests/test_pdl_gpu.py tests/test_step_rope_attention.py} \
    > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
grep -E "passed|failed|error|FAILED|ERROR|rc=|differs" "$OUT/pytest_gpu.log" | tail -14; el tests
checkpoint_3b
timeout ${STEP_TIMEOUT:-300} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch ${BATCH:-1 8 32} \
    --sets ${STEP_SETS:-fused,fused-mergelast} \
    --rounds ${ROUNDS:-10} --out-dir "$OUT" --tag step3 > "$OUT/step.log" 2>&1
echo "step rc=$?" >> "$OUT/step.log"; grep -E "floor|^\{|rc=|Error|error|choices" "$OUT/step.log" | cut -c1-260 | head -60; el step

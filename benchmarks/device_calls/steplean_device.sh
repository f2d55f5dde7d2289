#!/usr/bin/env bash
# Device call of the steplean pass (2026-11-25): the new kernels' GPU tests and the fused-vs-torch
# graph tests, then one MTP step, interleaved: fused (the prologue kernel) vs fused-protorch (the
# seventh pass's torch prologue) vs fused-ropein (RoPE + K/V write inside the split kernel, opt-in).
# First call (STEP_SETS=fused,fused-ropesep,fused-protorch,fused-prev, when RoPE-in-split was the default)
# measured both levers; see docs/notes.md, section "Step prologue kernel".
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
timeout ${TEST_TIMEOUT:-180} python -m pytest -q -p no:cacheprovider -m gpu --durations=8 \
    tests/test_step_rope_attention.py tests/test_step_prologue.py tests/test_kernels_gpu.py tests/test_pdl_gpu.py \
    > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
grep -E "passed|failed|error|FAILED|ERROR|rc=" "$OUT/pytest_gpu.log" | tail -12; el tests
checkpoint_3b
timeout ${STEP_TIMEOUT:-270} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch 1 8 32 \
    --sets ${STEP_SETS:-fused,fused-protorch,fused-ropein} --rounds ${ROUNDS:-6} --out-dir "$OUT" \
    --tag steplean > "$OUT/step.log" 2>&1
echo "step rc=$?" >> "$OUT/step.log"; grep -E "floor|^\{|rc=|Error|error" "$OUT/step.log" | cut -c1-300 | head -40; el step

#!/usr/bin/env bash
# Device call of the l2pf pass (2026-11-25): the L2 weight prefetch's bit-equality test and the fused
# graph / PDL tests, then one MTP step, interleaved: fused (prefetch off) against every
# GRAPHRT_STEP_L2PF mode (B=1 only prefetches; B=8/32 are the control), cache 461 and 2000.
# And the chooser's PDL-chain margin (fused vs fused-plainchain). The prefetch (its test and the
# fused-l2* variants) was removed after this call (measured slower; commit e5b5902 has it). Call 1 had the prefetch in rope_write / the first norm (12 programs): 1-2.5 ms slower (notes).
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider -m gpu --durations=8 \
    tests/test_l2_prefetch.py ${TESTS:-tests/test_kernels_gpu.py tests/test_pdl_gpu.py tests/test_step_rope_attention.py} \
    > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
grep -E "passed|failed|error|FAILED|ERROR|rc=" "$OUT/pytest_gpu.log" | tail -12; el tests
checkpoint_3b
timeout ${STEP_TIMEOUT:-330} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch 1 8 32 \
    --sets ${STEP_SETS:-fused,fused-plainchain,fused-l2o,fused-l2ogu1,fused-l2ogu4,fused-l2omgu1,fused-l2omgu4} \
    --rounds ${ROUNDS:-10} --out-dir "$OUT" --tag l2pf > "$OUT/step.log" 2>&1
echo "step rc=$?" >> "$OUT/step.log"; grep -E "floor|^\{|rc=|Error|error|choices" "$OUT/step.log" | cut -c1-260 | head -60; el step

#!/usr/bin/env bash
# The twelfth pass's merged levers end to end: A = defaults (vision residual in the GEMMs, the step's LM head on
# swap-AB, PDL on the step's end kernels), B = the same engine options with the three switched back
# (GRAPHRT_VISION_RESIDUAL=kernel, GRAPHRT_STEP_LMHEAD=transposed, GRAPHRT_STEP_END_PDL=off), FP8 scope `lm`,
# 640x480, interleaved in one process. Logs under $OUT.
source "$(dirname "$0")/preamble.sh"
checkpoint_3b
calibrate_3b
timeout ${LAT_TIMEOUT:-150} python benchmarks/latency.py --checkpoint /tmp/ck3b --a "graphs=on,fp8=$CAL" \
    --b "graphs=on,fp8=$CAL,vision_residual=kernel,env.GRAPHRT_STEP_LMHEAD=transposed,env.GRAPHRT_STEP_END_PDL=off" \
    --batch ${BATCHES:-32 1} --iters ${ITERS:-8} --out-dir "$OUT" --tag merged12 > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"; grep -E '^\| [AB] |rc=' "$OUT/latency.log"; el latency

#!/usr/bin/env bash
# The thirteenth pass's last call: end to end on the merged tree, A = defaults vs B = GRAPHRT_FP8_MID=off
# (FP8 scope `lm`, 640x480, interleaved), then the FP8 engine's warm start-up (every bucket, the mid GEMM chooser's
# seconds). Run after `PART=tests SHARD=2/2 bash benchmarks/final_check.sh` in the same call. Logs under $OUT.
source "$(dirname "$0")/preamble.sh"
checkpoint_3b
calibrate_3b
timeout ${LAT_TIMEOUT:-150} python benchmarks/latency.py --checkpoint /tmp/ck3b --a "graphs=on,fp8=$CAL" \
    --b "graphs=on,fp8=$CAL,env.GRAPHRT_FP8_MID=off" \
    --batch ${BATCHES:-32 1} --iters ${ITERS:-8} --out-dir "$OUT" --tag final13 > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"; grep -E '^\| [AB] |rc=' "$OUT/latency.log" | cut -c1-40,120-260; el latency
timeout 120 python benchmarks/startup.py --checkpoint /tmp/ck3b --fp8 "$CAL" --label fp8-warm > "$OUT/startup.log" 2>&1
echo "startup rc=$?" >> "$OUT/startup.log"; tail -c 800 "$OUT/startup.log"; el startup

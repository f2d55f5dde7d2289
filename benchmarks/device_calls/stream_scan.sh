#!/usr/bin/env bash
# A video scan's throughput: 256 640x480 frames through locate_batch (the continuous-batching stream:
# the next batch prepared on a thread while the GPU runs the current rows) against one 32-image call,
# FP8 `lm` with and without a stream lever (B_OPTS) and bf16, interleaved in one process. Logs and results under $OUT.
source "$(dirname "$0")/preamble.sh"
if [ -n "${TESTS:-}" ]; then  # gpu tests first (e.g. TESTS=tests/test_engine_gpu.py)
  timeout 200 python -m pytest -q -p no:cacheprovider -m gpu $TESTS > "$OUT/pytest_gpu.log" 2>&1
  tail -3 "$OUT/pytest_gpu.log"; el tests
fi
checkpoint_3b
calibrate_3b
# A: FP8 `lm` (the defaults: a stream's batches prepared whole); B: the same with B_OPTS (default
# batch_intake=false: image by image, the intake before); C: bf16 (defaults).
timeout ${SCAN_TIMEOUT:-400} python benchmarks/latency.py --checkpoint /tmp/ck3b --a "graphs=on,fp8=$CAL" \
    --b "graphs=on,fp8=$CAL,${B_OPTS:-batch_intake=false}" --c graphs=on \
    --batch ${BATCHES:-32 256} --iters ${ITERS:-10} --slow-iters ${SLOW_ITERS:-5} --out-dir "$OUT" --tag stream-scan \
    > "$OUT/scan.log" 2>&1
echo "scan rc=$?" >> "$OUT/scan.log"; grep -E '^\| [ABC] |rc=' "$OUT/scan.log"; el scan

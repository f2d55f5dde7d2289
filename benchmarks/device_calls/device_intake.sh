#!/usr/bin/env bash
# Device checks of the intake pass (issues 13/15: host time around the GPU stages), one call each:
#   PART=diag   test_gpu_resize (batched = per image = PIL on the GPU), host_gaps.py on the 3B
#               (B=1, 32; before/after interleaved)
#   PART=final  the GPU tests of the intake's paths, host_gaps.py, latency.py now vs the host side
#               before this pass (B=1, 32, bf16), FP8 B=32 (FP8=1, when time is left)
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
TESTS=${TESTS:-tests/test_gpu_resize.py}
timeout ${TEST_TIMEOUT:-300} python -m pytest -q -p no:cacheprovider -m gpu --durations=8 $TESTS > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"; tail -4 "$OUT/pytest_gpu.log"; el tests
checkpoint_3b
timeout ${HG_TIMEOUT:-200} python benchmarks/host_gaps.py --checkpoint /tmp/ck3b --batch 1 32 --iters ${ITERS:-12} \
    --warmup 3 --out "$OUT/host_gaps.json" > "$OUT/host_gaps.log" 2>&1
echo "host_gaps rc=$?" >> "$OUT/host_gaps.log"; cat "$OUT/host_gaps.log" | tail -c 6000; el host_gaps
[ "${PART:-diag}" = diag ] && exit 0
# End to end, the code now (A) against the host side as before this pass (B: benchmarks/host_gaps.py's
# patches around B's calls, images prepared one by one), interleaved.
timeout ${AB_TIMEOUT:-200} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on \
    --b graphs=on,batch_intake=false,host=before --batch 1 32 --iters ${LAT_ITERS:-15} --slow-iters 4 \
    --out-dir "$OUT" --tag intake-ab > "$OUT/ab_intake.log" 2>&1
echo "ab rc=$?" >> "$OUT/ab_intake.log"; grep -E '^\| [AB] |rc=' "$OUT/ab_intake.log"; el ab
grep -o '"config": "[^"]*", "batch": [0-9]*\|"host_outside_gpu_p50_ms": [0-9.]*, "exposed_p50_ms": [-0-9.]*' "$OUT/ab_intake.log"
if [ "${FP8:-0}" = 1 ] && [ $(( $(date +%s) - T0 )) -lt ${FP8_IF_BEFORE:-330} ]; then
  calibrate_3b
  [ -n "$CAL" ] && timeout ${FP8_TIMEOUT:-150} python benchmarks/latency.py --checkpoint /tmp/ck3b \
      --a "graphs=on,fp8=$CAL" --b "graphs=on,fp8=$CAL,batch_intake=false,host=before" --batch 32 --iters ${LAT_ITERS:-15} \
      --slow-iters 4 --out-dir "$OUT" --tag fp8-intake-ab > "$OUT/ab_fp8.log" 2>&1
  echo "fp8 rc=$?" >> "$OUT/ab_fp8.log"; grep -E '^\| [AB] |rc=' "$OUT/ab_fp8.log"; el fp8
  grep -o '"host_outside_gpu_p50_ms": [0-9.]*, "exposed_p50_ms": [-0-9.]*' "$OUT/ab_fp8.log"
fi

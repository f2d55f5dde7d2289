#!/usr/bin/env bash
# The thirteenth pass's prefill attention tiles (the GQA group in one tile): the gpu tests that run the prefill
# kernel, then end to end A = defaults, B = GRAPHRT_PREFILL_ATTENTION_TILES=head (the twelfth pass's tiles), FP8
# scope `lm`, 640x480, interleaved in one process. Logs under $OUT. TESTS=0 skips the tests.
source "$(dirname "$0")/preamble.sh"
if [ "${TESTS:-1}" = 1 ]; then
  timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/test_prefill_attention.py tests/test_first_round_gpu.py \
      tests/test_graphs_gpu.py tests/test_calib_gpu.py > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"; grep -E "passed|failed|FAILED|ERROR|rc=" "$OUT/pytest_gpu.log" | tail -8
  el tests
fi
checkpoint_3b
calibrate_3b
timeout ${LAT_TIMEOUT:-170} python benchmarks/latency.py --checkpoint /tmp/ck3b --a "graphs=on,fp8=$CAL" \
    --b "graphs=on,fp8=$CAL,env.GRAPHRT_PREFILL_ATTENTION_TILES=head" \
    --batch ${BATCHES:-32 1} --iters ${ITERS:-8} --out-dir "$OUT" --tag pfa13 > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"; grep -E '^\| [AB] |rc=' "$OUT/latency.log"; el latency

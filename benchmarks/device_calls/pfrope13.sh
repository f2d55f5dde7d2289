#!/usr/bin/env bash
# The thirteenth pass's prefill levers: gpu tests of the prefill attention (q turned inside it) and rope_write,
# then end to end, FP8 scope `lm`, 640x480, interleaved in one process: A = defaults; B = GRAPHRT_PREFILL_ROPE=kernel
# (rope_write stores the turned q); C = B + GRAPHRT_PREFILL_ATTENTION_TILES=head (the twelfth pass's prefill).
# Logs under $OUT. TESTS=0 skips the tests.
source "$(dirname "$0")/preamble.sh"
if [ "${TESTS:-1}" = 1 ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_prefill_attention.py tests/test_first_round_gpu.py \
      tests/test_kernels_gpu.py > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"; grep -E "passed|failed|FAILED|ERROR|rc=" "$OUT/pytest_gpu.log" | tail -8
  el tests
fi
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
el checkpoint
timeout 90 python benchmarks/fp8_fused.py --checkpoint /tmp/ck3b --skip fidelity,step,e2e,prefill,tokens \
    --out-dir "$OUT" --tag calib > "$OUT/calib.log" 2>&1
CAL=$(ls "$OUT"/*_calib.json | head -1); el calib
timeout ${LAT_TIMEOUT:-240} python benchmarks/latency.py --checkpoint /tmp/ck3b --a "graphs=on,fp8=$CAL" \
    --b "graphs=on,fp8=$CAL,env.GRAPHRT_PREFILL_ROPE=kernel" \
    --c "graphs=on,fp8=$CAL,env.GRAPHRT_PREFILL_ROPE=kernel,env.GRAPHRT_PREFILL_ATTENTION_TILES=head" \
    --batch ${BATCHES:-32 1} --iters ${ITERS:-8} --out-dir "$OUT" --tag pfrope13 > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"; grep -E '^\| [ABC] |rc=' "$OUT/latency.log" | cut -c1-60,150-300; el latency

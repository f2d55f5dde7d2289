#!/usr/bin/env bash
# FP8 prefill: o_proj's e4m3 input written by the prefill attention kernel (GRAPHRT_FP8_O_INPUT=attention,
# the default) against o_proj's own quantizer pass, end to end at B=32 and B=1 (640x480, FP8 scope `lm`,
# interleaved in one process), after the GPU tests of the kernel and the FP8 graphs. Logs under $OUT.
source "$(dirname "$0")/preamble.sh"
timeout 240 python -m pytest -q -p no:cacheprovider -m gpu tests/test_prefill_attention_fp8.py \
    tests/test_prefill_attention.py tests/test_calib_gpu.py ${TESTS:-} > "$OUT/pytest_gpu.log" 2>&1
tail -3 "$OUT/pytest_gpu.log"; el tests
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
el checkpoint
timeout 90 python benchmarks/fp8_fused.py --checkpoint /tmp/ck3b --skip fidelity,step,e2e,prefill,tokens \
    --out-dir "$OUT" --tag calib > "$OUT/calib.log" 2>&1
CAL=$(ls "$OUT"/*_calib.json | head -1); el calib
timeout ${LAT_TIMEOUT:-300} python benchmarks/latency.py --checkpoint /tmp/ck3b --a "graphs=on,fp8=$CAL" \
    --b "graphs=on,fp8=$CAL,env.GRAPHRT_FP8_O_INPUT=quantizer" --c "${C_OPTS:-none}" \
    --batch ${BATCHES:-32 1} --iters ${ITERS:-12} --out-dir "$OUT" --tag o-input > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"; grep -E '^\| [ABC] |rc=' "$OUT/latency.log"; el latency

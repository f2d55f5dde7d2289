#!/usr/bin/env bash
# FP8 device call 6: fast FP8 accumulation in _scaled_mm (GRAPHRT_FP8_FAST_ACCUM=1): its fidelity
# against bf16 beside fp32 accumulation (held-out pairs, calib/fidelity.py), then latency.py bf16
# graphs vs FP8 graphs with fast accumulation, default buckets, interleaved.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/fp8ck
timeout 120 python benchmarks/fp8_fused.py --preset 3b --write-to /tmp/fp8ck --out-dir "$OUT" --tag fp8-accum \
    --held-out ${HELD:-32} --fidelity-accum --skip step,e2e,prefill,tokens > "$OUT/fidelity.log" 2>&1
echo "fidelity rc=$?" >> "$OUT/fidelity.log"
CAL=$(ls "$OUT"/*_calib.json 2>/dev/null | head -1)
if [ -n "$CAL" ]; then
  GRAPHRT_FP8_FAST_ACCUM=1 timeout ${LAT_TIMEOUT:-200} python benchmarks/latency.py --checkpoint /tmp/fp8ck/3b \
      --a graphs=on --b "graphs=on,fp8=$CAL" --batch 1 32 --iters ${ITERS:-12} --out-dir "$OUT" \
      --tag latency-fp8-fastaccum > "$OUT/latency.log" 2>&1
  echo "latency rc=$?" >> "$OUT/latency.log"
fi
grep -v "^{" "$OUT/fidelity.log" | tail -14
tail -10 "$OUT/latency.log" 2>/dev/null

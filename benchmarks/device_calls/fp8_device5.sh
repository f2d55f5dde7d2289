#!/usr/bin/env bash
# FP8 device call 5 (issue 15, third part): the skinny-kernel GPU tests again (a test-only device
# fix), the random 3B written and calibrated (64 pairs), then latency.py bf16 graphs vs FP8 graphs
# with the default buckets, and _scaled_mm fp32-accumulation vs fast accumulation at prefill size.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/fp8ck
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
( timeout 150 python -m pytest -q -p no:cacheprovider tests/test_fp8_skinny.py > "$OUT/pytest_fp8_skinny_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_fp8_skinny_gpu.log" ) &
timeout 120 python benchmarks/fp8_fused.py --preset 3b --write-to /tmp/fp8ck --out-dir "$OUT" --tag fp8-calib5 \
    --skip fidelity,step,e2e,prefill,tokens > "$OUT/calib.log" 2>&1
echo "calib rc=$?" >> "$OUT/calib.log"
wait
timeout 60 python benchmarks/fp8_skinny_ab.py --skip-skinny --prefill-rows 16384 --out-dir "$OUT" \
    --tag fp8-fast-accum > "$OUT/fast_accum.log" 2>&1
echo "fast_accum rc=$?" >> "$OUT/fast_accum.log"
CAL=$(ls "$OUT"/*_calib.json 2>/dev/null | head -1)
if [ -n "$CAL" ]; then
  timeout ${LAT_TIMEOUT:-230} python benchmarks/latency.py --checkpoint /tmp/fp8ck/3b --a graphs=on \
      --b "graphs=on,fp8=$CAL" --batch 1 32 --iters 15 --out-dir "$OUT" --tag latency-fp8 > "$OUT/latency.log" 2>&1
  echo "latency rc=$?" >> "$OUT/latency.log"
fi
tail -3 "$OUT/pytest_fp8_skinny_gpu.log"
tail -3 "$OUT/calib.log"
tail -12 "$OUT/fast_accum.log"
tail -12 "$OUT/latency.log" 2>/dev/null

#!/usr/bin/env bash
# One device call: the full test suite (GPU tests included), then the 3B latency A/B.
# Usage on the device machine: bash benchmarks/device_check.sh  (writes logs under $OUT)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
timeout ${TEST_TIMEOUT:-300} python -m pytest -q -p no:cacheprovider tests > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
tail -3 "$OUT/pytest_gpu.log"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
timeout ${BENCH_TIMEOUT:-420} python benchmarks/latency.py --checkpoint /tmp/ck3b --batch 1 32 --many 4 \
    --out-dir "$OUT" --tag latency-3b ${BENCH_ARGS:-} > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"
tail -25 "$OUT/latency.log"

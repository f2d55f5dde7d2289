#!/usr/bin/env bash
# split (#15): the batch's intake overlapped with the vision tower (two or more vision replays).
#   PART=probe  the engine's vision graphs: 1 x 32 vs 2 x 16, 8+8+16, 4 x 8, 4+4+8+16 (interleaved),
#               bit equality of the smaller buckets against B=32
#               then the GPU tests of the change
#   PART=bench  latency.py A/B/C (FP8 scope lm: unsplit, split_intake=4, =8) and host_gaps (bf16:
#               unsplit, split 4+4+8+16, 8+8+16, 16+16), B=1 and B=32, interleaved
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1; nproc >> "$OUT/gpu.txt"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
el checkpoint
if [ "${PART:-probe}" = probe ]; then
  timeout 200 python benchmarks/split_vision.py --checkpoint /tmp/ck3b --out "$OUT/split_vision.json" > "$OUT/split_vision.log" 2>&1
  echo "rc=$?" >> "$OUT/split_vision.log"; tail -c 2500 "$OUT/split_vision.log"; el probe
  timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/test_split_intake_gpu.py tests/test_intake_staging.py \
      > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"; grep -E "passed|failed|error|FAILED|ERROR|rc=|assert" "$OUT/pytest_gpu.log" | tail -12
  el tests
  exit 0
fi
# PART=bench
(timeout 120 python benchmarks/fp8_fused.py --checkpoint /tmp/ck3b --skip fidelity,step,e2e,prefill,tokens \
    --out-dir "$OUT" --tag calib > "$OUT/calib.log" 2>&1; echo "calib rc=$?" >> "$OUT/calib.log")
CAL=$(ls "$OUT"/*_calib.json | head -1); el calib $CAL
timeout ${AB_TIMEOUT:-200} python benchmarks/latency.py --checkpoint /tmp/ck3b \
    --a "graphs=on,fp8=$CAL" --b "graphs=on,fp8=$CAL,split_intake=4" --c "graphs=on,fp8=$CAL,split_intake=8" \
    --batch 1 32 --iters ${ITERS:-14} \
    --slow-iters 14 --out-dir "$OUT" --tag split-fp8-ab > "$OUT/ab_fp8.log" 2>&1
echo "ab rc=$?" >> "$OUT/ab_fp8.log"; grep -E '^\| [ABC] |rc=|Error' "$OUT/ab_fp8.log" | cut -c1-300; el ab_fp8
timeout ${HG_TIMEOUT:-130} python benchmarks/host_gaps.py --checkpoint /tmp/ck3b --batch 1 32 --iters ${HITERS:-10} \
    --warmup 2 --variants pinned split4 split8 split16 --out "$OUT/host_gaps_bf16.json" > "$OUT/host_gaps_bf16.log" 2>&1
echo "rc=$?" >> "$OUT/host_gaps_bf16.log"; grep -vE "timeline" "$OUT/host_gaps_bf16.log" | cut -c1-400; el host_gaps
LEFT=$(( 560 - ($(date +%s) - T0) ))
if [ $LEFT -gt 70 ]; then
  timeout $LEFT python -m pytest -q -p no:cacheprovider -m gpu tests/test_split_intake_gpu.py > "$OUT/pytest_gpu2.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_gpu2.log"; grep -E "passed|failed|error|FAILED|ERROR|rc=" "$OUT/pytest_gpu2.log" | tail -6
fi
el end

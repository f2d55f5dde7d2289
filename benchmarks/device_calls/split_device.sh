#!/usr/bin/env bash
# split (#15): the batch's intake overlapped with the vision tower (two or more vision replays).
#   PART=probe  the engine's vision graphs: 1 x 32 vs 2 x 16, 8+8+16, 4 x 8, 4+4+8+16 (interleaved),
#               bit equality of the smaller buckets against B=32
#   PART=bench  host_gaps (split vs unsplit, bf16) and latency.py A/B (FP8 scope lm and bf16),
#               B=1 and B=32, then the GPU tests of the change
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
  exit 0
fi

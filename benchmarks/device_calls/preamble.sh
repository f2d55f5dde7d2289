# Shared start of the device scripts (sourced, run from the repository root): strict variables,
# unbuffered Python on this tree, $OUT for the results, `el` to print elapsed seconds with a label,
# and the GPU's name and clocks of this call in $OUT/gpu.txt.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
# The random 3B checkpoint of the official layout at /tmp/ck3b.
checkpoint_3b() {
  python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
  el checkpoint
}
# A 64-pair FP8 calibration of /tmp/ck3b under $OUT; sets CAL to its file. $1: the time limit (s, default 90).
calibrate_3b() {
  timeout "${1:-90}" python benchmarks/fp8_fused.py --checkpoint /tmp/ck3b --skip fidelity,step,e2e,prefill,tokens \
      --out-dir "$OUT" --tag calib > "$OUT/calib.log" 2>&1
  CAL=$(ls "$OUT"/*_calib.json 2>/dev/null | head -1); el calib
}

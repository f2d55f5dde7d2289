# Shared start of the device scripts (sourced, run from the repository root): strict variables,
# unbuffered Python on this tree, $OUT for the results, `el` to print elapsed seconds with a label,
# and the GPU's name and clocks of this call in $OUT/gpu.txt.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1

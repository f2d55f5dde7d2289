#!/usr/bin/env bash
# One device call for the swap-AB step GEMM (issue 12): its GPU tests at the 3B's decode shapes,
# the step A/B (fused = chooser with swap-AB candidates vs fused-noswab = the chooser before them),
# the per-shape tune, then the GPU kernel/graph suites with the time left. Results: $OUT/results.tgz.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
R="$OUT/r"; mkdir -p "$R"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( ${DEADLINE:-560} - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)" &
CK=$!
timeout ${SWAB_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider tests/test_swap_ab_gemm.py -k gpu -x ${SWAB_ARGS:-} > "$R/pytest_swab.log" 2>&1
echo "pytest rc=$?" >> "$R/pytest_swab.log"; tail -5 "$R/pytest_swab.log" | cut -c1-400; el "swab gpu tests"
wait $CK; el "checkpoint"
timeout $(( $(left) < ${STEP_TIMEOUT:-260} ? $(left) : ${STEP_TIMEOUT:-260} )) python benchmarks/step_kernels.py --checkpoint /tmp/ck3b \
    --batch ${STEP_BATCH:-1 8 32} --sets ${SETS:-fused,fused-noswab} --rounds ${ROUNDS:-10} --out-dir "$R" --tag ${STEP_TAG:-swab-step} > "$R/step.log" 2>&1
echo "step rc=$?" >> "$R/step.log"
grep -E '^\{|choices|graphs in|rc=|Error' "$R/step.log" | cut -c1-1500 | head -40; el "step"
if [ -n "${TUNE:-}" ] && [ $(left) -gt 60 ]; then
  timeout $(( $(left) < ${TUNE_TIMEOUT:-120} ? $(left) : ${TUNE_TIMEOUT:-120} )) python benchmarks/skinny_gemm_tune.py --skinny shortlist --swab ${TUNE_SWAB:-all} --batch ${TUNE_BATCH:-1 8 32} --out-dir "$R" --tag swab-tune > "$R/tune.log" 2>&1
  echo "tune rc=$?" >> "$R/tune.log"; grep -E '^\{|rc=' "$R/tune.log" | cut -c1-400; el "tune"
fi
if [ -n "${GPU_TESTS:-}" ] && [ $(left) -gt 60 ]; then
  timeout $(left) python -m pytest -q -p no:cacheprovider ${GPU_TESTS} > "$R/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$R/pytest_gpu.log"; tail -6 "$R/pytest_gpu.log" | cut -c1-400; el "gpu tests"
fi
tar -czf "$OUT/results.tgz" -C "$R" . && rm -rf "$R"

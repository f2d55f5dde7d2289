#!/usr/bin/env bash
# One device call for issue 12's numbers: kernel GPU tests, skinny-GEMM sweep, the step A/B over
# kernel variants (profiled), optionally start-up and end to end 640x480 B=1 fused vs torch.
# Logs and results go to $OUT/r/ and come back as one tarball (the device returns at most 8 files).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
R="$OUT/r"; mkdir -p "$R"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv
export TRITON_CACHE_DIR=/tmp/triton_cold
rm -rf "$TRITON_CACHE_DIR"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
el "checkpoint"
timeout ${QUICK_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider ${QUICK_TESTS:-tests/test_step_tail.py tests/test_skinny_gemm.py} > "$R/pytest_quick.log" 2>&1
echo "pytest rc=$?" >> "$R/pytest_quick.log"; tail -3 "$R/pytest_quick.log"; el "quick tests"
timeout ${STEP_TIMEOUT:-260} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch ${STEP_BATCH:-1 8 32} \
    --sets ${SETS:-fused,fused-old,torch} --out-dir "$R" > "$R/step.log" 2>&1
echo "step rc=$?" >> "$R/step.log"
grep -E "^\| [0-9]|choices|graphs in|rc=" "$R/step.log" | cut -c1-600 | head -30; el "step"
if [ -n "${GPU_TESTS:-}" ]; then
  timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider ${GPU_TESTS} > "$R/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$R/pytest_gpu.log"; tail -4 "$R/pytest_gpu.log"; el "gpu tests"
fi
if [ -n "${STARTUP:-}" ]; then
  for label in cold warm; do timeout 200 python benchmarks/startup.py --checkpoint /tmp/ck3b --label $label; done > "$R/startup.log" 2>&1
  grep label "$R/startup.log"; el "startup"
fi
if [ -n "${E2E:-}" ]; then
  timeout ${E2E_TIMEOUT:-200} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on,kernels=fused \
      --b graphs=on,kernels=torch --batch 1 --steps 2 --iters ${E2E_ITERS:-20} --out-dir "$R" --tag e2e-640x480-fused-vs-torch > "$R/e2e.log" 2>&1
  echo "e2e rc=$?" >> "$R/e2e.log"; grep -E "ready|^\{|rc=" "$R/e2e.log" | cut -c1-400; el "e2e"
fi
if [ -n "${TUNE:-}" ]; then
  timeout $(( ${DEADLINE:-570} - ($(date +%s) - T0) )) python benchmarks/skinny_gemm_tune.py --batch ${TUNE_BATCH:-1 8 32} --out-dir "$R" > "$R/tune.log" 2>&1
  echo "tune rc=$?" >> "$R/tune.log"; grep -E "^\{|rc=" "$R/tune.log" | cut -c1-330; el "tune"
fi
tar -czf "$OUT/results.tgz" -C "$R" . && rm -rf "$R"

#!/usr/bin/env bash
# One device call for issue 12's numbers: kernel GPU tests, attention/LM-head tuning, the step A/B,
# start-up cold and warm, end to end 640x480 B=1 fused vs torch. Logs under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv  # (at most 8 files come back)
export TRITON_CACHE_DIR=/tmp/triton_cold
rm -rf "$TRITON_CACHE_DIR"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
if [ -n "${STARTUP:-}" ]; then
  {
    for label in cold warm; do timeout 200 python benchmarks/startup.py --checkpoint /tmp/ck3b --label $label; done
  } > "$OUT/startup.log" 2>&1
  cat "$OUT/startup.log" | grep label
fi
timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_kernels.py tests/test_kernels_gpu.py} \
    > "$OUT/pytest_kernels.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_kernels.log"
tail -4 "$OUT/pytest_kernels.log"
if [ -n "${TUNE:-}" ]; then
  timeout 150 python benchmarks/step_attention_tune.py ${TUNE_ARGS:-} > "$OUT/tune.log" 2>&1
  tail -10 "$OUT/tune.log"
fi
timeout 200 python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch 1 8 32 --out-dir "$OUT" > "$OUT/step.log" 2>&1
echo "step rc=$?" >> "$OUT/step.log"
grep "^| [0-9]" "$OUT/step.log" | head -12
if [ -n "${E2E:-}" ]; then
  timeout 240 python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on,kernels=fused \
      --b graphs=on,kernels=torch --batch 1 --steps 2 --iters ${E2E_ITERS:-20} --out-dir "$OUT" --tag e2e-640x480-fused-vs-torch > "$OUT/e2e.log" 2>&1
  echo "e2e rc=$?" >> "$OUT/e2e.log"
  grep -E "ready|^\{" "$OUT/e2e.log" | cut -c1-400
  rm -f "$OUT/e2e.log"
fi

#!/usr/bin/env bash
# One device call for issue 12's PDL pass: probe (PTX + GEMM chain), the PDL GPU test, a mutation of
# it (the skinny GEMM's grid-dependency wait removed: the test must fail), optional GPU suite, and the
# step A/B over kernel variants (profiled). Everything lands in $OUT/r and comes back as one tarball.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
R="$OUT/r"; mkdir -p "$R"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
export TRITON_CACHE_DIR=/tmp/triton_cache
if [ -n "${PROBE:-}" ]; then
  timeout 150 python benchmarks/pdl_probe.py ${PROBE_ARGS:-} > "$R/probe.log" 2>&1; echo "probe rc=$?" >> "$R/probe.log"
  cut -c1-900 "$R/probe.log"; el probe
fi
(python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False); open('/tmp/ck3b.done','w')" > "$R/ckpt.log" 2>&1 &)
timeout ${QUICK_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider ${QUICK_TESTS:-tests/test_pdl_gpu.py} > "$R/pytest_quick.log" 2>&1
echo "pytest rc=$?" >> "$R/pytest_quick.log"; tail -3 "$R/pytest_quick.log"; el "quick tests"
if [ -n "${MUTATE:-}" ]; then
  rm -rf /tmp/mut && cp -r . /tmp/mut
  sed -i '/gdc_wait()  # activations/d' /tmp/mut/graphrt/kernels/skinny_gemm.py
  grep -c "gdc_wait()" /tmp/mut/graphrt/kernels/skinny_gemm.py
  (cd /tmp/mut && PYTHONPATH=/tmp/mut timeout 120 python -m pytest -q -p no:cacheprovider tests/test_pdl_gpu.py -k "8-0 or 1-1" > "$R/pytest_mutation.log" 2>&1; echo "pytest rc=$?" >> "$R/pytest_mutation.log")
  grep -E "assert|Error|passed|failed" "$R/pytest_mutation.log" | head -5 | cut -c1-300; el mutation
fi
while [ ! -f /tmp/ck3b.done ] && [ $(( $(date +%s) - T0 )) -lt 400 ]; do sleep 2; done
if [ -n "${SETS:-}" ]; then
  timeout ${STEP_TIMEOUT:-260} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch ${STEP_BATCH:-1 8 32} \
      --sets $SETS --out-dir "$R" --tag ${TAG:-step-kernels-pdl} > "$R/step.log" 2>&1
  echo "step rc=$?" >> "$R/step.log"
  grep -E "^\{|choices|graphs in|rc=|Error" "$R/step.log" | cut -c1-700 | head -60; el "step"
fi
if [ -n "${GPU_TESTS:-}" ]; then
  timeout ${TEST_TIMEOUT:-200} python -m pytest -q -p no:cacheprovider ${GPU_TESTS} > "$R/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$R/pytest_gpu.log"; tail -4 "$R/pytest_gpu.log"; el "gpu tests"
fi
tar -czf "$OUT/results.tgz" -C "$R" . && rm -rf "$R"

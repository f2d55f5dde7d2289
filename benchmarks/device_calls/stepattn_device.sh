#!/usr/bin/env bash
# One device call for issue 12 point 1 (step attention shapes): the attention sweep, CONFIGS set
# on this copy from the sweep's choice (printed; the same edit is then committed), the kernel GPU
# tests, and the whole step A/B (fused vs fused-oldattn) with its kernel table.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
R="$OUT/r"; mkdir -p "$R"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
if [ -z "${SKIP_TUNE:-}" ]; then
  timeout ${TUNE_TIMEOUT:-200} python benchmarks/step_attention_tune.py --skip-lm-head --batch ${TUNE_BATCH:-1 8 32} \
      --cache 461 2000 > "$R/tune.log" 2>&1
  echo "tune rc=$?" >> "$R/tune.log"; grep -E "^B=|^CONFIG|rc=" "$R/tune.log" | cut -c1-900; el "tune"
  python - "$R/tune.log" <<'PY'
import re, sys
cfg = {int(m[1]): m[2] for m in re.finditer(r"^CONFIG (\d+): (\([^)]*\))", open(sys.argv[1]).read(), re.M)}
if cfg:
    p = "graphrt/kernels/step_attention.py"
    s = open(p).read()
    line = "CONFIGS = {" + ", ".join(f"{b}: {v}" for b, v in sorted(cfg.items())) + "}"
    s = re.sub(r"^CONFIGS = \{.*\}$", line, s, count=1, flags=re.M)
    open(p, "w").write(s)
    print("set", line)
PY
fi
timeout ${TEST_TIMEOUT:-170} python -m pytest -q -p no:cacheprovider ${GPU_TESTS:-tests/test_kernels_gpu.py tests/test_pdl_gpu.py tests/test_kernels.py} ${TEST_K:+-k "$TEST_K"} -rs \
    > "$R/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$R/pytest_gpu.log"; tail -4 "$R/pytest_gpu.log"; el "gpu tests"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
el "checkpoint"
timeout ${STEP_TIMEOUT:-200} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch ${STEP_BATCH:-1 8 32} \
    --sets ${SETS:-fused,fused-oldattn} --out-dir "$R" --tag stepattn > "$R/step.log" 2>&1
echo "step rc=$?" >> "$R/step.log"
grep -E "^\| [0-9]|choices|graphs in|rc=" "$R/step.log" | cut -c1-600 | head -30; el "step"
tar -czf "$OUT/results.tgz" -C "$R" . && rm -rf "$R"

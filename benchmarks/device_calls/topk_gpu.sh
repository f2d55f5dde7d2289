#!/usr/bin/env bash
# One device call for the step top-k kernels (issue 12): their GPU tests (torch CUDA bit for bit,
# the self-check, the step tail fed their lists), the step tail's GPU tests, the micro A/B
# (benchmarks/step_topk.py), then the step A/B fused vs fused-tktorch at B=1/8/32 (tokens compared).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
R="$OUT/r"; mkdir -p "$R"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( ${DEADLINE:-540} - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)" > "$R/ck.log" 2>&1 &
CK=$!
timeout ${TEST_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider tests/test_step_topk.py tests/test_step_tail.py -x > "$R/pytest_topk.log" 2>&1
echo "pytest rc=$?" >> "$R/pytest_topk.log"; tail -6 "$R/pytest_topk.log" | cut -c1-600; el "gpu tests"
timeout 60 python benchmarks/step_topk.py --out-dir "$R" > "$R/micro.log" 2>&1; echo "micro rc=$?" >> "$R/micro.log"
cat "$R/micro.log" | cut -c1-600; el "micro"
wait $CK; el "checkpoint"
timeout $(left) python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch ${STEP_BATCH:-1 8 32} \
    --sets ${SETS:-fused,fused-tktorch} --rounds ${ROUNDS:-10} --out-dir "$R" --tag ${STEP_TAG:-topk-step} > "$R/step.log" 2>&1
echo "step rc=$?" >> "$R/step.log"
grep -E '^\{|agree|graphs in|rc=|Error|step top-k|warn' "$R/step.log" | cut -c1-1500 | head -40; el "step"
tar -czf "$OUT/results.tgz" -C "$R" . && rm -rf "$R"

#!/usr/bin/env bash
# Second device call of issue 12 point 4: the kernel-level profile of the merged prefill replay
# (benchmarks/first_round_profile.py), then the FP8 / engine / visual-prompt GPU tests that run
# through the merged prefill. Logs and results under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
el checkpoint
timeout ${PROFILE_TIMEOUT:-180} python benchmarks/first_round_profile.py --checkpoint /tmp/ck3b --batch 1 32 \
    --out-dir "$OUT" > "$OUT/profile.log" 2>&1
echo "profile rc=$?" >> "$OUT/profile.log"; grep -E '^\{|rc=|prefill merged' "$OUT/profile.log"; el profile
left=$(( ${TOTAL:-540} - ($(date +%s) - T0) ))
timeout $left python -m pytest -q -p no:cacheprovider -m gpu ${TESTS:-tests/test_fp8_fused.py tests/test_calib_gpu.py \
    tests/test_engine_gpu.py tests/test_visual_prompt_gpu.py} > "$OUT/pytest_fp8_engine.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_fp8_engine.log"; tail -5 "$OUT/pytest_fp8_engine.log"; el done

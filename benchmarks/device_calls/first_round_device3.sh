#!/usr/bin/env bash
# Third device call of issue 12 point 4 (the packed layout: each prefill segment's last 6 slots
# are its window): first-round GPU tests, e2e A/B merged vs separate, the replay profile, then the
# graph / kernel / FP8 GPU tests in the time left (TOTAL seconds). Logs and results under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/test_first_round_gpu.py tests/test_prefill_attention.py \
    > "$OUT/pytest_first_round.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_first_round.log"; tail -3 "$OUT/pytest_first_round.log"; el quick tests
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
timeout 150 python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on,first_round=merged \
    --b graphs=on,first_round=separate --batch 1 32 --iters 15 --slow-iters 4 --out-dir "$OUT" \
    --tag first-round-ab-packed > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?" >> "$OUT/e2e.log"; grep -E '^\| [AB] |rc=' "$OUT/e2e.log"; el e2e
timeout 100 python benchmarks/first_round_profile.py --checkpoint /tmp/ck3b --batch 1 32 --iters 20 --out-dir "$OUT" \
    > "$OUT/profile.log" 2>&1
echo "profile rc=$?" >> "$OUT/profile.log"; grep -E '^prefill merged|rc=' "$OUT/profile.log"; el profile
left=$(( ${TOTAL:-300} - ($(date +%s) - T0) ))
if [ $left -gt 40 ]; then
  timeout $left python -m pytest -q -p no:cacheprovider -m gpu tests/test_graphs_gpu.py tests/test_kernels_gpu.py \
      tests/test_fp8_fused.py tests/test_engine_gpu.py > "$OUT/pytest_graphs.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_graphs.log"; tail -4 "$OUT/pytest_graphs.log"
fi
el done

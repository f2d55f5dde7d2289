#!/usr/bin/env bash
# Second device call (issue 13): the slot attention kernel "auto" (Gluon ping-pong only at one-wave
# grids) vs the Triton kernel in the whole tower at B=1, B=32 and 25,600 patches, and the ws tests.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout 200 python benchmarks/vision_gemm.py --only attn1 attn32 attn25600 --out "$OUT/vattn.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
grep -E '^vision|rc=|Error|error|\[' "$OUT/bench.log" | cut -c1-1500 | head -30; el "bench"
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_attention_ws.py tests/test_vision_gemm.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"; tail -6 "$OUT/pytest.log" | cut -c1-800; el "tests"

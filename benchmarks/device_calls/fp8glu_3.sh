#!/usr/bin/env bash
# fp8glu, device call 3: end to end on the random 3B (640x480, 451 prompt tokens, 2 MTP rounds),
# calibration on 64 pairs as final_check.sh makes it, then latency.py interleaved:
#   A bf16 graphs | B FP8 (scope lm) with _scaled_mm + the SiLU*mul pass | C FP8 with the fused gate/up GEMM
# C differs from B only by GRAPHRT_FP8_GATE_UP=triton while its graphs are captured (set around
# with_options below, since latency.py's configs take EngineOptions only).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"; el checkpoint
timeout 90 python benchmarks/fp8_fused.py --checkpoint /tmp/ck3b --skip fidelity,step,e2e,prefill,tokens \
    --out-dir "$OUT" --tag calib > "$OUT/calib.log" 2>&1
CAL=$(ls "$OUT"/*_calib.json 2>/dev/null | head -1); el "calibration $CAL"
[ -n "$CAL" ] || { tail -20 "$OUT/calib.log"; exit 1; }
timeout ${E2E_TIMEOUT:-330} python - --checkpoint /tmp/ck3b --a graphs=on --b "graphs=on,fp8=$CAL" \
    --c "graphs=on,fp8=$CAL,fp8_gate_up=triton" --batch 1 32 --iters ${ITERS:-15} --slow-iters 4 \
    --out-dir "$OUT" --tag fp8glu_latency > "$OUT/e2e.log" 2>&1 <<'PY'
import os, sys
sys.path.insert(0, "benchmarks")
sys.argv[0] = "benchmarks/latency.py"
from graphrt import Engine
import latency

plain = Engine.with_options

def with_gate_up(self, **over):
    which = over.pop("fp8_gate_up", None)
    if which is None:
        return plain(self, **over)
    os.environ["GRAPHRT_FP8_GATE_UP"] = which
    try:
        return plain(self, **over)
    finally:
        del os.environ["GRAPHRT_FP8_GATE_UP"]

Engine.with_options = with_gate_up
latency.main()
PY
echo "e2e rc=$?" >> "$OUT/e2e.log"; grep -E '^\| [ABC] |rc=|Error' "$OUT/e2e.log"; el e2e

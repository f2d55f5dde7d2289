#!/usr/bin/env bash
# Device call of the vrope pass (issues 13/15): q turned by the 2D RoPE inside the vision attention
# kernels (GRAPHRT_VISION_ROPE=q) vs the RoPE pass over q and k (=pass).
# 1. GPU tests: the new bit-equality tests and the vision attention / kernel tests that run the changed kernels.
# 2. The tower alone, interleaved A/B at B=1 and B=32 640x480 (vision_stage.py rope1 rope32), kernel tables.
# 3. (E2E=1) end to end B=1 and B=32, FP8 scope lm (calibration from fp8_fused.py on the random 3B),
#    vision_rope=pass vs q interleaved (latency.py).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
if [ "${TESTS:-1}" = 1 ]; then
timeout ${TEST_TIMEOUT:-170} python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_rope_fused.py \
    tests/test_vision_attention_ws.py tests/test_vision_attention.py tests/test_vision_kernels.py \
    tests/test_vision_hopper_attention.py tests/test_vision_cudnn.py tests/test_vision_gemm.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"
grep -E "passed|failed|error|FAILED|ERROR" "$OUT/pytest.log" | tail -12 | cut -c1-400; el tests
fi
if [ "${KERNELS:-1}" = 1 ]; then  # one layer's RoPE + attention, q-in-kernel over Triton tiles
timeout ${KERNEL_TIMEOUT:-150} python benchmarks/vision_rope_fused.py --out "$OUT/vrope_kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?" >> "$OUT/kernels.log"; grep -E "^(1|32) |rc=|Error" "$OUT/kernels.log" | cut -c1-300; el kernels
fi
if [ "${TOWER:-1}" = 1 ]; then
timeout ${TOWER_TIMEOUT:-160} python benchmarks/vision_stage.py --only rope1 rope32 --out "$OUT/vrope_tower.json" \
    > "$OUT/tower.log" 2>&1
echo "tower rc=$?" >> "$OUT/tower.log"
grep -E '^vision B|rc=|Error' "$OUT/tower.log" | cut -c1-1200; el tower
python - "$OUT/vrope_tower.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r.items():
    if k.startswith("kernel_table"):
        rows = [x for x in v["kernels"] if x["class"] in ("attention", "rope")]
        print(k, json.dumps(v["by_class"]), [(x["kernel"][:40], x["count"], x["us"]) for x in rows])
PY
fi
if [ "${E2E:-1}" = 1 ]; then
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
el checkpoint
timeout 90 python benchmarks/fp8_fused.py --checkpoint /tmp/ck3b --skip fidelity,step,e2e,prefill,tokens \
    --out-dir "$OUT" --tag calib > "$OUT/calib.log" 2>&1
CAL=$(ls "$OUT"/*_calib.json 2>/dev/null | head -1); el "calib $CAL"
[ -n "$CAL" ] && timeout ${E2E_TIMEOUT:-230} python benchmarks/latency.py --checkpoint /tmp/ck3b \
    --a "graphs=on,fp8=$CAL,vision_rope=pass" --b "graphs=on,fp8=$CAL,vision_rope=q" --batch 32 1 \
    --iters ${ITERS:-20} --slow-iters 4 --out-dir "$OUT" --tag vrope-e2e > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?" >> "$OUT/e2e.log"; grep -E '^\| [AB] |rc=|Error' "$OUT/e2e.log" | cut -c1-600; el e2e
fi

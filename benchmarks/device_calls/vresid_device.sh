#!/usr/bin/env bash
# One device call for the vision residual inside the GEMMs (issues 13/15, GRAPHRT_VISION_RESIDUAL):
# its GPU tests, the graphs-vs-eager tests with the switch on, the tower A/B (kernel vs gemm, CUDA
# graphs, interleaved) at B=1, B=32 and 25,600 patches, then end to end: a 32-image 640x480 call,
# FP8 scope `lm` (the tower in bf16), A = residual kernel vs B = residual gemm in one process.
# NO_GRAPH_TESTS=1 / NO_E2E=1 skip those parts; STEPS picks vision_stage.py's steps.
source "$(dirname "$0")/preamble.sh"
timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_residual.py tests/test_vision_kernels.py \
    tests/test_vision.py > "$OUT/pytest_vresid.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_vresid.log"; tail -4 "$OUT/pytest_vresid.log" | cut -c1-600; el "residual tests"
[ -z "${NO_GRAPH_TESTS:-}" ] && GRAPHRT_VISION_RESIDUAL=gemm timeout 90 python -m pytest -q -p no:cacheprovider -m gpu tests/test_graphs_gpu.py \
    > "$OUT/pytest_graphs_gemm.log" 2>&1
[ -z "${NO_GRAPH_TESTS:-}" ] && { echo "pytest rc=$?" >> "$OUT/pytest_graphs_gemm.log"; tail -3 "$OUT/pytest_graphs_gemm.log" | cut -c1-600; el "graphs tests (gemm)"; }
timeout 170 python benchmarks/vision_stage.py --only ${STEPS:-resid1 resid32 resid25600} --out "$OUT/vresid_tower.json" \
    > "$OUT/tower.log" 2>&1
echo "tower rc=$?" >> "$OUT/tower.log"
grep -E '^vision|^kernel table|^offset_layernorm|rc=|Error' "$OUT/tower.log" | cut -c1-900 | head -30; el "tower A/B"
[ -n "${NO_E2E:-}" ] && exit 0
checkpoint_3b
calibrate_3b
timeout $(( 585 - ($(date +%s) - T0) )) python benchmarks/latency.py --checkpoint /tmp/ck3b \
    --a "graphs=on,fp8=$CAL,vision_residual=kernel" --b "graphs=on,fp8=$CAL,vision_residual=gemm" \
    --batch 32 --iters ${ITERS:-12} --out-dir "$OUT" --tag vresid-e2e > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?" >> "$OUT/e2e.log"; grep -E '^\| [AB] |^\{|rc=|Error' "$OUT/e2e.log" | cut -c1-700; el e2e

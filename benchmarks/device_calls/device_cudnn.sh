#!/usr/bin/env bash
# Device call for the vision cuDNN attention / memory budget work (issues 13, 14; branch vis):
# PART=explore: benchmarks/vision_attention_cudnn.py (attention alone, capture, packed, tower A/B),
# then benchmarks/memory_budget.py at --memory-gb ${MEM_GB:-16}. Logs and JSON under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
case "${PART:-explore}" in
  engine_cudnn)  # graphs vs eager through the engine with the cudnn A/B mode (mid preset: head 72)
    GRAPHRT_VISION_ATTENTION=cudnn timeout ${TEST_TIMEOUT:-240} python -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_large_images_gpu.py tests/test_graphs_gpu.py tests/test_vision_cudnn.py -k "mid or large or cudnn or tower" > "$OUT/pytest_gpu_cudnn.log" 2>&1
    echo "pytest rc=$?" >> "$OUT/pytest_gpu_cudnn.log"
    tail -8 "$OUT/pytest_gpu_cudnn.log"
    ;;
  final)
    timeout ${TEST_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_cudnn.py \
        tests/test_vision_kernels.py tests/test_vision_attention.py tests/test_vision.py \
        tests/test_large_images_gpu.py > "$OUT/pytest_gpu.log" 2>&1
    echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
    tail -5 "$OUT/pytest_gpu.log"
    timeout ${ATT_TIMEOUT:-120} python benchmarks/vision_attention_cudnn.py --only-b1-tower \
        --out "$OUT/vision_b1_tower.json" > "$OUT/b1_tower.log" 2>&1
    echo "b1 tower rc=$?" >> "$OUT/b1_tower.log"
    grep -E "^\[|rc=|tower|error|Error" "$OUT/b1_tower.log" | tail -12
    ;;
  tower)
    timeout ${TEST_TIMEOUT:-120} python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_cudnn.py \
        tests/test_vision_kernels.py tests/test_vision_attention.py > "$OUT/pytest_gpu.log" 2>&1
    echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
    tail -5 "$OUT/pytest_gpu.log"
    timeout ${ATT_TIMEOUT:-300} python benchmarks/vision_attention_cudnn.py --ragged \
        --out "$OUT/vision_attention_cudnn.json" > "$OUT/attention.log" 2>&1
    echo "attention rc=$?" >> "$OUT/attention.log"
    grep -E "^\[|rc=|error|Error" "$OUT/attention.log" | tail -30
    ;;
  explore)
    timeout ${ATT_TIMEOUT:-240} python benchmarks/vision_attention_cudnn.py --out "$OUT/vision_attention_cudnn.json" \
        > "$OUT/attention.log" 2>&1
    echo "attention rc=$?" >> "$OUT/attention.log"
    grep -E "^\[|rc=|error|Error" "$OUT/attention.log" | tail -30
    timeout ${MEM_TIMEOUT:-150} python benchmarks/memory_budget.py --preset 3b --memory-gb ${MEM_GB:-16} \
        --out "$OUT/memory_budget_${MEM_GB:-16}.json" > "$OUT/memory.log" 2>&1
    echo "memory rc=$?" >> "$OUT/memory.log"
    tail -c 2500 "$OUT/memory.log"
    ;;
esac

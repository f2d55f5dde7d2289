#!/bin/bash
# One device call for issue 13: GPU checks and timings, the GPU tests that touch vision, and the
# 3B end-to-end A/B of the vision attention (slot kernel with RoPE inside vs FA2 + RoPE pass).
# PARTS picks what runs (default: all): stage tests e2e. Extra args go to vision_stage.py.
set -o pipefail
export PYTHONUNBUFFERED=1
PARTS=${PARTS:-"stage tests e2e"}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee $OUT/gpu.txt
if [[ $PARTS == *stage* ]]; then
  timeout ${STAGE_TIMEOUT:-240} python benchmarks/vision_stage.py --out $OUT/vision_stage.json "$@" 2>&1 | tee $OUT/vision_stage.log | grep -v "^  slot\|^  attn"
fi
if [[ $PARTS == *tests* ]]; then
  timeout ${TEST_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider -m gpu ${TESTS:-tests/test_vision_attention.py tests/test_prefill_attention.py tests/test_vision_kernels.py tests/test_gpu_resize.py tests/test_vision.py tests/test_processor.py tests/test_graphs_gpu.py} -x 2>&1 | tee $OUT/pytest_gpu.log | tail -5
fi
if [[ $PARTS == *e2e* ]]; then
  python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
  timeout ${E2E_TIMEOUT:-240} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on \
      --b graphs=on,vision_attention=varlen --batch 1 32 --iters ${ITERS:-12} --slow-iters 5 --out-dir $OUT \
      --tag e2e-vision-attention 2>&1 | tee $OUT/latency.log | tail -12
fi

#!/bin/bash
# One device call for issue 13: GPU checks and timings, then the GPU tests that touch vision.
set -o pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee $OUT/gpu.txt
timeout 220 python benchmarks/vision_stage.py --out $OUT/vision_stage.json "$@" 2>&1 | tee $OUT/vision_stage.log
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_kernels.py tests/test_gpu_resize.py tests/test_vision.py tests/test_graphs_gpu.py -x 2>&1 | tee $OUT/pytest_gpu.log

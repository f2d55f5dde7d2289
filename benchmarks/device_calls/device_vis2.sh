#!/bin/bash
# Device calls of the fourth vision pass (issue 13.2 / 14): PART=probe (run 1) | probe2 (run 2) | final (run 3).
# Run from the tree root with PYTHONPATH set; results under $OUT.
set -u
PART=${1:-probe}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
python -c "import torch,triton;print(torch.__version__, triton.__version__, torch.backends.cudnn.version())" | tee -a $OUT/gpu.txt
if [ "$PART" = probe ]; then
  timeout 280 python benchmarks/vision_attention_hopper.py --out $OUT/attention.json 2>&1 | tail -n 120 > $OUT/attention.log
  timeout 250 python benchmarks/vision_stage.py --only vision1 vision32 vision25600 --out $OUT/stage.json > $OUT/stage.log 2>&1
  tail -n 40 $OUT/stage.log
  grep -E "best:" $OUT/attention.log
fi
if [ "$PART" = final ] || [ "$PART" = probe2 ]; then
  timeout 170 python -m pytest -q -p no:cacheprovider -m gpu tests/test_vision_attention.py tests/test_vision_kernels.py \
     tests/test_vision.py tests/test_vision_cudnn.py tests/test_large_images_gpu.py tests/test_vision_hopper_attention.py \
     > $OUT/pytest_gpu.log 2>&1 &
  TESTS=$!
  wait $TESTS
  tail -n 5 $OUT/pytest_gpu.log
  timeout 150 python benchmarks/vision_stage.py --only vision1 vision32 vision25600 --out $OUT/stage.json > $OUT/stage.log 2>&1
  grep -E '^vision B=|^\[vision' $OUT/stage.log
fi
if [ "$PART" = probe2 ]; then
  timeout 200 python benchmarks/vision_attention_hopper.py --out $OUT/attention.json 2>&1 | tail -n 120 > $OUT/attention.log
  grep -E "best:" $OUT/attention.log
fi

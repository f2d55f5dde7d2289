#!/bin/bash
# Issue 9 device check: visual prompts on graphs vs eager, plus the tiny graph-vs-eager cases
# whose prefill fill changed (multi-image rows). Output under $OUT.
cd "$(dirname "$0")/.." && export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
python -m pytest -q -p no:cacheprovider -m gpu tests/test_visual_prompt_gpu.py tests/test_graphs_gpu.py \
  -k "visual_prompt_gpu or (replay_equals_eager and tiny) or no_cuda" 2>&1 | tee $OUT/pytest.log

#!/bin/bash
# One device call for the step-softmax work: bit-equality + timings, the gpu tests, the step A/B.
cd "$(dirname "$0")/../.." && export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
python -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 150 python benchmarks/step_softmax.py --out-dir $OUT 2>&1 | grep -v '"differ": 0}' | tail -30
timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/test_step_softmax.py 2>&1 | tail -6
timeout ${STEP_S:-300} python benchmarks/step_kernels.py --preset 3b --batch 1 8 32 --rounds 8 \
    --sets fused,fused-smtorch --out-dir $OUT --tag tail_step 2>&1 | grep -iv "^{\|^|" | tail -12
grep -h "^| [0-9]\|_part\|_write\|SoftMax" $OUT/*tail_step*.md 2>/dev/null | head -24

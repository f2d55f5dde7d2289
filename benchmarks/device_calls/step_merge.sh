#!/usr/bin/env bash
# Step attention with the merge in the split kernel (merge="last", commit 74456a9; removed after
# this run measured it slower than the merge kernel at every tile and split): GPU tests of
# the kernel and the fused graphs, then the tuning table at B=1 (both merges, every tile/split).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
timeout 300 python -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py tests/test_pdl_gpu.py \
    > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"
tail -3 "$OUT/pytest.log"
timeout 240 python benchmarks/step_attention_tune.py --batch 1 --cache 461 2000 --skip-lm-head \
    > "$OUT/tune.log" 2>&1
echo "tune rc=$?" >> "$OUT/tune.log"
cat "$OUT/tune.log" | cut -c1-1500

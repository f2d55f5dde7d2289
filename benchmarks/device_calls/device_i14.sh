#!/usr/bin/env bash
# One device call for issue 14: the GPU tests of large images on graphs (tiny, mid), then the 3B
# B=1 latency by image size (graphs vs eager, peak memory), a mixed stream, start-up and the
# memory plan at --memory-gb 24 (benchmarks/large_images.py). Logs and results under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout ${TEST_TIMEOUT:-80} python -m pytest -q -p no:cacheprovider tests/test_large_images_gpu.py > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
tail -4 "$OUT/pytest_gpu.log"
timeout ${BENCH_TIMEOUT:-150} python benchmarks/large_images.py --preset 3b --memory-gb 24 --iters 8 \
    --eager-iters 2 --stream 3 --out-dir "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
tail -c 3000 "$OUT/bench.log"

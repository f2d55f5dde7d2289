#!/usr/bin/env bash
# One device call after merging: the whole test suite on the GPU (every gpu-marked test), then the
# 3B end-to-end A/B of the fused step kernels against the plain-torch kernels inside the graphs
# (640x480, 2 MTP steps per row, B=1 and 32, interleaved). Logs and results under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
timeout ${TEST_TIMEOUT:-330} python -m pytest -q -p no:cacheprovider ${TESTS:-tests} > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
tail -4 "$OUT/pytest_gpu.log"
[ -n "${NO_BENCH:-}" ] && exit 0
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
timeout ${BENCH_TIMEOUT:-200} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on,kernels=fused \
    --b graphs=on,kernels=torch --batch 1 32 --iters ${ITERS:-15} --slow-iters 4 --out-dir "$OUT" --tag e2e-merged \
    > "$OUT/latency.log" 2>&1
echo "latency rc=$?" >> "$OUT/latency.log"
tail -30 "$OUT/latency.log"

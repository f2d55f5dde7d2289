#!/usr/bin/env bash
# Issue 15/13 intake pass 2 (pinned ring filled by threads): GPU tests, the intake alone A/B,
# host_gaps on the 3B (after = pageable vs pinned), then the engine GPU tests if time is left.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1; nproc >> "$OUT/gpu.txt"
(python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)" > "$OUT/ckpt.log" 2>&1; echo done > /tmp/ck3b.ok) &
timeout 60 python benchmarks/preprocess_ab.py --batch 1 32 --threads ${THREADS:-4 8 16} --iters ${PITERS:-20} --out "$OUT/preprocess_ab.json" > "$OUT/preprocess_ab.log" 2>&1
cat "$OUT/preprocess_ab.log" | tail -12; el preprocess_ab
timeout 70 python -m pytest -q -p no:cacheprovider -m gpu ${GPU_TESTS:-tests/test_intake_staging.py tests/test_gpu_resize.py tests/test_intake_batch.py} > "$OUT/pytest_gpu.log" 2>&1
tail -3 "$OUT/pytest_gpu.log"; el tests
while [ ! -f /tmp/ck3b.ok ]; do sleep 1; done; el ckpt
timeout 150 python benchmarks/host_gaps.py --checkpoint /tmp/ck3b --batch 1 32 --iters ${ITERS:-10} --warmup 2 \
    --out "$OUT/host_gaps.json" > "$OUT/host_gaps.log" 2>&1
echo "rc=$?" >> "$OUT/host_gaps.log"; grep -vE "timeline" "$OUT/host_gaps.log" | tail -8; el host_gaps
if [ $(( $(date +%s) - T0 )) -lt ${ENGINE_TESTS_BEFORE:-200} ]; then
  timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_gpu.py > "$OUT/pytest_engine.log" 2>&1
  tail -3 "$OUT/pytest_engine.log"; el engine_tests
fi

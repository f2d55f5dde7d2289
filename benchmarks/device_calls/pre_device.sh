#!/usr/bin/env bash
# Device check of the pre branch (issue 13 point 1, issue 14 point 3), one call:
#   GPU tests of the resize and of the graph inputs, preprocessing by image size (PIL vs device
#   before/after), host gaps of locate_batch at B=1 and B=32 (mid preset: real widths, 2 layers;
#   the host work is the same as the 3B's). Logs and JSON under $OUT.
#   Run 1: defaults. Run 2 (lean): TESTS=tests/test_gpu_resize.py SIZES_ARGS="--sizes 640x480 ..."
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python -c "import PIL, torch, triton; print('pillow', PIL.__version__, 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/env.txt"
nproc >> "$OUT/env.txt"
timeout ${TEST_TIMEOUT:-170} python -m pytest -q -p no:cacheprovider -m gpu --durations=8 \
    ${TESTS:-tests/test_gpu_resize.py tests/test_graphs_gpu.py tests/test_large_images_gpu.py} > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"; tail -4 "$OUT/pytest_gpu.log"; el tests
timeout 120 python benchmarks/preprocess_sizes.py --iters ${ITERS:-12} ${SIZES_ARGS:-} --out "$OUT/preprocess_sizes.json" \
    > "$OUT/sizes.log" 2>&1
echo "sizes rc=$?" >> "$OUT/sizes.log"; tail -c 1500 "$OUT/sizes.log"; el sizes
python -c "from weights.synth import write_preset; write_preset('mid','/tmp/ckmid',device='cuda',progress=False)"
el checkpoint
timeout 150 python benchmarks/host_gaps.py --checkpoint /tmp/ckmid --batch 1 32 --iters ${GAP_ITERS:-12} \
    --out "$OUT/host_gaps.json" > "$OUT/host_gaps.log" 2>&1
echo "gaps rc=$?" >> "$OUT/host_gaps.log"; tail -c 3000 "$OUT/host_gaps.log"; el gaps

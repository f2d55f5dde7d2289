#!/usr/bin/env bash
# FP8 vision linears (branch fp8v), device calls. PART=tests: the GPU tests of the FP8 vision
# producers / tower / graphs-vs-eager with scope lm,vision, then the tower A/B (bf16 vs FP8, B=1/32,
# kernel tables). PART=e2e: the 3B accuracy report for scopes lm and lm,vision (64-pair calibration),
# then latency.py bf16 vs FP8 lm vs FP8 lm,vision interleaved at B=1/32. PART=acc: the GPU tests and
# the accuracy report only (SCOPES: ';'-separated fp8 scopes).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
if [ "${PART:-tests}" = tests ]; then
  timeout ${TEST_TIMEOUT:-300} python -m pytest -q -p no:cacheprovider -m gpu -s \
      tests/test_calib_gpu.py tests/test_vision_kernels.py tests/test_vision_hopper_attention.py \
      -k "${K:-vision or producers or tower or graphs_equal and w8a8 and not dynamic or status}" \
      > "$OUT/pytest-gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest-gpu.log"
  tail -25 "$OUT/pytest-gpu.log"
  grep "rel L2" "$OUT/pytest-gpu.log"
  timeout ${TOWER_TIMEOUT:-200} python benchmarks/fp8_vision.py --preset tiny --only gelu,tower --out-dir "$OUT" \
      --tag fp8v-tower > "$OUT/tower.log" 2>&1
  echo "tower rc=$?" >> "$OUT/tower.log"
  grep -v "^ *{" "$OUT/tower.log" | tail -20
else
  timeout ${TEST_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider -m gpu -s tests/test_calib_gpu.py \
      -k "${K:-vision or tower or producers}" > "$OUT/pytest-gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest-gpu.log"
  tail -4 "$OUT/pytest-gpu.log"
  mkdir -p /tmp/fp8vck
  timeout ${ACC_TIMEOUT:-200} python benchmarks/fp8_vision.py --preset 3b --write-to /tmp/fp8vck --only accuracy \
      --held-out ${HELD:-32} --scopes "${SCOPES:-lm;lm,vision}" --out-dir "$OUT" --tag fp8v-accuracy \
      > "$OUT/accuracy.log" 2>&1
  echo "accuracy rc=$?" >> "$OUT/accuracy.log"
  tail -6 "$OUT/accuracy.log"
  CAL=$(ls "$OUT"/*_calib.json 2>/dev/null | head -1)
  if [ -n "$CAL" ] && [ "${PART}" = e2e ]; then
    timeout ${LAT_TIMEOUT:-330} python benchmarks/latency.py --checkpoint /tmp/fp8vck/3b \
        --a graphs=on --b "graphs=on,fp8=$CAL" --c "graphs=on,fp8=$CAL,fp8_scope=lm+vision" \
        --batch 1 32 --iters ${ITERS:-12} --out-dir "$OUT" --tag fp8v-latency > "$OUT/latency.log" 2>&1
    echo "latency rc=$?" >> "$OUT/latency.log"
    grep -v "^{" "$OUT/latency.log" | tail -16
  fi
fi

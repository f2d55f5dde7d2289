#!/usr/bin/env bash
# pack (#15): the 640x480 ladder sizes, interleaved in one call, FP8 scope lm (the default):
#   A  old ladders (prefill 480, vision slot 1680), B  + a 464 prefill size, C  464 + a 1656 vision slot
#   (the new default); B=1 and B=32, random 3B, 2 MTP rounds. Then start-up with the new default
#   plan (warm: the Triton cache of the A/B run) and the GPU tests of what changed.
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
checkpoint_3b
calibrate_3b 120
OLD_P=64:256:480:576:896:1280:2816:6944; NEW_P=64:256:464:480:576:896:1280:2816:6944
OLD_V=1024:1680:4144:4800:10816:26676; NEW_V=1024:1656:4144:4800:10816:26676
timeout ${AB_TIMEOUT:-260} python benchmarks/latency.py --checkpoint /tmp/ck3b \
    --a "graphs=on,fp8=$CAL,prefill=$OLD_P,patches=$OLD_V" --b "graphs=on,fp8=$CAL,prefill=$NEW_P,patches=$OLD_V" \
    --c "graphs=on,fp8=$CAL,prefill=$NEW_P,patches=$NEW_V" --batch 1 32 --iters ${ITERS:-12} --slow-iters 12 \
    --out-dir "$OUT" --tag pack-ladder-ab > "$OUT/ab.log" 2>&1
echo "ab rc=$?" >> "$OUT/ab.log"; grep -E '^\| [ABC] |rc=|Error' "$OUT/ab.log" | cut -c1-260; el ab
for label in fill warm; do  # bf16 default plan: the first run compiles what the FP8 A/B did not
  timeout 120 python benchmarks/startup.py --checkpoint /tmp/ck3b --label $label >> "$OUT/startup.log" 2>&1
done
echo "startup rc=$?" >> "$OUT/startup.log"; tail -c 800 "$OUT/startup.log"; el startup
LEFT=$(( 575 - ($(date +%s) - T0) ))
timeout $LEFT python -m pytest -q -p no:cacheprovider -m gpu tests/test_pack_buckets_gpu.py tests/test_large_images_gpu.py \
    tests/test_first_round_gpu.py > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"; grep -E "passed|failed|error|FAILED|ERROR|rc=" "$OUT/pytest_gpu.log" | tail -8
el tests

#!/usr/bin/env bash
# The lead's device check after merging, in two calls that each fit the 600 s limit:
#   PART=tests  every gpu-marked test (the CPU suite runs in CI); SHARD=1/2, 2/2 split the files over two calls
#   PART=bench  the 3B numbers: end to end 640x480 fused vs torch kernels (B=1, 32, interleaved),
#               one MTP step B=1/8/32 beside its floor (STEP=0 skips it),
#               host A/Bs (stage clock, intake threads; HOST_AB=0 skips), FP8 vs bf16 (FP8=0 skips it),
#               B=1 latency by image size (graphs vs eager, peak memory),
#               start-up with every bucket of the default 24 GiB plan.
# Logs and results under $OUT.
source "$(dirname "$0")/device_calls/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
if [ -n "${PRE_TESTS:-}" ]; then  # a few gpu tests before the numbers (e.g. ones fixed after PART=tests)
  # eval: PRE_TESTS may hold a quoted -k expression ("-k 'a or b' tests/x.py"), kept as one word
  eval "timeout 120 python -m pytest -q -p no:cacheprovider -m gpu $PRE_TESTS" > "$OUT/pytest_pre.log" 2>&1
  tail -2 "$OUT/pytest_pre.log"
fi
if [ "${PART:-tests}" = tests ]; then
  if [ -n "${SHARD:-}" ]; then  # SHARD=i/n: every n-th test file from the i-th (1-based), so one call stays < 600 s
    TESTS=$(ls tests/test_*.py | awk -v i="${SHARD%/*}" -v n="${SHARD#*/}" 'NR % n == i % n' | tr '\n' ' ')
  fi
  timeout ${TEST_TIMEOUT:-540} python -m pytest -q -p no:cacheprovider -m gpu --durations=12 ${TESTS:-tests} \
      > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
  grep -E "passed|failed|error|FAILED|ERROR" "$OUT/pytest_gpu.log" | tail -15
  exit 0
fi
checkpoint_3b
if [ "${E2E:-1}" = 1 ]; then  # (E2E=0: the FP8 A/B below still times bf16 end to end as its config A)
timeout ${E2E_TIMEOUT:-170} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on,kernels=fused \
    --b graphs=on,kernels=torch --batch 1 32 --iters ${ITERS:-15} --slow-iters 4 --out-dir "$OUT" --tag e2e-final \
    > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?" >> "$OUT/e2e.log"; tail -c 2500 "$OUT/e2e.log"; el e2e
fi
# One MTP step replay at B=1/8/32 beside the weight-read floor (fused vs torch kernel sets, interleaved).
if [ "${STEP:-1}" = 1 ]; then
  timeout ${STEP_TIMEOUT:-220} python benchmarks/step_kernels.py --checkpoint /tmp/ck3b --batch 1 8 32 \
      --sets ${STEP_SETS:-fused,fused-smtorch,torch} --rounds 6 --out-dir "$OUT" --tag step-final > "$OUT/step.log" 2>&1
  echo "step rc=$?" >> "$OUT/step.log"; grep -E "floor|^\{|rc=" "$OUT/step.log" | cut -c1-400 | head -30; el step
fi
# Host-side A/B: stage laps as CUDA events (default) vs synchronizing laps (the old clock), and the
# intake's CPU threads (default min(8, cores)) vs one, for decoded (PIL) inputs.
if [ "${HOST_AB:-1}" = 1 ]; then
timeout ${AB_TIMEOUT:-150} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on \
    --b graphs=on,stage_clock=sync --batch 1 32 --iters ${ITERS:-15} --slow-iters 4 --out-dir "$OUT" --tag stage-clock-ab \
    > "$OUT/ab_clock.log" 2>&1
echo "ab rc=$?" >> "$OUT/ab_clock.log"; grep -E '^\| [AB] |rc=' "$OUT/ab_clock.log"
timeout ${AB_TIMEOUT:-150} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on \
    --b graphs=on,preprocess_workers=1 --batch 32 --iters ${ITERS:-15} --slow-iters 4 --out-dir "$OUT" --tag workers-ab \
    > "$OUT/ab_workers.log" 2>&1
echo "ab rc=$?" >> "$OUT/ab_workers.log"; grep -E '^\| [AB] |rc=' "$OUT/ab_workers.log"; el ab
fi
# FP8 (w8a8, static scales from 64 calibration pairs) vs bf16 end to end, interleaved: scope lm (the
# default) and lm,vision (opt-in).
if [ "${FP8:-1}" = 1 ]; then
  calibrate_3b
  [ -n "$CAL" ] && timeout ${FP8_TIMEOUT:-150} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on \
      --b "graphs=on,fp8=$CAL" --c "graphs=on,fp8=$CAL,fp8_scope=lm+vision" --batch 1 32 --iters ${ITERS:-15} --slow-iters 4 --out-dir "$OUT" --tag fp8-ab \
      > "$OUT/ab_fp8.log" 2>&1
  echo "fp8 rc=$?" >> "$OUT/ab_fp8.log"; grep -E '^\| [ABC] |rc=' "$OUT/ab_fp8.log"; el fp8
fi
if [ "${SIZES:-1}" = 1 ]; then  # SIZES=0 skips it
timeout ${SIZES_TIMEOUT:-200} python benchmarks/large_images.py --checkpoint /tmp/ck3b --memory-gb 24 --iters 6 \
    --eager-iters 2 --stream 2 --out-dir "$OUT" > "$OUT/sizes.log" 2>&1
echo "sizes rc=$?" >> "$OUT/sizes.log"; tail -c 2500 "$OUT/sizes.log"; el sizes
fi
# Start-up with every bucket of the default plan: cold (empty Triton cache: every kernel compiles),
# then warm (the same cache again).
rm -rf /tmp/triton_cold
for label in cold warm; do
  TRITON_CACHE_DIR=/tmp/triton_cold timeout ${STARTUP_TIMEOUT:-200} python benchmarks/startup.py \
      --checkpoint /tmp/ck3b --label $label >> "$OUT/startup.log" 2>&1
done
# The device sets PYTHONDONTWRITEBYTECODE=1, so every process above compiles transformers' sources
# again (~8 s of the tokenizer's import); an installed package has its bytecode cached. Warm again
# with a bytecode cache: the first run writes it, the second reads it.
if [ "${STARTUP_PYC:-1}" = 1 ]; then
  for label in warm-pyc-write warm-pyc; do
    PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=/tmp/pyc TRITON_CACHE_DIR=/tmp/triton_cold \
        timeout ${STARTUP_TIMEOUT:-200} python benchmarks/startup.py --checkpoint /tmp/ck3b --label $label \
        >> "$OUT/startup.log" 2>&1
  done
fi
echo "startup rc=$?" >> "$OUT/startup.log"; tail -c 1200 "$OUT/startup.log"; el startup
# The shared timing helpers of the benchmark scripts still run (one small GEMM, two graphs).
python -c "
import sys; sys.path.insert(0, 'benchmarks')
import torch, bench_util as bu
x = torch.randn(384, 2048, device='cuda', dtype=torch.bfloat16); w = torch.randn(2048, 2048, device='cuda', dtype=torch.bfloat16)
print('bench_util captured_us', round(bu.captured_us(lambda: x @ w.t()), 2))
g = {k: bu.capture(lambda: x @ w.t()) for k in 'ab'}
print('bench_util alternating_ms', {k: len(v) for k, v in bu.alternating_ms(g, 4).items()})
" 2>&1 | tail -3

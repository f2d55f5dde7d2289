#!/usr/bin/env bash
# Issue 12 point 4 on the device, one call: the first-round GPU tests, the end-to-end A/B of the
# merged first round against the separate one (3B random, 640x480, 2 MTP rounds per row, B=1 and 32,
# interleaved), then the graph GPU tests in the time left. Logs and results under $OUT.
source "$(dirname "$0")/preamble.sh"  # set -u, PYTHONPATH, $OUT, el, the GPU clocks
timeout ${QUICK_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider -m gpu tests/test_first_round_gpu.py \
    tests/test_step_tail.py tests/test_prefill_attention.py > "$OUT/pytest_first_round.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_first_round.log"; tail -5 "$OUT/pytest_first_round.log"; el quick tests
checkpoint_3b
timeout ${E2E_TIMEOUT:-200} python benchmarks/latency.py --checkpoint /tmp/ck3b --a graphs=on,first_round=merged \
    --b graphs=on,first_round=separate --batch 1 32 --iters ${ITERS:-15} --slow-iters 4 --out-dir "$OUT" \
    --tag first-round-ab > "$OUT/e2e.log" 2>&1
echo "e2e rc=$?" >> "$OUT/e2e.log"; tail -c 3000 "$OUT/e2e.log"; el e2e
left=$(( ${TOTAL:-560} - ($(date +%s) - T0) ))
if [ $left -gt 60 ]; then
  timeout $left python -m pytest -q -p no:cacheprovider -m gpu ${TESTS:-tests/test_graphs_gpu.py tests/test_kernels_gpu.py} \
      > "$OUT/pytest_graphs.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_graphs.log"; tail -5 "$OUT/pytest_graphs.log"
fi
el done

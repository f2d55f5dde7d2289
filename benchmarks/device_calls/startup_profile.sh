#!/usr/bin/env bash
# Where the warm start-up's "load" seconds go (issue 12's <= 30 s): startup.py under cProfile, cold then
# warm on one Triton cache; the top of the cumulative-time table of each run under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)"
rm -rf /tmp/tc
for label in cold warm; do
  TRITON_CACHE_DIR=/tmp/tc timeout 250 python -m cProfile -o "$OUT/startup_$label.prof" benchmarks/startup.py \
      --checkpoint /tmp/ck3b --label $label | tee -a "$OUT/startup.jsonl"
  python - "$OUT/startup_$label.prof" > "$OUT/startup_${label}_cum.txt" <<'PY'
import pstats, sys
s = pstats.Stats(sys.argv[1]); s.sort_stats("cumulative").print_stats(70)
s.sort_stats("tottime").print_stats(30)
PY
done
head -c 9000 "$OUT/startup_warm_cum.txt"

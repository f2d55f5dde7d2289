#!/usr/bin/env bash
# GPU idle time of a 256-frame scan (benchmarks/stream_gaps.py), the default stream vs STREAM_B.
source "$(dirname "$0")/preamble.sh"
checkpoint_3b
timeout 300 python benchmarks/stream_gaps.py --checkpoint /tmp/ck3b --frames 256 --a graphs=on \
    --b "graphs=on,${STREAM_B:-batch_intake=false}" --out "$OUT/stream_gaps.json" > "$OUT/gaps.log" 2>&1
echo "gaps rc=$?" >> "$OUT/gaps.log"; tail -60 "$OUT/gaps.log"; el gaps

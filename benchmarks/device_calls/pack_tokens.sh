#!/usr/bin/env bash
# pack (#15): rows of the 640x480 B=32 batch whose tokens differ between the old and new ladder
# sizes, graphs vs eager and batched vs single (FP8 lm and bf16, random 3B).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
checkpoint_3b
calibrate_3b 120
timeout 400 python benchmarks/pack_tokens.py --checkpoint /tmp/ck3b --fp8 "$CAL" > "$OUT/tokens.log" 2>&1
echo "tokens rc=$?" >> "$OUT/tokens.log"; grep -E '^\{|rc=|Error' "$OUT/tokens.log" | cut -c1-600; el tokens

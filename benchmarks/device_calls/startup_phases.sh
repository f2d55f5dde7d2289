#!/usr/bin/env bash
# Start-up phases without a profiler: import costs of the tokenizer stack, whether Python can cache
# bytecode on this host, and the engine's load phases (benchmarks/startup_phases.py), cold then warm,
# for this tree (new) and .gpu/base (the previous commit, carried), alternating.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ROOT=$PWD
python -c "import sys, os, transformers, torch; d=os.path.dirname(transformers.__file__); print('dont_write_bytecode', sys.dont_write_bytecode, 'writable', os.access(d, os.W_OK), 'pycache_prefix', sys.pycache_prefix, 'PYTHONDONTWRITEBYTECODE', os.environ.get('PYTHONDONTWRITEBYTECODE'), 'transformers', transformers.__version__, 'pyc present', os.path.isdir(os.path.join(d,'__pycache__')))"
PYTHONPATH=$ROOT python -c "from weights.synth import write_preset; write_preset('3b','/tmp/ck3b',device='cuda',progress=False)" &
for i in 1 2; do
  python -X importtime -c "import torch; from transformers import AutoTokenizer" 2> "$OUT/importtime_$i.txt"
  python - "$OUT/importtime_$i.txt" <<'PY'
import sys
rows = [l.split("|") for l in open(sys.argv[1]) if l.startswith("import time:") and "cumulative" not in l]
rows = [(int(r[1]), r[2].rstrip()) for r in rows]
print("transformers-import: top cumulative us", sorted(rows, reverse=True)[:5])
PY
done
wait
rm -rf /tmp/tc
for label in cold:new warm:base warm:new warm:base warm:new; do
  tree=${label#*:}; [ $tree = base ] && dir=$ROOT/.gpu/base || dir=$ROOT
  (cd $dir && PYTHONPATH=$dir TRITON_CACHE_DIR=/tmp/tc timeout 200 python benchmarks/startup_phases.py --checkpoint /tmp/ck3b --label $label) | tee -a "$OUT/phases.jsonl"
done

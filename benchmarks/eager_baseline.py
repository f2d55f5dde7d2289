"""Eager-path latency on a full-size random checkpoint: the baseline the CUDA graphs must beat.

    python benchmarks/eager_baseline.py --checkpoint DIR [--batch 1 8] [--steps 2]

Random weights produce random tokens, so each request runs a fixed number of MTP steps
(max_new_tokens = steps: a step keeps 1..6 tokens, so the count of steps is reported, not assumed).
Prints the median of --repeat runs per stage, after --warmup runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from graphrt import Engine, EngineOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-new-tokens", type=int, default=2)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    engine = Engine.from_pretrained(args.checkpoint, EngineOptions(progress=False))
    load_s = time.perf_counter() - t0
    image = Image.fromarray((np.random.RandomState(0).rand(args.height, args.width, 3) * 255).astype(np.uint8))
    rows = []
    for batch in args.batch:
        pairs = [(image, "person</c>car")] * batch
        runs = []
        for i in range(args.warmup + args.repeat):
            t = time.perf_counter()
            res = engine.locate_batch(pairs, max_new_tokens=args.max_new_tokens)
            torch.cuda.synchronize()
            total = (time.perf_counter() - t) * 1000
            if i >= args.warmup:
                runs.append((total, res[0].timings_ms, max(r.steps for r in res), res[0]))
        med = lambda xs: round(statistics.median(xs), 2)  # noqa: E731
        r0 = runs[0][3]
        rows.append({
            "batch": batch, "end_to_end_ms": med([r[0] for r in runs]),
            "vision_ms": med([r[1]["vision"] for r in runs]), "generate_ms": med([r[1]["generate"] for r in runs]),
            "preprocess_ms": med([r[1]["preprocess"] for r in runs]), "steps": runs[0][2],
            "image": f"{args.width}x{args.height}", "patches": r0.image_patches, "image_tokens": r0.image_tokens,
            "prompt_tokens": r0.prompt_tokens, "output_tokens": len(r0.tokens), "stop": r0.stop_reason,
        })
        print(json.dumps(rows[-1]))
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "load_s": round(load_s, 1),
            "dtype": str(engine.model.dtype), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)
    print(json.dumps(info))


if __name__ == "__main__":
    main()

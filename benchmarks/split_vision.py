"""What splitting a batch's vision into several replays costs (issue 15, the split intake):
the engine's own vision graphs (640x480 = 1,656 patches in a 1656 slot, random 3B, bf16 tower)
replayed as one B=32 pass against 2 x 16, 8+8+16 and 4 x 8 (each earlier pass's features
parked as the runtime does), interleaved, CUDA events, P50/P90/P99. Also whether a smaller
bucket gives the same bits for the same image (cuBLAS may pick other kernels for other rows).

    python benchmarks/split_vision.py --checkpoint DIR --out split_vision.json
Random weights: only timings and bit equality mean anything here.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from capture import Buckets
from graphrt import Engine

P = 1656
PLANS = {"32": [32], "16+16": [16, 16], "8+8+16": [8, 8, 16], "8x4": [8, 8, 8, 8], "4+4+8+16": [4, 4, 8, 16]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--out", default="split_vision.json")
    ap.add_argument("--graphs", default="on")
    ap.add_argument("--bits-only", action="store_true", help="skip the timings (a CPU check of the script)")
    args = ap.parse_args()
    engine = Engine.from_pretrained(args.checkpoint, progress=False, fixed_steps=2, graphs=args.graphs,
                                    buckets=Buckets(batch_sizes=(1, 4, 8, 16, 32), patch_budgets=(P,),
                                                    prefill_lengths=(64, 464)))
    rt, pipe = engine.runtime, engine.runtime.pipe
    rs = np.random.RandomState(0)
    pil = [Image.fromarray((rs.rand(480, 640, 3) * 255).astype(np.uint8)) for _ in range(32)]
    images = engine.processor.process_loaded(pil)
    rows = P // 4

    def run_plan(plan):
        at, parked = 0, pipe.exemplar_base
        for n, b in enumerate(plan):
            rt.inputs.fill_vision(images[at:at + b], b, P)
            rt._run(("vision", b, P))
            if n < len(plan) - 1:
                pipe.vision_out[parked:parked + b * rows].copy_(pipe.vision_out[:b * rows])
                parked += b * rows
            at += b

    def features(plan):
        run_plan(plan)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        done = sum(plan[:-1]) * rows
        parked = pipe.vision_out[pipe.exemplar_base:pipe.exemplar_base + done]
        return torch.cat([parked, pipe.vision_out[:plan[-1] * rows]]).clone()

    ref = features([32])
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "patches": P, "bits": {}, "ms": {}}
    for name, plan in PLANS.items():
        got = features(plan)
        diff = (got.float() - ref.float()).abs()
        report["bits"][name] = {"equal": bool(torch.equal(got, ref)), "max_abs": float(diff.max()),
                                "rows_differing": int((diff.amax(1) > 0).sum())}
    times = {name: [] for name in PLANS}
    for i in range(0 if args.bits_only else 3 + args.iters):
        names = list(PLANS)
        for name in names[i % len(names):] + names[:i % len(names)]:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run_plan(PLANS[name])
            end.record()
            end.synchronize()
            if i >= 3:
                times[name].append(start.elapsed_time(end))
    for name, xs in times.items() if not args.bits_only else ():
        report["ms"][name] = {q: round(float(np.percentile(xs, int(q[1:]))), 3) for q in ("p50", "p90", "p99")}
    # the replay alone (inputs already filled), per bucket
    for b in () if args.bits_only else (4, 8, 16, 32):
        rt.inputs.fill_vision(images[:b], b, P)
        xs = []
        for _ in range(args.iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            rt._run(("vision", b, P))
            end.record()
            end.synchronize()
            xs.append(start.elapsed_time(end))
        report["ms"][f"replay B={b}"] = {q: round(float(np.percentile(xs, int(q[1:]))), 3) for q in ("p50", "p90", "p99")}
    print(json.dumps(report, indent=1))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

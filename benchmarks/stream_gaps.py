"""Where a scan's time goes on the GPU timeline: N frames through Engine.locate_batch (the
continuous-batching stream) under torch.profiler, the GPU's busy time (union of kernel and copy
intervals) against the wall time, and the idle gaps with the kernels around them.

    python benchmarks/stream_gaps.py --checkpoint DIR --frames 256 --a graphs=on --b graphs=on,batch_intake=false

Each config is an engine on the same weights (Engine.with_options); every row runs exactly 2 MTP
steps (random weights, end tokens ignored). Reported per config: wall ms of the profiled call,
GPU busy ms, idle ms, the idle gaps over 0.2 ms (count, sum) and the ten longest with the
kernels before and after them. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from graphrt import Engine
from latency import QUERIES, parse_config


def busy_and_gaps(events) -> tuple[float, list]:
    """(busy ms, [(gap ms, before, after)]) over the device intervals of the profiled events."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    busy, gaps, end, last = 0.0, [], None, ""
    for start, stop, name in spans:
        if end is not None and start > end:
            gaps.append(((start - end) / 1000.0, last, name))
        if end is None or start > end:
            busy += stop - start
        elif stop > end:
            busy += stop - end
        if end is None or stop > end:
            end, last = stop, name
    return busy / 1000.0, gaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--a", default="graphs=on")
    ap.add_argument("--b", default="graphs=on,batch_intake=false")
    ap.add_argument("--out", default="stream_gaps.json")
    args = ap.parse_args()
    base = Engine.from_pretrained(args.checkpoint, progress=False, fixed_steps=2, graphs="off")
    rs = np.random.RandomState(0)
    frames = [Image.fromarray((rs.rand(480, 640, 3) * 255).astype(np.uint8)) for _ in range(args.frames)]
    pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(frames)]
    report = {"frames": args.frames, "image": "640x480", "steps": 2, "device": torch.cuda.get_device_name(0),
              "configs": {}}
    for name in (args.a, args.b):
        engine = base.with_options(**parse_config(name))
        for _ in range(2):
            engine.locate_batch(pairs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            engine.locate_batch(pairs)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) * 1000.0
        busy, gaps = busy_and_gaps(prof.events())
        big = sorted((g for g in gaps if g[0] > 0.2), reverse=True)
        row = {"wall_ms": round(wall, 2), "img_per_s": round(args.frames / wall * 1000, 1),
               "gpu_busy_ms": round(busy, 2), "idle_ms": round(wall - busy, 2),
               "gaps_over_0.2ms": len(big), "gaps_over_0.2ms_sum": round(sum(g[0] for g in big), 2),
               "longest": [(round(ms, 3), a[:60], b[:60]) for ms, a, b in big[:10]]}
        report["configs"][name] = row
        print(name, json.dumps(row, indent=1), flush=True)
        del engine
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

"""Every image size on the graphs inside a memory budget (issue 14): B=1 one-object latency by image
size, graphs vs eager, with peak GPU memory; a mixed stream; start-up and the memory plan.

    python benchmarks/large_images.py --preset 3b --memory-gb 24 --out-dir benchmarks/results

Work per call: one image, one query ("person"), 2 MTP steps (fixed_steps=2, end tokens ignored),
so the numbers are preprocess + vision + prefill + 2 steps. Random weights: the boxes mean nothing.
Graphs and eager calls are interleaved per size; P50/P90 over --iters calls. Peak memory is
torch's max_memory_reserved of the process (weights, KV, pool included), reset per size and path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from graphrt import Engine

GIB = 2**30


def image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1000, out


def pct(xs, q):
    return round(float(np.percentile(xs, q)), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--preset", choices=["tiny", "mid", "3b"], help="write a random checkpoint of this preset first")
    ap.add_argument("--memory-gb", type=float, default=24.0)
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080", "2240x2240"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--eager-iters", type=int, default=3)
    ap.add_argument("--stream", type=int, default=4, help="images per size in the mixed locate_stream run")
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args()
    report = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "memory_gb": args.memory_gb, "steps": 2, "query": "person"}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report['date']}_large_images.json"

    def save():
        path.write_text(json.dumps(report, indent=1))

    checkpoint = args.checkpoint
    if checkpoint is None:
        from weights.synth import write_preset

        t = time.perf_counter()
        checkpoint = write_preset(args.preset, Path(tempfile.mkdtemp()) / args.preset, device="cuda", progress=False)
        report["write_checkpoint_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    engine = Engine.from_pretrained(checkpoint, progress=False, fixed_steps=2, graphs="on", memory_gb=args.memory_gb)
    torch.cuda.synchronize()
    report["startup_s"] = round(time.perf_counter() - t, 1)
    status = engine.status()
    report["status"] = status
    report["after_load_reserved_gib"] = round(torch.cuda.memory_reserved() / GIB, 2)
    print(json.dumps({k: status[k] for k in ("graphs", "capture_s", "graph_pool_mib", "memory_plan")}), flush=True)
    print("startup_s", report["startup_s"], "reserved GiB", report["after_load_reserved_gib"], flush=True)
    save()
    eager = engine.with_options(graphs="off")

    rows = []
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        img = image(w, h, seed=w)
        result = {"size": size, "patches": engine.processor(img).num_patches}
        for name, eng, iters in (("graphs", engine, args.iters), ("eager", eager, args.eager_iters)):
            eng.locate(img, "person")  # warm-up
            torch.cuda.reset_peak_memory_stats()
            samples, backend, stages = [], None, []
            for _ in range(iters):
                ms, r = timed(lambda: eng.locate(img, "person"))
                samples.append(ms)
                backend = r.backend
                stages.append(r.timings_ms)
            result[name] = {"backend": backend, "p50_ms": pct(samples, 50), "p90_ms": pct(samples, 90),
                            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
                            "stages_ms_last": stages[-1]}
        rows.append(result)
        print(json.dumps(result), flush=True)
        report["latency"] = rows
        save()

    sizes = ["640x480", "1280x720", "1920x1080", "2240x2240"]
    pairs = [(image(*(int(v) for v in s.split("x")), seed=i), "person") for i in range(args.stream) for s in sizes]
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    backends, per = [], []
    for _, r in engine.locate_stream(pairs):
        backends.append(r.backend)
        per.append(sum(r.timings_ms.get(k, 0) for k in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms")))
    wall = time.perf_counter() - t
    report["stream"] = {"images": len(pairs), "sizes": sizes, "img_per_s": round(len(pairs) / wall, 2),
                        "p50_ms": pct(per, 50), "p99_ms": pct(per, 99), "backends": sorted(set(backends)),
                        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
                        "latency": "per image: its preprocess + vision + prefill + decode stage times"}
    print(json.dumps(report["stream"]), flush=True)
    save()


if __name__ == "__main__":
    main()

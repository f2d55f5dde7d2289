"""Peak memory of the engine under a memory budget (issue 14): load at --memory-gb, print the plan,
then B=1 one-object calls on the graphs at each size (2240x2240 the largest), with torch's peak
reserved memory (weights, KV, graph pool, workspaces) and the device's used memory (that plus the
CUDA context and anything outside torch's allocator).

    python benchmarks/memory_budget.py --preset 3b --memory-gb 16 --out memory_budget.json

Work per call: one image, query "person", 2 MTP steps (fixed_steps=2). Random weights: boxes mean
nothing. Also prints the plans capture/plan.py derives for 12, 16, 20 and 24 GiB (estimates).
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

from capture.plan import plan_for_model
from graphrt import Engine

GIB = 2**30


def image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def device_used_gib() -> float:
    free, total = torch.cuda.mem_get_info()
    return round((total - free) / GIB, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--preset", choices=["tiny", "mid", "3b"])
    ap.add_argument("--memory-gb", type=float, default=16.0)
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080", "2240x2240"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default="memory_budget.json")
    args = ap.parse_args()
    report = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "memory_gb": args.memory_gb, "steps": 2, "query": "person"}
    out = Path(args.out)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from weights.synth import write_preset

        checkpoint = write_preset(args.preset, Path(tempfile.mkdtemp()) / args.preset, device="cuda", progress=False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = device_used_gib()
    t = time.perf_counter()
    engine = Engine.from_pretrained(checkpoint, progress=False, fixed_steps=2, graphs="on", memory_gb=args.memory_gb)
    torch.cuda.synchronize()
    report["startup_s"] = round(time.perf_counter() - t, 1)
    status = engine.status()
    report["plan"] = status.get("memory_plan")
    report["graph_pool_mib"] = status.get("graph_pool_mib")
    report["vision_attention"] = status.get("vision_attention")
    report["after_load"] = {"reserved_gib": round(torch.cuda.memory_reserved() / GIB, 2),
                            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
                            "device_used_gib": device_used_gib(), "device_used_before_load_gib": base}
    model = engine.model if hasattr(engine, "model") else None
    if model is not None:
        report["plans_by_budget"] = {}
        for gb in (12, 16, 20, 24):
            try:
                p = plan_for_model(model, gb)
                report["plans_by_budget"][gb] = {k: v for k, v in p.describe().items()
                                                 if k not in ("vision_keys", "prefill_keys")}
            except Exception as exc:  # noqa: BLE001 - a budget that does not fit is a result
                report["plans_by_budget"][gb] = f"{type(exc).__name__}: {exc}"
    print(json.dumps({k: report[k] for k in ("startup_s", "after_load", "graph_pool_mib", "vision_attention")}),
          flush=True)
    print("plan:", json.dumps({k: v for k, v in (report["plan"] or {}).items()
                               if k not in ("vision_keys", "prefill_keys")}), flush=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    rows = []
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        img = image(w, h, seed=w)
        engine.locate(img, "person")
        samples, stages, backend = [], None, None
        for _ in range(args.iters):
            torch.cuda.synchronize()
            t = time.perf_counter()
            r = engine.locate(img, "person")
            torch.cuda.synchronize()
            samples.append((time.perf_counter() - t) * 1e3)
            stages, backend = r.timings_ms, r.backend
        rows.append({"size": size, "backend": backend, "p50_ms": round(float(np.median(samples)), 2),
                     "stages_ms_last": stages,
                     "peak_reserved_gib_so_far": round(torch.cuda.max_memory_reserved() / GIB, 2),
                     "device_used_gib": device_used_gib()})
        print(json.dumps(rows[-1]), flush=True)
        report["latency"] = rows
        out.write_text(json.dumps(report, indent=1, default=str))
    report["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
    report["device_used_end_gib"] = device_used_gib()
    print("peak reserved GiB", report["peak_reserved_gib"], "device used GiB", report["device_used_end_gib"],
          flush=True)
    out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()

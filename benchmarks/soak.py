"""Soak: many requests of mixed image sizes and queries through ONE engine, watching memory and latency.

    python benchmarks/soak.py --preset 3b --requests 10000        # writes a random 3B checkpoint first
    python benchmarks/soak.py --checkpoint DIR --requests 10000 --max-seconds 300

The calls mix what a server sees: single `locate` calls (the robot loop), `locate_many` with 4
queries on one image, `locate_batch` of 32 pairs (one batch on the graphs) and of 96 pairs
(streamed through the continuous-batching scheduler). Images come from a pool of random-noise
pictures whose sizes are drawn uniformly in a range (many distinct patch grids, as real traffic
has); queries from a list of short and long phrases. Random weights give random tokens, so every
row runs a fixed number of MTP steps (--steps, end tokens ignored): the work per request is the
image's vision + prefill plus those steps.

Printed and saved per window of --window requests: GPU memory (torch allocated / reserved, and
device-wide used from cudaMemGetInfo), host RSS, the number of distinct image grids seen so far
and the runtime's per-grid cache entries, and P50/P90/P99 latency of each call kind in that
window. Expected: memory flat after the first window (warm-up); a per-grid cache without a bound
shows up as growth that tracks the distinct grids. Results: JSON + markdown in --out-dir, named
with the date and the device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latency import write_report  # noqa: E402  (sibling benchmark: one report writer)
from graphrt import Engine

QUERIES = ["person", "car", "dog", "traffic light", "bicycle", "the red umbrella on the left", "cat</c>bus",
           "a man holding a blue cup next to the window", "person</c>car</c>bicycle</c>dog",
           "the small bird sitting on the top branch of the tree in the background"]
KINDS = {"locate": 1, "locate_many4": 4, "batch32": 32, "stream96": 96}  # requests per call
MIX = {"locate": 0.30, "locate_many4": 0.10, "batch32": 0.45, "stream96": 0.15}  # share of calls


def host_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def memory(engine) -> dict:
    out = {"host_rss_mib": host_rss_mib()}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        out.update(gpu_allocated_mib=round(torch.cuda.memory_allocated() / 2**20, 1),
                   gpu_reserved_mib=round(torch.cuda.memory_reserved() / 2**20, 1),
                   gpu_device_used_mib=round((total - free) / 2**20, 1))
    cache = getattr(getattr(engine.runtime, "inputs", None), "geometry", None)
    if cache is not None:
        out["grid_cache_entries"] = len(cache)
    return out


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    a = np.asarray(xs)
    return {"n": len(xs), **{f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 90, 99)}}


def image_pool(n: int, wmin: int, wmax: int, hmin: int, hmax: int, seed: int) -> list[Image.Image]:
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        w, h = int(rs.randint(wmin, wmax + 1)), int(rs.randint(hmin, hmax + 1))
        out.append(Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory")
    src.add_argument("--preset", choices=["tiny", "mid", "3b"], help="write a random checkpoint of this preset first")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--window", type=int, default=1000, help="requests per reporting window")
    ap.add_argument("--steps", type=int, default=2, help="MTP steps per row (fixed; end tokens ignored)")
    ap.add_argument("--pool", type=int, default=600, help="distinct images (random sizes) to draw from")
    ap.add_argument("--size", type=int, nargs=4, default=[160, 800, 120, 600], metavar=("WMIN", "WMAX", "HMIN", "HMAX"))
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop after this long (0: no limit); the report says so")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="", help="EngineOptions / GenerationConfig overrides: key=value,...")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="soak")
    args = ap.parse_args()

    t_start = time.perf_counter()
    checkpoint = args.checkpoint
    if checkpoint is None:
        from weights.synth import write_preset

        checkpoint = write_preset(args.preset, Path(tempfile.mkdtemp()) / args.preset,
                                  device="cuda" if torch.cuda.is_available() else "cpu", progress=False)
    write_s = time.perf_counter() - t_start
    overrides = {}
    for item in filter(None, args.options.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(value.lower(), value)
    t0 = time.perf_counter()
    engine = Engine.from_pretrained(checkpoint, progress=False, fixed_steps=args.steps, **overrides)
    load_s = time.perf_counter() - t0
    status = engine.status()
    print(f"checkpoint {write_s:.1f} s, load + capture {load_s:.1f} s; graphs {status['graph_runtime']} "
          f"({status['graphs']} captured in {status['capture_s']} s)", flush=True)

    pool = image_pool(args.pool, *args.size, seed=args.seed)
    grids_of = [engine.processor.target_size(*im.size) for im in pool]
    rs = np.random.RandomState(args.seed + 1)
    kinds, shares = list(MIX), np.asarray(list(MIX.values()))
    loaded = memory(engine)
    print("loaded:", json.dumps(loaded), flush=True)

    windows, current = [], {k: [] for k in KINDS}
    done, calls, grids, backends, stops = 0, 0, set(), {}, {}
    window_t0, window_done = time.perf_counter(), 0
    stopped_early = False
    while done < args.requests:
        if args.max_seconds and time.perf_counter() - t_start > args.max_seconds:
            stopped_early = True
            break
        kind = kinds[rs.choice(len(kinds), p=shares / shares.sum())]
        n = min(KINDS[kind], args.requests - done)
        picks = rs.choice(len(pool), size=min(len(pool), n if kind != "locate_many4" else 1), replace=False)
        queries = [QUERIES[i] for i in rs.randint(0, len(QUERIES), size=n)]
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        t = time.perf_counter()
        if kind == "locate":
            results = [engine.locate(pool[picks[0]], queries[0])]
        elif kind == "locate_many4":
            results = engine.locate_many(pool[picks[0]], queries)
        else:
            results = engine.locate_batch([(pool[picks[j % len(picks)]], q) for j, q in enumerate(queries)])
        ms = (time.perf_counter() - t) * 1000
        current[kind].append(ms)
        for r in results:
            backends[r.backend] = backends.get(r.backend, 0) + 1
            stops[r.stop_reason] = stops.get(r.stop_reason, 0) + 1
        grids.update(grids_of[i] for i in picks)
        done += len(results)
        calls += 1
        if done - window_done >= args.window or done >= args.requests:
            elapsed = time.perf_counter() - window_t0
            row = {"requests_done": done, "calls": calls, "seconds": round(time.perf_counter() - t_start, 1),
                   "window_req_per_s": round((done - window_done) / elapsed, 1), "distinct_grids": len(grids),
                   **memory(engine), "latency": {k: percentiles(v) for k, v in current.items() if v}}
            windows.append(row)
            print(json.dumps(row), flush=True)
            current = {k: [] for k in KINDS}
            window_t0, window_done = time.perf_counter(), done

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    first, last = windows[0], windows[-1]
    mid = windows[len(windows) // 2]
    growth = {k: round(last[k] - first[k], 1) for k in ("gpu_allocated_mib", "gpu_reserved_mib", "gpu_device_used_mib",
                                                        "host_rss_mib") if k in first}
    report = {"date": dt.date.today().isoformat(), "device": device, "torch": torch.__version__,
              "checkpoint": str(checkpoint), "preset": args.preset, "dtype": str(engine.model.dtype),
              "fixed_steps": args.steps, "requests": done, "requests_asked": args.requests, "calls": calls,
              "stopped_early": stopped_early, "image_sizes": args.size, "pool": args.pool,
              "distinct_grids": len(grids), "mix": MIX, "rows_per_call": KINDS, "backends": backends,
              "stop_reasons": stops, "checkpoint_write_s": round(write_s, 1), "load_and_capture_s": round(load_s, 1),
              "total_s": round(time.perf_counter() - t_start, 1), "status": status,
              "memory": {"loaded": loaded, "start (after window 1)": first, "middle": mid, "end": last},
              "growth_after_window_1_mib": growth, "windows": windows}
    write_report(report, markdown(report), args.out_dir, args.tag)


def markdown(r: dict) -> str:
    mem_keys = ["gpu_allocated_mib", "gpu_reserved_mib", "gpu_device_used_mib", "host_rss_mib", "grid_cache_entries"]
    lines = [f"# Soak, {r['date']}, {r['device']}, torch {r['torch']}, {r['dtype']}", "",
             f"{r['requests']} requests ({r['calls']} calls"
             f"{', stopped early by --max-seconds' if r['stopped_early'] else ''})"
             f" through one engine in {r['total_s']} s (checkpoint write {r['checkpoint_write_s']} s, load + capture "
             f"{r['load_and_capture_s']} s). Random weights: every row runs exactly {r['fixed_steps']} MTP steps "
             f"(end tokens ignored). Images: random noise, {r['pool']} pictures of sizes uniform in "
             f"{r['image_sizes'][0]}-{r['image_sizes'][1]} x {r['image_sizes'][2]}-{r['image_sizes'][3]} px "
             f"({r['distinct_grids']} distinct patch grids used). Call mix (share of calls): {r['mix']}; "
             "rows per call: "
             f"{r['rows_per_call']}. Backends: {r['backends']}; stop reasons: {r['stop_reasons']}.", "",
             "## Memory (MiB)", "", "| point | " + " | ".join(mem_keys) + " |", "| --- |" + " ---: |" * len(mem_keys)]
    for name, m in r["memory"].items():
        lines.append(f"| {name} | " + " | ".join(str(m.get(k, "")) for k in mem_keys) + " |")
    lines += ["", f"Growth from the end of window 1 to the end: {r['growth_after_window_1_mib']} MiB.", "",
              "## Windows", "", "| requests | s | req/s | grids | alloc | reserved | device used | RSS | "
              + " | ".join(f"{k} P50/P90/P99 ms" for k in KINDS) + " |", "|" + " ---: |" * 8 + " --- |" * len(KINDS)]
    for w in r["windows"]:
        lat = [w["latency"].get(k) for k in KINDS]
        cells = [f"{x['p50_ms']}/{x['p90_ms']}/{x['p99_ms']} (n={x['n']})" if x else "" for x in lat]
        lines.append(f"| {w['requests_done']} | {w['seconds']} | {w['window_req_per_s']} | {w['distinct_grids']} | "
                     f"{w.get('gpu_allocated_mib', '')} | {w.get('gpu_reserved_mib', '')} | "
                     f"{w.get('gpu_device_used_mib', '')} | {w['host_rss_mib']} | " + " | ".join(cells) + " |")
    lines += ["", "Latency is per call, from the call to its returned boxes (preprocessing included)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Throughput of `locate --ray` with N engines against one engine, on a local Ray cluster.

    python benchmarks/ray_scaling.py --engines 1 2 --images 48 --repeats 2        # tiny random checkpoint
    python benchmarks/ray_scaling.py --checkpoint DIR --engines 1 2 4 8 --gpus-per-engine 1 --num-cpus 64

Each run is the whole offline pipeline (offline.run: CPU decode tasks -> engine actor pool ->
rows appended to a file by the driver) on distinct random images of one size, every row running
exactly --steps decode steps (random weights: end tokens are ignored, so the work is fixed).
Runs of the engine counts alternate (1, N, N, 1, ...) so machine drift hits all of them.

Reported per engine count: wall and first row out (the driver's view: actors placed, engines
loaded, first batch answered), rows/s while the engines work (rows over first batch start to last
batch end, as the engine actors log them: start-up excluded) and scaling efficiency =
rows/s(N) / (N * rows/s(1)).
Also the design limits: object-store bytes per image (decoded pixels out of the decode task),
the CPU decode time per image (decode cores one GPU engine needs) and the driver's own cost per
row (the most rows/s one driver can write). On CPUs (--gpus-per-engine 0 or fake GPUs) each
engine is pinned to --engine-threads torch threads, so N engines use N times the cores of one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from graphrt.batch_io import Request
from graphrt.engine import EngineOptions
from graphrt.decode import GenerationConfig
from graphrt.processor import ImageProcessor
from graphrt.scaleout import offline
from graphrt.scaleout.journal import Journal
from graphrt.scaleout.replica import pack


class TimedEngine(offline.EngineWorker):
    """An engine that logs when each batch started and ended (wall clock, one machine), and on CPUs
    keeps to a fixed number of torch threads (one engine = a fixed share of the cores)."""

    threads = 0  # 0: torch's default
    log = ""  # file the batch times are appended to

    def __init__(self, checkpoint, options):
        if self.threads:
            torch.set_num_threads(self.threads)
        super().__init__(checkpoint, options)

    def __call__(self, batch):
        t0 = time.time()
        out = super().__call__(batch)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {t0} {time.time()} {len(out['line'])}\n")
        return out


def engine_window(log: Path) -> dict:
    """Rows/s while engines worked: rows over first batch start to last batch end (load excluded)."""
    rows = [line.split() for line in log.read_text().splitlines()]
    start, end = min(float(r[1]) for r in rows), max(float(r[2]) for r in rows)
    busy = sum(float(r[2]) - float(r[1]) for r in rows)
    engines = len({r[0] for r in rows})
    return {"engine_rows_per_s": round(sum(int(r[3]) for r in rows) / (end - start), 2),
            "engines_seen": engines, "busy_fraction": round(busy / (engines * (end - start)), 3)}


def write_images(folder: Path, n: int, width: int, height: int) -> list[Request]:
    rs = np.random.RandomState(0)
    out = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray((rs.rand(height, width, 3) * 255).astype(np.uint8)).save(path, quality=90)
        out.append(Request(i + 1, str(path), "person</c>car"))
    return out


def design_limits(requests: list[Request], checkpoint: str) -> dict:
    """Bytes each image puts in the object store, CPU decode ms per image, driver ms per row."""
    processor = ImageProcessor(offline.preprocessor_config(checkpoint))
    t0 = time.perf_counter()
    packed = [pack(processor(r.image)) for r in requests[:16]]
    decode_ms = (time.perf_counter() - t0) * 1000 / len(packed)
    record = {"line": 1, "image": requests[0].image, "query": "person</c>car", "detections": [
        {"label": "person", "kind": "box", "box_norm": [1, 2, 3, 4], "box": [1.0, 2.0, 3.0, 4.0], "score": None}] * 4,
        "text": "x" * 200, "stop_reason": "end", "steps": 4, "image_size": [640, 480], "image_tokens": 414,
        "prompt_tokens": 540, "empty_frames": 0, "malformed": 0, "timings_ms": {"vision_ms": 1.0}}
    text = json.dumps(record)
    with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp) / "rows.jsonl") as journal:
        t0 = time.perf_counter()
        for i in range(2000):  # the driver's loop body: parse the row, append it, flush
            journal.write(dict(json.loads(text), line=i))
        driver_ms = (time.perf_counter() - t0) * 1000 / 2000
    return {"object_store_bytes_per_image": len(packed[0]["rgb"]) + 64, "jpeg_bytes_per_image":
            Path(requests[0].image).stat().st_size, "record_bytes": len(text), "decode_ms_per_image": round(decode_ms, 2),
            "driver_ms_per_row": round(driver_ms, 4), "driver_rows_per_s_ceiling": round(1000 / driver_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="default: a tiny random checkpoint written to a temp folder")
    ap.add_argument("--engines", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--steps", type=int, default=4, help="decode steps per row (fixed)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpus-per-engine", type=float, default=1.0, help="on a CPU machine the GPUs are fake")
    ap.add_argument("--engine-threads", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    ckpt = args.checkpoint
    if ckpt is None:
        from weights.synth import write_preset

        ckpt = str(write_preset("tiny", tmp / "tiny", seed=0, progress=False))
    width, height = map(int, args.size.split("x"))
    (tmp / "img").mkdir()
    requests = write_images(tmp / "img", args.images, width, height)
    limits = design_limits(requests, ckpt)

    gpus = max(args.engines) * args.gpus_per_engine
    on_cpu = args.device == "cpu" or not torch.cuda.is_available()
    ray.init(num_cpus=args.num_cpus, num_gpus=gpus if on_cpu else None, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    TimedEngine.threads = args.engine_threads if on_cpu else 0
    gen = GenerationConfig(max_new_tokens=64, fixed_steps=args.steps)
    options = EngineOptions(device="cpu" if on_cpu else args.device, generation=gen, progress=False)

    order = []
    for r in range(args.repeats):
        order += args.engines if r % 2 == 0 else list(reversed(args.engines))
    runs: dict[int, list[dict]] = {n: [] for n in args.engines}
    for i, n in enumerate(order):
        cfg = offline.OfflineConfig(ckpt, options, engines=n, gpus_per_engine=args.gpus_per_engine)
        out, TimedEngine.log = tmp / f"run{i}.jsonl", str(tmp / f"run{i}.times")
        s = offline.run(cfg, requests, str(out), worker=TimedEngine)
        runs[n].append({"wall_s": round(s["wall_s"], 2), "first_row_s": round(s["first_row_s"], 2),
                        "rows_per_s": round(len(requests) / s["wall_s"], 2), **engine_window(Path(TimedEngine.log))})
        print(f"engines={n}: {runs[n][-1]}", flush=True)
    ray.shutdown()

    base = statistics.median(r["engine_rows_per_s"] for r in runs[args.engines[0]]) * (1 / args.engines[0])
    table = []
    for n in args.engines:
        steady = statistics.median(r["engine_rows_per_s"] for r in runs[n])
        table.append({"engines": n, "median_engine_rows_per_s": round(steady, 2),
                      "median_wall_s": round(statistics.median(r["wall_s"] for r in runs[n]), 2),
                      "median_first_row_s": round(statistics.median(r["first_row_s"] for r in runs[n]), 2),
                      "scaling_efficiency": round(steady / (n * base), 3), "runs": runs[n]})
    device = torch.cuda.get_device_name() if not on_cpu else _cpu_name()
    result = {"date": dt.date.today().isoformat(), "device": device, "cores": os.cpu_count(),
              "load_average_1_5_15": list(os.getloadavg()),  # others' work on the machine during the run
              "ray": ray.__version__, "checkpoint": ckpt if args.checkpoint else "tiny random (weights.synth)",
              "work": {"images": args.images, "size": args.size, "query": "person</c>car", "steps_per_row": args.steps,
                       "gpus_per_engine": args.gpus_per_engine, "engine_threads": args.engine_threads if on_cpu else None,
                       "ray_num_cpus": args.num_cpus},
              "design_limits": limits, "scaling": table}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}_ray_scaling_{'cpu' if on_cpu else 'gpu'}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# locate --ray scaling, {result['date']}, {device} ({result['cores']} cores), Ray {ray.__version__}", "",
             f"{args.images} images {args.size}, {args.steps} steps per row, checkpoint: {result['checkpoint']}", "",
             "| engines | rows/s while engines work (median) | wall s | first row s | scaling efficiency |",
             "|---|---|---|---|---|"]
    lines += [f"| {t['engines']} | {t['median_engine_rows_per_s']} | {t['median_wall_s']} | {t['median_first_row_s']} | "
              f"{t['scaling_efficiency']} |" for t in table]
    lines += ["", "Design limits: " + ", ".join(f"{k} {v}" for k, v in limits.items())]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()

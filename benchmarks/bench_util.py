"""Timing and report scaffolding shared by the benchmark scripts (GPU only; imported, not run).

- `capture(body)`: a CUDA graph of `body`, warmed twice on a side stream first (lazy inits and
  autotuning happen outside the capture).
- `captured_us(fn, calls)`: µs per call of `fn` replayed `calls` times inside one graph, the
  median of several replays: what a kernel costs inside our graphs, without launch gaps.
- `alternating_ms(graphs, reps)`: every graph replayed once per round, the order reversed every
  other round, so the A/B variants see the same clocks and caches (interleaved A/B).
- `wait_for_file(path, report)`: hold the timings until a concurrent run (the GPU tests) has
  written `path`, so they see an idle GPU; the wait goes into the report.
- `add_checkpoint_args(ap)` / `checkpoint_dir(args)`: `--checkpoint DIR` or `--preset NAME`
  (a random checkpoint of the official layout written to a temporary folder).
- `result_stem(out_dir, tag)`: the results folder, the dated, device-named file stem and the
  header every result JSON starts with.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path

import argparse
import tempfile

import torch

from weights.synth import write_preset


def capture(body, warmups: int = 2) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmups):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        body()
    return graph


def event_ms(fn) -> float:
    """Device ms of one call of `fn` (CUDA events around it)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def captured_us(fn, calls: int = 20, replays: int = 7) -> float:
    def body():
        for _ in range(calls):
            fn()

    graph = capture(body, warmups=1)
    return statistics.median(event_ms(graph.replay) for _ in range(replays)) / calls * 1e3


def alternating_ms(graphs: dict, reps: int) -> dict[str, list[float]]:
    times = {name: [] for name in graphs}
    names = list(graphs)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(event_ms(graphs[name].replay))
    return times


def result_stem(out_dir: str, tag: str, **header) -> tuple[Path, str, dict]:
    """The results folder (created), the file stem `DATE_TAG_DEVICE` and a report header naming
    date, device and torch."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    today = dt.date.today().isoformat()
    report = {"date": today, "device": device, "torch": torch.__version__, **header}
    return out, f"{today}_{tag}_{device.replace(' ', '-')}", report


def wait_for_file(path: str | None, report: dict, limit_s: float = 240.0) -> None:
    if not path:
        return
    t = time.perf_counter()
    while not Path(path).exists() and time.perf_counter() - t < limit_s:
        time.sleep(0.5)
    report["waited_for_tests_s"] = round(time.perf_counter() - t, 1)


def add_checkpoint_args(ap: argparse.ArgumentParser) -> None:
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint folder of the official layout")
    src.add_argument("--preset", choices=["tiny", "mid", "3b"], help="write a random checkpoint of this size first")


def checkpoint_dir(args, into: str | None = None) -> str:
    """`--checkpoint`, or a random `--preset` checkpoint written under `into` (a temporary folder)."""
    if args.checkpoint is not None:
        return str(args.checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return str(write_preset(args.preset, Path(into or tempfile.mkdtemp()) / args.preset, device=device, progress=False))

"""Time per stage of one call, without stalling the GPU.

On CUDA a lap records an event on the current stream instead of synchronizing: the host goes on
filling the next stage's inputs (and launching it) while the GPU still runs this stage, so timing
a call no longer adds a host-to-GPU bubble at every stage boundary. A lap's time is the GPU
timeline between two events (host work the GPU waited for is inside it). Reading `laps` waits for
the last event only. On the CPU a lap is wall time.

A/B switch: GRAPHRT_STAGE_CLOCK=sync (or `StageClock.synchronize = True`, which benchmarks set per
call) makes every lap synchronize first, as before, so a stage boundary stalls the GPU again.
"""

from __future__ import annotations

import os
import time

import torch

from .errors import OptionError

STAGE_CLOCKS = ("events", "sync")


def stage_clock_syncs(mode: str | None = None) -> bool:
    """Whether laps synchronize: `mode`, else GRAPHRT_STAGE_CLOCK (default events)."""
    mode = mode if mode is not None else os.environ.get("GRAPHRT_STAGE_CLOCK", "events")
    if mode not in STAGE_CLOCKS:
        raise OptionError(f"GRAPHRT_STAGE_CLOCK (stage_clock) must be events or sync, not {mode!r}")
    return mode == "sync"


class StageClock:
    synchronize: bool | None = None  # None: GRAPHRT_STAGE_CLOCK decides, read per clock

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.sync = self.synchronize if self.synchronize is not None else stage_clock_syncs()
        self._marks: list[tuple[str | None, object]] = [(None, self._mark())]

    def _mark(self):
        if self.cuda:
            if self.sync:
                torch.cuda.synchronize()
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def lap(self, name: str) -> None:
        self._marks.append((name, self._mark()))

    @property
    def laps(self) -> dict[str, float]:
        """Milliseconds per lap name (a name lapped twice keeps its last lap)."""
        if self.cuda:
            self._marks[-1][1].synchronize()
        out: dict[str, float] = {}
        for (_, start), (name, end) in zip(self._marks, self._marks[1:]):
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1000.0
            out[name] = round(ms, 3)
        return out


def graph_call_ms(fn, reps: int) -> float:
    """Median milliseconds of one fn(i), i = 0..reps-1 captured in one CUDA graph (launch costs as
    inside the runtime's graphs): what the warm-up choosers of the skinny GEMMs compare."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(0)  # compile / autotune outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(i)
    graph.replay()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    del graph
    return sorted(times)[2]

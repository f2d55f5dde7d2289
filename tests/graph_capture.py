"""Capturing a kernel chain into a CUDA graph the way the GPU tests need it."""

from __future__ import annotations

import torch


def capture_after_warmup(run, fill):
    """Runs `run()` once on a side stream (Triton compiles its PDL variants there, outside the
    capture), then captures it into a CUDA graph; `fill(0)` resets the inputs before each.
    -> (graph, what the captured run returned: the tensors a replay writes)."""
    fill(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    fill(0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    return graph, out

"""CUDA graphs keyed by (stage, bucket), all sharing one memory pool."""

from __future__ import annotations

from typing import Callable

import torch


class GraphSet:
    def __init__(self):
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def __contains__(self, key) -> bool:
        return key in self.graphs

    def __len__(self) -> int:
        return len(self.graphs)

    def capture(self, key: tuple, body: Callable[[], None], warmup: int = 2) -> None:
        # Warm up on a side stream (lazy inits, cuBLAS handles), then capture into the shared pool.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            body()
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = graph

    def replay(self, key: tuple) -> None:
        self.graphs[key].replay()

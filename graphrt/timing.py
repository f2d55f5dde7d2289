"""Wall time per stage; on CUDA each lap synchronizes first, so it holds its own GPU work."""

from __future__ import annotations

import time

import torch


class StageClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.laps: dict[str, float] = {}
        self.t = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = round((now - self.t) * 1000.0, 3)
        self.t = now

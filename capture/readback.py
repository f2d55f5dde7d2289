"""The host's copy of what the host reads after a replay: `all_done`, each row's finished flag,
counts and tokens. It is enqueued right behind a step (or an admission's last prefill) as
non-blocking copies into pinned mirrors, while the GPU still runs the replay: when the host then
waits for `all_done`, a finished batch's tokens are already on the host, and `collect` issues no
device work (each small synchronizing read costs ~50 us of host time on the H100's host, five per
collect before). A replay or any state write makes the copy stale (`invalidate`); reads of a stale
or too-short copy go to the device as before."""

from __future__ import annotations

import numpy as np
import torch

FIELDS = ("finished", "n_gen", "steps", "ended", "step_limit", "out_tokens")  # per-row tensors of the pipeline


class ReadBack:
    def __init__(self, pipe):
        self.pipe = pipe
        self.cuda = pipe.all_done.is_cuda
        tensors = {name: getattr(pipe, name) for name in FIELDS + ("all_done",)}
        self.host = {name: torch.empty(t.shape, dtype=t.dtype, pin_memory=self.cuda) for name, t in tensors.items()}
        self.arrays = {name: h.numpy() for name, h in self.host.items()}
        self._copied = torch.cuda.Event() if self.cuda else None
        self.rows = 0  # rows [0, rows) of the last enqueue; 0: stale

    def enqueue(self, rows: int) -> None:
        """Copy rows [0, rows) of every field and all_done (behind the work queued so far)."""
        pipe = self.pipe
        for name in FIELDS:
            self.host[name][:rows].copy_(getattr(pipe, name)[:rows], non_blocking=self.cuda)
        self.host["all_done"].copy_(pipe.all_done, non_blocking=self.cuda)
        if self.cuda:
            self._copied.record()
        self.rows = rows

    def invalidate(self) -> None:
        self.rows = 0

    def covers(self, targets) -> bool:
        return self.rows > 0 and max(targets) < self.rows

    def _ready(self) -> dict[str, np.ndarray]:
        if self.cuda:
            self._copied.synchronize()
        return self.arrays

    def all_done(self) -> bool:
        return bool(self._ready()["all_done"])

    def field(self, name: str, targets) -> np.ndarray:
        """Rows `targets` (a list; covered) of one field."""
        arr = self._ready()[name]
        n = len(targets)
        return arr[:n] if list(targets) == list(range(n)) else arr[np.asarray(targets)]

"""Host mirrors of the graphs' input buffers: the host writes numpy views of persistent (pinned
on CUDA) tensors, then each buffer goes to the device in one non-blocking copy.

Pinned memory lets the copies overlap the host's next work; a later fill first waits for the
copies that still read the mirrors (a CUDA event), so a mirror is never rewritten under a copy.
On the CPU the copies are plain synchronous copies.
"""

from __future__ import annotations

import numpy as np
import torch


class Staging:
    def __init__(self, buffers: dict[str, torch.Tensor]):
        device = next(iter(buffers.values())).device
        self.cuda = device.type == "cuda"
        self.device_buffers = buffers
        # mirrors start as copies of the buffers: rows a fill leaves alone (padding) hold valid values
        self.host = {name: torch.empty(b.shape, dtype=b.dtype, pin_memory=self.cuda).copy_(b)
                     for name, b in buffers.items()}
        self.arrays = {name: h.numpy() for name, h in self.host.items()}
        self._copied = torch.cuda.Event() if self.cuda else None
        self._pending = False

    def fill(self) -> dict[str, np.ndarray]:
        """The host arrays to write, once the previous copies have read them."""
        if self._pending:
            self._copied.synchronize()
            self._pending = False
        return self.arrays

    def send(self, rows: dict[str, int]) -> None:
        """Copy the first rows[name] rows of each named buffer to the device (non-blocking on CUDA)."""
        for name, n in rows.items():
            self.device_buffers[name][:n].copy_(self.host[name][:n], non_blocking=self.cuda)
        if self.cuda:
            self._copied.record()
            self._pending = True

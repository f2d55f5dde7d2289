"""Host pixels -> one device batch through a kept ring of pinned blocks, filled by a thread pool.

The cost of handing decoded images to the GPU is the copy out of PIL's memory (~4.5-6 GB/s on one
thread: 32 frames of 640x480 RGBX = 39 MB, 6.5-9 ms on the H100 host). Here that copy is split
over CPU threads (ctypes.memmove, which runs without the GIL) into page-locked blocks, and each
filled block goes up as one truly asynchronous copy while the threads fill the next, so the host's
time is the parallel copy (~10 GB/s on 4 threads there; more threads measured slower), not the
driver's single-threaded staging of pageable memory.

Memory: `slots` blocks of `slot_bytes` each, allocated on first use and kept (default 4 x 8 MiB =
32 MiB of pinned host memory per engine; each Engine.with_options view has its own). A block is written again only after the upload that
read it last has finished on the GPU (a CUDA event per block), so a call never overwrites pixels
still on their way, whatever the stream or the call. One caller at a time (a lock): the blocks and
the threads are shared. Images larger than one block, and batches under 4 MiB,
are not staged (`wants`: the caller uploads them pageable).
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

SLOT_BYTES = 8 << 20
SLOTS = 4
MIN_PIECE_BYTES = 256 << 10  # smaller pieces cost more in hand-off than the threads save
MIN_STAGE_BYTES = 4 << 20  # smaller batches go pageable (ImageProcessor._upload; see `wants`)


class PinnedStaging:
    def __init__(self, device: torch.device | str, threads: int, slot_bytes: int = SLOT_BYTES, slots: int = SLOTS):
        if threads < 1 or slots < 1 or slot_bytes < 1:
            raise ValueError("PinnedStaging needs threads, slots and slot_bytes >= 1")
        self.device = torch.device(device)
        self.threads, self.slot_bytes, self.slots = threads, slot_bytes, slots
        self._lock = threading.Lock()
        self._blocks: list[torch.Tensor] = []  # pinned uint8 [slot_bytes] each (first use)
        self._events: list[torch.cuda.Event] = []  # the last upload read from each block
        self._next = 0  # the block the next chunk takes (round robin)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pinned_bytes(self) -> int:
        return self.slots * self.slot_bytes

    def fits(self, view: torch.Tensor) -> bool:
        return view.numel() <= self.slot_bytes

    def wants(self, views: list[torch.Tensor]) -> bool:
        """Whether `views` go through the blocks: each fits one, and together they are worth the
        threads' hand-off (a single 640x480 frame is not: 0.80 vs 0.25 ms pageable on the H100 host)."""
        return sum(v.numel() for v in views) >= MIN_STAGE_BYTES and all(self.fits(v) for v in views)

    def upload(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Equal-shape uint8 CPU views -> a [B, *shape] tensor on the device (a copy). Returns once
        every view has been read (the caller may release them); the device copy is queued on the
        current stream. Views must each `fit`."""
        shape = tuple(views[0].shape)
        per = views[0].numel()
        if any(tuple(v.shape) != shape for v in views):
            raise ValueError("PinnedStaging.upload takes views of one shape")
        views = [v if v.is_contiguous() else v.contiguous() for v in views]
        if per > self.slot_bytes:
            raise ValueError(f"an image of {per:,} bytes does not fit a {self.slot_bytes:,}-byte staging block")
        batch = torch.empty((len(views), *shape), dtype=torch.uint8, device=self.device)
        flat = batch.view(len(views), per)
        per_slot = self.slot_bytes // per
        chunks = [range(i, min(i + per_slot, len(views))) for i in range(0, len(views), per_slot)]
        with self._lock:
            self._start()
            pending: deque = deque()
            for members in chunks:
                if len(pending) == self.slots:  # every block is in this call: upload the oldest first
                    self._finish(pending.popleft(), flat)
                pending.append(self._fill(members, views, per))
            while pending:
                self._finish(pending.popleft(), flat)
        return batch

    def _start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="graphrt-stage")
            cuda = self.device.type == "cuda"  # elsewhere (CPU tests) plain memory, synchronous copies
            self._blocks = [torch.empty(self.slot_bytes, dtype=torch.uint8, pin_memory=cuda)
                            for _ in range(self.slots)]
            self._events = [torch.cuda.Event() if cuda else _Done() for _ in range(self.slots)]

    def _fill(self, members: range, views: list[torch.Tensor], per: int) -> tuple:
        """Take the next block (waiting for its last upload), and start the threads copying the
        chunk's views into it, the chunk's bytes cut into one equal share per thread (a share may
        span images): (block index, members, futures)."""
        k = self._next
        self._next = (k + 1) % self.slots
        self._events[k].synchronize()  # a never-recorded event returns at once
        base = self._blocks[k].data_ptr()
        total = len(members) * per
        shares = max(1, min(self.threads, total // MIN_PIECE_BYTES))
        cuts = [total * t // shares for t in range(shares + 1)]
        futures = []
        for lo, hi in zip(cuts, cuts[1:]):
            segments = []  # (destination address, source address, bytes)
            while lo < hi:
                j, at = divmod(lo, per)
                n = min(per - at, hi - lo)
                segments.append((base + lo, views[members[j]].data_ptr() + at, n))
                lo += n
            futures.append(self._pool.submit(_copy, segments))
        return k, members, futures

    def _finish(self, chunk: tuple, flat: torch.Tensor) -> None:
        """Wait for a chunk's copies, then queue its block's upload and mark the block busy."""
        k, members, futures = chunk
        for f in futures:
            f.result()
        n = len(members)
        per = flat.shape[1]
        flat[members.start:members.start + n].view(-1).copy_(self._blocks[k][:n * per], non_blocking=True)
        self._events[k].record()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _copy(segments: list[tuple[int, int, int]]) -> None:
    # ctypes.memmove is a foreign call: it runs without the GIL, so the threads copy in parallel
    # (numpy's copyto per image on 4-16 threads reached only 7-10 GB/s together on the H100 host,
    # slower with more threads).
    for dst, src, n in segments:
        ctypes.memmove(dst, src, n)


class _Done:
    """The event of a synchronous copy (off CUDA): always finished."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

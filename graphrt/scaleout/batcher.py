"""Concurrent requests gathered into engine batches.

The first request of a batch waits at most `wait_s` for company, up to `max_rows` rows (the
largest graph batch); while a batch runs, newcomers queue and form the next one. Batches run
one at a time on one thread: an engine (its graphs, its static buffers) serves one batch at a
time. Ray Serve's @serve.batch does the same but only inside a Serve replica; this one serves
the local uvicorn replica and the Ray Serve replicas alike, so both answer identically.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Batcher:
    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], max_rows: int, wait_s: float):
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.run_batch, self.max_rows, self.wait_s = run_batch, max_rows, wait_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="graphrt-batch")
        self._queue: asyncio.Queue | None = None  # made in the serving event loop, on first use
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.rows = 0
        self.largest = 0  # most rows in one batch so far

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: Any) -> Any:
        """The result of `item`, computed in a batch with whatever else arrived meanwhile."""
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._serve())
        future = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_rows:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]  # clients that left
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._thread, self.run_batch, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, the server goes on
                results = [exc] * len(batch)
            self.batches += 1
            self.rows += len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

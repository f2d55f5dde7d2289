"""Work on CPU threads ahead of the consumer: image decoding and resizing for the next jobs
while the GPU runs the current ones (Pillow and torch release the GIL in their heavy parts)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

NOT_READY = object()  # poll(): the next result is still being computed


class Prefetcher:
    """fn(item) for each item on the pool's threads, at most `ahead` in flight; results in order."""

    def __init__(self, fn: Callable, items: Iterable, pool: ThreadPoolExecutor, ahead: int):
        self.fn = fn
        self.items = iter(items)
        self.pool = pool  # owned by the caller (the engine keeps one for its lifetime)
        self.ahead = ahead
        self.futures: deque = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self.futures) < self.ahead:
            item = next(self.items, StopIteration)
            if item is StopIteration:
                return
            self.futures.append(self.pool.submit(self.fn, item))

    def poll(self):
        """The next result if it is ready, NOT_READY if not, None when all were returned."""
        if not self.futures:
            return None
        if not self.futures[0].done():
            return NOT_READY
        return self.wait()

    def wait(self):
        """The next result (blocking), None when all were returned. Worker errors re-raise here."""
        if not self.futures:
            return None
        result = self.futures.popleft().result()
        self._fill()
        return result

    def close(self) -> None:
        for f in self.futures:
            f.cancel()
        for f in self.futures:
            if not f.cancelled():
                f.exception()  # wait: no worker outlives the call that started it

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Flattened:
    """poll()/wait() over a Prefetcher whose results are lists (one batch's prepared items each):
    the items one by one, in order. A batch becomes ready all at once, so a consumer that takes
    what is ready takes whole batches."""

    def __init__(self, batches: Prefetcher):
        self.batches = batches
        self.ready: deque = deque()

    def poll(self):
        """The next item if its batch is ready, NOT_READY if not, None when all were returned."""
        return self._next(self.batches.poll)

    def wait(self):
        """The next item (blocking), None when all were returned."""
        return self._next(self.batches.wait)

    def _next(self, fetch):
        while not self.ready:
            batch = fetch()
            if batch is None or batch is NOT_READY:
                return batch
            self.ready.extend(batch)
        return self.ready.popleft()

    def close(self) -> None:
        self.batches.close()

    def __enter__(self) -> "Flattened":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

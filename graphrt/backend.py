"""What the engine asks of a way to run rows: the `Backend` interface, its `Decode` (one batch in
flight), the `JobFeed` a backend's stream reads, and `stream_prepared` (jobs prepared ahead on CPU
threads through a backend's stream).

Two implementations: `graphrt.eager.EagerBackend` (plain PyTorch, the reference; any device) and
`capture.backend.GraphBackend` (CUDA graphs over static buffers). The engine validates requests,
groups rows into `ImageJob`s, picks the backend a batch fits (the graphs, else eager) and turns
finished rows into results; it never asks which backend it holds.

    decode = backend.start(jobs, gen)      # images prepared, rows prefilled
    while not decode.done:
        decode.step()                      # one decode step of every unfinished row
    decode.finish()                        # each Row.result set
    tensors, extra = decode.pause()        # or: a paused state (GenerationState), resumed by
    decode = backend.resume(jobs, gen, tensors, extra)   # the backend that paused it

    for job in backend.stream(feed, gen): ...   # many jobs (continuous batching on the graphs)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

from .decode import GenerationConfig, RowResult
from .prefetch import NOT_READY
from .request import ImageJob, LocateResult, ResultMaker
from .timing import StageClock


class Decode(ABC):
    """One batch of rows in flight, from its prefill to its last step."""

    def __init__(self, jobs: list[ImageJob], timings_ms: dict):
        self.jobs = jobs
        self.timings_ms = timings_ms  # vision_ms, prefill_ms of the start (decode_ms added by run)
        self.steps_done = 0
        self.done = False

    def step(self) -> None:
        """One decode step of every unfinished row."""
        self._step()
        self.steps_done += 1

    def finish(self) -> None:
        """Each row's result (Row.result), in job and row order; every row must be done."""
        for row, result in zip((r for job in self.jobs for r in job.rows), self._results()):
            row.result = result

    @abstractmethod
    def _step(self) -> None: ...

    @abstractmethod
    def _results(self) -> list[RowResult]: ...

    @abstractmethod
    def pause(self) -> tuple[dict, dict]:
        """(CPU tensors, plain values) from which the same backend resumes this batch."""


class Backend(ABC):
    name: str  # "graphs" | "eager": reported on each result
    runtime = None  # the CUDA-graph runtime behind a graph backend (introspection, benchmarks)

    def __init__(self, device, max_batch: int):
        self.device = device
        self.max_batch = max_batch  # rows (and images) of one batch

    def unsupported_config(self, gen: GenerationConfig, temperatures=()) -> str | None:
        """Why these generation settings cannot run here (None: they can)."""
        return None

    def unsupported(self, jobs: list[ImageJob], gen: GenerationConfig) -> str | None:
        """Why this batch cannot run here as one batch (None: it can)."""
        return None

    def unsupported_job(self, job: ImageJob) -> str | None:
        """Why this job cannot be streamed here (None: it can)."""
        return None

    @abstractmethod
    def start(self, jobs: list[ImageJob], gen: GenerationConfig) -> Decode:
        """Images prepared and rows prefilled: a batch ready to step."""

    @abstractmethod
    def resume(self, jobs: list[ImageJob], gen: GenerationConfig, tensors: dict, extra: dict) -> Decode:
        """A batch paused by this backend's Decode.pause()."""

    @abstractmethod
    def stream(self, feed, gen: GenerationConfig) -> Iterator[ImageJob]:
        """Each job of `feed` (a JobFeed or JobSource: poll()/wait()), its rows' results set, as
        soon as all its rows are done."""

    def run(self, jobs: list[ImageJob], gen: GenerationConfig) -> None:
        """One batch from start to end: each row's result, each job's stage timings."""
        decode = self.start(jobs, gen)
        clock = StageClock(self.device)
        while not decode.done:
            decode.step()
        clock.lap("decode_ms")
        decode.timings_ms.update(clock.laps, steps=decode.steps_done)
        decode.finish()
        for job in jobs:
            job.timings_ms.update({k: decode.timings_ms[k] for k in ("vision_ms", "prefill_ms", "decode_ms")})

    def status(self) -> dict:
        """What Engine.status reports about the backend."""
        return {}


class JobFeed:
    """Prepared images (from a Prefetcher: (ImageJob or None, failed results) items) as the jobs a
    backend's stream polls. Failed rows wait in `failures` for the caller to report; jobs that
    `refuse(job)` names a reason for are set aside (`set_aside`) for another backend."""

    def __init__(self, prepared, refuse=lambda job: None):
        self.prepared = prepared
        self.refuse = refuse
        self.failures: list = []
        self.set_aside: list[ImageJob] = []

    def poll(self):
        """A ready job, NOT_READY while the next one is still being prepared, None at the end."""
        return self._next(self.prepared.poll)

    def wait(self):
        """The next job (blocking), None at the end."""
        return self._next(self.prepared.wait)

    def drain_failures(self):
        while self.failures:
            yield self.failures.pop(0)

    def _next(self, fetch):
        while True:
            item = fetch()
            if item is None or item is NOT_READY:
                return item
            job, failed = item
            self.failures.extend(failed)
            if job is None:
                continue
            if self.refuse(job) is not None:
                self.set_aside.append(job)
                continue
            return job


def stream_prepared(prepared, backend: Backend, fallback: Backend, gen: GenerationConfig, results: ResultMaker,
                    say_why: Callable[[str], None]) -> Iterator[tuple[int, LocateResult]]:
    """(index, result) of each row of the jobs a Prefetcher prepares, as `backend` streams them, and
    of the rows that failed preparation as they come; the jobs `backend` refuses run on `fallback`
    afterwards, `say_why(reason)` first."""
    feed = JobFeed(prepared, backend.unsupported_job)
    for job in backend.stream(feed, gen):
        yield from feed.drain_failures()
        yield from results([job], backend.name)
    yield from feed.drain_failures()
    if feed.set_aside:
        say_why(f"{len(feed.set_aside)} image(s): {backend.unsupported_job(feed.set_aside[0])}")
        for job in fallback.stream(JobSource(feed.set_aside), gen):
            yield from results([job], fallback.name)


class JobSource:
    """Jobs from a plain iterable, always ready."""

    def __init__(self, jobs):
        self.it = iter(jobs)

    def wait(self) -> ImageJob | None:
        return next(self.it, None)

    poll = wait  # -> a ready job, None when exhausted (never NOT_READY)

"""Continuous batching over the graph runtime: many jobs, one step bucket, rows refilled as they free.

A job is one image with its queries: its rows are admitted together (one vision pass, one shared
prompt prefix) into free cache rows while other rows keep decoding. After each step the host
reads the finished flags (the one small read per step); finished rows are collected and waiting
jobs take them. Jobs come from a source the scheduler polls: while rows are decoding it admits
only jobs that are ready, so the caller can preprocess the next images on CPU threads while the
GPU works on the current ones; with nothing decoding it waits for the next job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from graphrt.decode import GenerationConfig, RowResult
from graphrt.prefetch import NOT_READY
from graphrt.processor import ProcessedImage
from graphrt.prompt import Prompt

from .runtime import GraphRow, GraphRuntime


@dataclass
class Job:
    image: ProcessedImage
    prompts: list[Prompt]
    temperatures: list[float | None]
    max_new_tokens: list[int | None]
    tag: object = None  # the caller's handle, returned with the results
    exemplars: list[list[ProcessedImage]] = field(default_factory=list)  # per prompt (visual prompts); [] = none
    streams: list[int] | None = None  # sampling-stream id per row (the caller's indices); None: cache rows
    results: list[RowResult | None] = field(default_factory=list)
    timings_ms: dict = field(default_factory=dict)


class JobSource:
    """Jobs from a plain iterable: always ready. (Engine's prefetcher polls CPU threads instead.)"""

    def __init__(self, jobs: Iterable[Job]):
        self.it = iter(jobs)

    def wait(self) -> Job | None:
        return next(self.it, None)

    poll = wait  # -> a ready job, None when exhausted, or NOT_READY


def run_jobs(runtime: GraphRuntime, source, gen: GenerationConfig, batch: int,
             share_prefix: bool = True) -> Iterator[Job]:
    """Yields each job, with `results` and `timings_ms` filled, as soon as all its rows are done.

    `source`: an iterable of jobs or an object with poll()/wait() (see JobSource). `batch` is the
    step bucket (a captured batch size); a job must have at most `batch` rows."""
    if batch not in runtime.buckets.batch_sizes:
        raise ValueError(f"batch {batch} is not a captured batch size {runtime.buckets.batch_sizes}")
    if not hasattr(source, "poll"):
        source = JobSource(source)
    waiting: Job | None = None
    free = list(range(batch))
    live: dict[int, tuple[Job, int]] = {}  # cache row -> (job, row of the job)
    runtime.begin()
    exhausted = False
    while True:
        admitted: list[Job] = []
        while not exhausted:
            if waiting is None:
                waiting = source.wait() if not live and not admitted else source.poll()
                if waiting is NOT_READY:
                    waiting = None
                    break
                if waiting is None:
                    exhausted = True
                    break
                if len(waiting.prompts) > batch:
                    raise ValueError(f"a job of {len(waiting.prompts)} rows does not fit batch {batch}")
            if len(waiting.prompts) > len(free) - sum(len(j.prompts) for j in admitted):
                break
            if admitted and _images(waiting) + sum(map(_images, admitted)) > runtime.buckets.max_batch:
                break  # one vision pass takes at most max_batch images (exemplars count)
            admitted.append(waiting)
            waiting = None
        if admitted:
            _admit(runtime, admitted, free, live, gen, share_prefix)
        if not live:
            return
        runtime.step(batch)
        finished = runtime.finished(batch)
        done = [t for t in live if finished[t]]
        if not done:
            continue
        now = time.perf_counter()
        for target, result in zip(done, runtime.collect(done)):
            job, row = live.pop(target)
            job.results[row] = result
            free.append(target)
            if all(r is not None for r in job.results):
                job.timings_ms["decode_ms"] = round((now - job.timings_ms.pop("_admitted")) * 1000, 3)
                job.timings_ms["steps"] = max(r.steps for r in job.results)
                yield job
        free.sort()


def _images(job: Job) -> int:
    return 1 + sum(len(e) for e in job.exemplars)


def _admit(runtime, jobs: list[Job], free: list[int], live: dict, gen: GenerationConfig, share_prefix: bool) -> None:
    images = [job.image for job in jobs]
    rows, targets = [], []
    for i, job in enumerate(jobs):
        job.results = [None] * len(job.prompts)
        for r, (prompt, temp, cap) in enumerate(zip(job.prompts, job.temperatures, job.max_new_tokens)):
            target = free.pop(0)
            extra = job.exemplars[r] if job.exemplars else []
            rows.append(GraphRow(prompt, i, temp, cap, tuple(range(len(images), len(images) + len(extra))),
                                 job.streams[r] if job.streams else None))
            images += extra
            targets.append(target)
            live[target] = (job, r)
    laps = runtime.admit(images, rows, targets, gen, share_prefix)
    now = time.perf_counter()
    for job in jobs:
        job.timings_ms.update(vision_ms=laps["vision_ms"], prefill_ms=laps["prefill_ms"], admitted_with=len(jobs),
                              _admitted=now)

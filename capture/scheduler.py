"""Continuous batching over the graph runtime: many jobs, one step bucket, rows refilled as they free.

A job is one image with its queries: its rows are admitted together (one vision pass, one shared
prompt prefix) into free cache rows while other rows keep decoding. After each step the host
reads the finished flags (the one small read per step); finished rows are collected and waiting
jobs take them. Jobs come from a source the scheduler polls: while rows are decoding it admits
only jobs that are ready, so the caller can preprocess the next images on CPU threads while the
GPU works on the current ones; with nothing decoding it waits for the next job.

Admission is bounded by tokens as well as rows: the jobs admitted between two steps hold at most
one vision replay's capacity in patches (Buckets.vision_capacity), so a 2240x2240 image is admitted
alone while a handful of small frames go together, and the decoding rows wait for at most about
one vision replay and its prefill.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from graphrt.backend import JobSource
from graphrt.decode import GenerationConfig
from graphrt.prefetch import NOT_READY
from graphrt.request import Batch, ImageJob

from .runtime import GraphRuntime


def run_jobs(runtime: GraphRuntime, source, gen: GenerationConfig, batch: int,
             share_prefix: bool = True) -> Iterator[ImageJob]:
    """Yields each job, its rows' results and `timings_ms` set, as soon as all its rows are done.

    `source`: an iterable of jobs or an object with poll()/wait() (graphrt.backend.JobFeed or
    JobSource). `batch` is the step bucket (a captured batch size); a job must have at most
    `batch` rows. A row's sampling stream is its `index`."""
    if batch not in runtime.buckets.batch_sizes:
        raise ValueError(f"batch {batch} is not a captured batch size {runtime.buckets.batch_sizes}")
    if not hasattr(source, "poll"):
        source = JobSource(source)
    waiting: ImageJob | None = None
    free = list(range(batch))
    live: dict[int, tuple[ImageJob, int]] = {}  # cache row -> (job, row of the job)
    runtime.begin()
    exhausted = False
    while True:
        admitted: list[ImageJob] = []
        while not exhausted:
            if waiting is None:
                waiting = source.wait() if not live and not admitted else source.poll()
                if waiting is NOT_READY:
                    waiting = None
                    break
                if waiting is None:
                    exhausted = True
                    break
                if len(waiting.rows) > batch:
                    raise ValueError(f"a job of {len(waiting.rows)} rows does not fit batch {batch}")
            if len(waiting.rows) > len(free) - sum(len(j.rows) for j in admitted):
                break
            if admitted and waiting.image_count + sum(j.image_count for j in admitted) > runtime.buckets.max_batch:
                break  # one vision pass takes at most max_batch images (exemplars count)
            if admitted and patches(waiting) + sum(patches(j) for j in admitted) > runtime.buckets.vision_capacity:
                break  # token budget: one admission is one vision replay's worth of patches
            admitted.append(waiting)
            waiting = None
        if admitted:
            _admit(runtime, admitted, free, live, gen, share_prefix)
            if runtime.pipe.merged:  # the prefill ran the first round: rows it finished leave before a step
                yield from _collect(runtime, batch, live, free)
                continue
        if not live:
            return
        runtime.step(batch)
        yield from _collect(runtime, batch, live, free)


def _collect(runtime: GraphRuntime, batch: int, live: dict, free: list[int]) -> Iterator[ImageJob]:
    """Finished rows out of `live` into `free` (one read of the flags); yields each job whose rows are all done."""
    finished = runtime.finished(batch)
    done = [t for t in live if finished[t]]
    if not done:
        return
    now = time.perf_counter()
    for target, result in zip(done, runtime.collect(done)):
        job, row = live.pop(target)
        job.rows[row].result = result
        free.append(target)
        if all(r is not None for r in job.results):
            job.timings_ms["decode_ms"] = round((now - job.timings_ms.pop("_admitted")) * 1000, 3)
            job.timings_ms["steps"] = max(r.steps for r in job.results)
            yield job
    free.sort()


def patches(job: ImageJob) -> int:
    """Vision patches of a job: its image and every exemplar of its rows."""
    return job.image.num_patches + sum(ex.num_patches for row in job.rows for ex in row.exemplars)


def _admit(runtime, jobs: list[ImageJob], free: list[int], live: dict, gen: GenerationConfig,
           share_prefix: bool) -> None:
    targets = []
    for job in jobs:
        for r, row in enumerate(job.rows):
            row.result = None
            targets.append(free.pop(0))
            live[targets[-1]] = (job, r)
    laps = runtime.admit(Batch.of(jobs), targets, gen, share_prefix)
    now = time.perf_counter()
    for job in jobs:
        job.timings_ms.update(vision_ms=laps["vision_ms"], prefill_ms=laps["prefill_ms"], admitted_with=len(jobs),
                              _admitted=now)

"""The CUDA-graph backend: image jobs through the graph runtime (graphrt.backend's interface).

A batch in flight holds the runtime's buffers (rows [0, n) of the smallest fitting step bucket);
any later start on the runtime displaces it, and a displaced batch refuses to go on (pause it
first: its rows' device state and KV are copied out and written back on resume).
"""

from __future__ import annotations

import dataclasses

from graphrt.backend import Backend, Decode
from graphrt.decode import GenerationConfig, RowResult
from graphrt.errors import InputError
from graphrt.request import Batch, ImageJob

from .buckets import Buckets
from .runtime import GraphRuntime
from .scheduler import run_jobs


class GraphDecode(Decode):
    def __init__(self, runtime: GraphRuntime, jobs: list[ImageJob], timings_ms: dict):
        super().__init__(jobs, timings_ms)
        self.runtime = runtime
        self.targets = list(range(sum(len(job.rows) for job in jobs)))
        self.batch = Buckets.fit(runtime.buckets.batch_sizes, len(self.targets))
        runtime.begin(owner=self)

    def _step(self) -> None:
        self._check_owner()
        self.runtime.step(self.batch)
        self.done = self.runtime.all_done()  # the one wait per step (on the read-back copy)

    def _results(self) -> list[RowResult]:
        self._check_owner()
        self.runtime.last_timings_ms = self.timings_ms
        results = self.runtime.collect(self.targets)
        self.runtime.owner = None
        return results

    def pause(self) -> tuple[dict, dict]:
        self._check_owner()
        tensors = self.runtime.snapshot(self.targets)
        self.runtime.owner = None
        return tensors, {"batch": self.batch, "done": self.done}

    def _check_owner(self) -> None:
        if self.runtime.owner is not self:
            raise InputError("this generation was displaced by another call on the engine; pause() it first")


class GraphBackend(Backend):
    name = "graphs"

    def __init__(self, runtime: GraphRuntime, share_prefix: bool = True):
        super().__init__(runtime.model.device, runtime.buckets.max_batch)
        self.runtime = runtime
        self.share_prefix = share_prefix

    def unsupported_config(self, gen: GenerationConfig, temperatures=()) -> str | None:
        return self.runtime.unsupported_config(gen, temperatures)

    def unsupported(self, jobs: list[ImageJob], gen: GenerationConfig) -> str | None:
        return self.runtime.unsupported(Batch.of(jobs), gen)

    def unsupported_job(self, job: ImageJob) -> str | None:
        return self.runtime.unsupported_job(Batch.of([job]))

    def start(self, jobs: list[ImageJob], gen: GenerationConfig) -> GraphDecode:
        decode = GraphDecode(self.runtime, jobs, {})
        decode.timings_ms = self.runtime.admit(Batch.of(jobs), decode.targets, gen, self.share_prefix)
        decode.done = self.runtime.prefill_done()  # a merged first round may have finished every row
        return decode

    def resume(self, jobs: list[ImageJob], gen: GenerationConfig, tensors: dict, extra: dict) -> GraphDecode:
        decode = GraphDecode(self.runtime, jobs, {})
        decode.batch, decode.done = extra["batch"], extra["done"]
        self.runtime.restore(tensors, decode.targets)
        return decode

    def stream(self, feed, gen: GenerationConfig):
        yield from run_jobs(self.runtime, feed, gen, self.max_batch, self.share_prefix)

    def status(self) -> dict:
        rt = self.runtime
        return {"attention": rt.kernel_name, "kernels": f"{rt.kernels} ({rt.kernels_reason})",
                "first_round": rt.first_round, "graphs": len(rt.graphs),
                "step_softmax": rt.pipe.softmax.describe() if rt.pipe.softmax is not None else "torch",
                "step_topk": rt.pipe.topk.describe() if rt.pipe.topk is not None else "torch",
                "graph_runtime": "on", "capture_s": round(rt.capture_seconds, 1),
                "graph_pool_mib": round(rt.pool_bytes / 2**20, 1), "buckets": dataclasses.asdict(rt.buckets)}

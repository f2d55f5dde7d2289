"""The eager backend: image jobs through the plain-PyTorch loop of generate.py (graphrt.backend's
interface). It runs anything the model can: any device and dtype, every generation mode; the
engine uses it when there are no graphs, or for a batch the graphs cannot take."""

from __future__ import annotations

import torch

from .attention import sdpa
from .backend import Backend, Decode
from .decode import GenerationConfig, RowResult
from .generate import EagerBatch, EagerDecoder
from .processor import ProcessedImage
from .request import Batch, ImageJob
from .timing import StageClock
from .vision import vision_geometry


@torch.no_grad()
def encode_images(model, images: list[ProcessedImage]) -> list[torch.Tensor]:
    """All images in one packed vision call; returns LM-width embeddings per image."""
    vision = model.cfg.vision
    geo = vision_geometry([im.grid for im in images], vision, model.device)
    pixels = torch.cat([im.pixels for im in images]).to(model.device)
    out = model.encode_images(pixels, geo, sdpa.vision_attention)
    merge = vision.merge_kernel_size[0] * vision.merge_kernel_size[1]
    return list(out.split([im.num_patches // merge for im in images]))


class EagerDecode(Decode):
    def __init__(self, decoder: EagerDecoder, jobs: list[ImageJob], timings_ms: dict):
        super().__init__(jobs, timings_ms)
        self.decoder = decoder
        self.done = decoder.done

    def _step(self) -> None:
        self.decoder.step()
        self.done = self.decoder.done

    def _results(self) -> list[RowResult]:
        return self.decoder.results

    def pause(self) -> tuple[dict, dict]:
        return self.decoder.state_dict()


class EagerBackend(Backend):
    name = "eager"

    def __init__(self, model, max_batch: int, share_prefix: bool = True, graphs_off: str | None = None):
        super().__init__(model.device, max_batch)
        self.model = model
        self.share_prefix = share_prefix
        self.graphs_off = graphs_off  # why the engine has no graphs (status), None when it has them

    @torch.no_grad()
    def start(self, jobs: list[ImageJob], gen: GenerationConfig) -> EagerDecode:
        clock = StageClock(self.device)
        batch = self.batch(jobs)
        clock.lap("vision_ms")
        # the first round inside the prefill, as NVIDIA's loop and the graph runtime's default
        decoder = EagerDecoder(self.model, sdpa.lm_attention, batch, gen, merged=True)
        clock.lap("prefill_ms")
        return EagerDecode(decoder, jobs, clock.laps)

    def resume(self, jobs: list[ImageJob], gen: GenerationConfig, tensors: dict, extra: dict) -> EagerDecode:
        rows = [r for job in jobs for r in job.rows]
        batch = EagerBatch(rows, [()] * len(rows))  # the KV holds the images
        decoder = EagerDecoder.from_state(self.model, sdpa.lm_attention, batch, gen, tensors, extra)
        return EagerDecode(decoder, jobs, {})

    def stream(self, feed, gen: GenerationConfig):
        """Micro-batches of at most max_batch rows, whole jobs each, in feed order."""
        chunk: list[ImageJob] = []
        while (job := feed.wait()) is not None:
            if chunk and sum(len(j.rows) for j in chunk) + len(job.rows) > self.max_batch:
                yield from self._run_chunk(chunk, gen)
                chunk = []
            chunk.append(job)
        if chunk:
            yield from self._run_chunk(chunk, gen)

    def _run_chunk(self, jobs: list[ImageJob], gen: GenerationConfig):
        self.run(jobs, gen)
        yield from jobs

    def batch(self, jobs: list[ImageJob]) -> EagerBatch:
        """The jobs' rows with their images encoded (one vision call); rows of one image share its
        prompt prefix (it ends at the query image's `</img>`, before any exemplar, so rows with other
        exemplars share it too)."""
        batch = Batch.of(jobs)
        return EagerBatch.of(batch, encode_images(self.model, batch.images), self.share_prefix)

    def status(self) -> dict:
        return {"attention": "sdpa (dense mask, eager)", "kernels": "torch (eager)", "graphs": 0,
                "graph_runtime": f"off ({self.graphs_off})", "capture_s": 0.0, "graph_pool_mib": 0.0, "buckets": None}

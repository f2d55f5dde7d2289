"""Run a batch of requests as graph replays: vision -> prefill -> MTP steps until every row is done.

The host pads the batch up to the smallest fitting bucket, fills the small input buffers, replays,
and reads one flag per step. Without CUDA (or with use_graphs=False) the same stage bodies run
directly, which is how the CPU tests check the static path against the eager one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from graphrt.attention.varlen import select_kernel
from graphrt.generate import GenerationConfig, RowResult, context_budget
from graphrt.processor import ProcessedImage
from graphrt.prompt import Prompt
from graphrt.timing import StageClock
from graphrt.vision import vision_geometry

from .buckets import Buckets
from .graphs import GraphSet
from .pipeline import StaticPipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphRow:
    prompt: Prompt
    image: int  # index into the batch's image list (several rows may share one image)
    temperature: float | None = None
    max_new_tokens: int | None = None  # None: the generation config's


class GraphRuntime:
    def __init__(self, model, buckets: Buckets, generation: GenerationConfig, attention: str = "auto",
                 strict: bool = False, use_graphs: bool | None = None, sampling_graphs: bool = False,
                 window_plan: str = "shifted"):
        self.model, self.buckets, self.generation = model, buckets, generation
        self.kernel_name, kernel = select_kernel(attention, model.device, strict, model.dtype)
        self.use_graphs = (model.device.type == "cuda") if use_graphs is None else use_graphs
        if self.use_graphs and self.kernel_name == "emulated":
            raise ValueError("the emulated attention kernel cannot be captured in CUDA graphs (it reads lengths "
                             "on the host); use fp16/bf16 on CUDA, or use_graphs=False")
        sample = sampling_graphs or generation.sampling.temperature > 0
        self.pipe = StaticPipeline(model, buckets, kernel, generation.sampling, generation.mtp, sample, window_plan)
        self.graphs = GraphSet()
        self.capture_seconds = 0.0
        self.pool_bytes = 0
        self.last_timings_ms: dict[str, float] = {}
        self._geometry: dict[tuple[int, int], tuple] = {}

    # ------------------------------------------------------------------ capture

    def warmup(self, progress: bool = True) -> None:
        """Capture every bucket's graphs, largest first so the shared pool is sized once."""
        if not self.use_graphs:
            return
        plan = self.buckets.expand()
        keys = [("vision", *k) for k in plan["vision"]] + [("prefill", *k) for k in plan["prefill"]]
        keys += [("step", *k) for k in plan["step"]]
        keys.sort(key=lambda k: -int(np.prod(k[1:])))
        before = torch.cuda.memory_reserved()
        t0 = time.perf_counter()
        with torch.no_grad():
            for key in tqdm(keys, desc="capturing CUDA graphs", unit="graph", disable=not progress, leave=False):
                self.pipe.reset_state()
                self.graphs.capture(key, lambda key=key: self._body(key))
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        self.pool_bytes = torch.cuda.memory_reserved() - before
        self.pipe.reset_state()

    def _body(self, key: tuple) -> None:
        stage, *dims = key
        getattr(self.pipe, stage)(*dims)

    def _run(self, key: tuple) -> None:
        if self.use_graphs:
            if key not in self.graphs:
                raise RuntimeError(f"no graph captured for {key}; call warmup() first")
            self.graphs.replay(key)
        else:
            with torch.no_grad():
                self._body(key)

    # ------------------------------------------------------------------ requests

    def unsupported(self, images: list[ProcessedImage], rows: list[GraphRow], gen: GenerationConfig) -> str | None:
        """Why this batch cannot run on the graphs (None when it can)."""
        b = self.buckets
        if gen.mode != "fast":
            return f"generation mode {gen.mode!r} (graphs run 'fast' only)"
        if gen.sampling != self.generation.sampling or gen.mtp != self.generation.mtp:
            return "sampling settings differ from the captured ones"
        if not self.pipe.sample and (gen.sampling.temperature > 0 or any((r.temperature or 0) > 0 for r in rows)):
            return "sampling requested but only greedy graphs were captured"
        longest = max(r.max_new_tokens or gen.max_new_tokens for r in rows)
        if longest > b.max_new_tokens:
            return f"max_new_tokens {longest} > bucket limit {b.max_new_tokens}"
        if max(len(rows), len(images)) > b.max_batch:
            return f"batch of {max(len(rows), len(images))} > largest bucket {b.max_batch}"
        if max(im.num_patches for im in images) > b.max_patches:
            return f"image of {max(im.num_patches for im in images)} patches > largest bucket {b.max_patches}"
        if max(len(r.prompt.ids) - 1 for r in rows) > b.max_prefill:
            return f"prompt of {max(len(r.prompt.ids) for r in rows)} tokens > largest prefill bucket {b.max_prefill}"
        return None

    def run(self, images: list[ProcessedImage], rows: list[GraphRow], gen: GenerationConfig) -> list[RowResult]:
        reason = self.unsupported(images, rows, gen)
        if reason:
            raise ValueError(f"batch does not fit the graphs: {reason}")
        b = self.buckets
        bv = Buckets.fit(b.batch_sizes, len(images))
        p = Buckets.fit(b.patch_budgets, max(im.num_patches for im in images))
        bb = Buckets.fit(b.batch_sizes, len(rows))
        t = Buckets.fit(b.prefill_lengths, max(len(r.prompt.ids) - 1 for r in rows))
        budgets = [context_budget(self.model.cfg, len(r.prompt.ids), r.max_new_tokens or gen.max_new_tokens)
                   for r in rows]

        timer = StageClock(self.model.device)
        self._fill_vision(images, bv, p)
        timer.lap("vision_input_ms")
        self._run(("vision", bv, p))
        timer.lap("vision_ms")
        self._fill_prefill(rows, bb, t, p, budgets, gen)
        timer.lap("prefill_input_ms")
        self._run(("prefill", bb, t))
        timer.lap("prefill_ms")
        steps = 0
        while not bool(self.pipe.all_done):  # the one device->host read per step
            self._run(("step", bb))
            steps += 1
        timer.lap("decode_ms")
        self.last_timings_ms = dict(timer.laps, steps=steps, bucket_vision=(bv, p), bucket_prefill=(bb, t))

        n = len(rows)
        out = self.pipe.out_tokens[:n].cpu()
        n_gen, row_steps, ended = self.pipe.n_gen[:n].tolist(), self.pipe.steps[:n].tolist(), self.pipe.ended[:n].tolist()
        return [RowResult(tokens=out[i, : n_gen[i]].tolist(), stop_reason="end" if ended[i] else "max_new_tokens",
                          steps=row_steps[i]) for i in range(n)]

    # ------------------------------------------------------------------ input buffers

    def _grid_geometry(self, grid: tuple[int, int]):
        if grid not in self._geometry:
            geo = vision_geometry([grid], self.model.cfg.vision, self.model.device)
            pos = self.model.vision.position_embedding(grid)
            self._geometry[grid] = (geo.cos, geo.sin, geo.merge_index.cpu().numpy(), pos)
        return self._geometry[grid]

    def _fill_vision(self, images: list[ProcessedImage], bv: int, p: int) -> None:
        pipe, dtype = self.pipe, self.model.dtype
        pixels = torch.zeros(bv * p, pipe.pixels.shape[1], dtype=dtype)
        merge = np.zeros(bv * p, dtype=np.int64)
        used = np.full(bv, p, dtype=np.int32)
        for i, im in enumerate(images):
            n, start = im.num_patches, i * p
            pixels[start : start + n] = im.pixels.reshape(n, -1).to(dtype)
            cos, sin, order, pos = self._grid_geometry(im.grid)
            pipe.cos[start : start + n].copy_(cos)
            pipe.sin[start : start + n].copy_(sin)
            pipe.pos[start : start + n].copy_(pos)
            merge[start : start + n] = order + start
            merge[start + n : start + p] = start
            used[i] = n
        for i in range(len(images), bv):
            merge[i * p : (i + 1) * p] = i * p
        pipe.pixels[: bv * p].copy_(pixels)
        pipe.merge_index[: bv * p].copy_(torch.from_numpy(merge))
        pipe.v_seqused[:bv].copy_(torch.from_numpy(used))

    def _fill_prefill(self, rows: list[GraphRow], bb: int, t: int, p: int, budgets: list[int],
                      gen: GenerationConfig) -> None:
        pipe, vocab = self.pipe, self.pipe.vocab
        ids = np.zeros(bb * t, dtype=np.int64)
        is_image = np.zeros(bb * t, dtype=bool)
        image_row = np.zeros(bb * t, dtype=np.int64)
        positions = np.zeros(bb * t, dtype=np.int64)
        slots = np.full(bb * t, pipe.dead, dtype=np.int64)
        seqused = np.ones(bb, dtype=np.int32)
        seen = np.full((bb, pipe.p_seen.shape[1]), vocab, dtype=np.int64)  # full rows: contiguous copy
        last = np.zeros(bb, dtype=np.int64)
        budget = np.ones(bb, dtype=np.int64)
        padding = np.ones(bb, dtype=bool)
        temps = np.zeros(bb, dtype=np.float32)
        tokens_per_image = p // 4
        for r, row in enumerate(rows):
            prompt = row.prompt.ids
            m = len(prompt) - 1
            base = r * t + (t - m)  # right-aligned, so causal masks align bottom-right
            ids[base : base + m] = prompt[:-1]
            positions[base : base + m] = np.arange(m)
            slots[base : base + m] = np.arange(m)
            s0, ni = base + row.prompt.image_start, row.prompt.image_tokens
            is_image[s0 : s0 + ni] = True
            image_row[s0 : s0 + ni] = row.image * tokens_per_image + np.arange(ni)
            seqused[r], last[r], budget[r], padding[r] = m, prompt[-1], budgets[r], False
            seen[r, : len(prompt)] = prompt
            temps[r] = gen.sampling.temperature if row.temperature is None else row.temperature
        for r in range(len(rows), bb):  # padding rows: one token in slot 0, finished from the start
            slots[r * t + t - 1] = 0
        for buf, arr in ((pipe.p_ids, ids), (pipe.p_is_image, is_image), (pipe.p_image_row, image_row),
                         (pipe.p_positions, positions), (pipe.p_slots, slots)):
            buf[: bb * t].copy_(torch.from_numpy(arr))
        pipe.p_seen[:bb].copy_(torch.from_numpy(seen))
        for buf, arr in ((pipe.p_seqused, seqused), (pipe.p_last, last), (pipe.p_budget, budget),
                         (pipe.p_padding_row, padding), (pipe.p_temperature, temps)):
            buf[:bb].copy_(torch.from_numpy(arr))

"""Requests as graph replays: vision -> prefill -> MTP steps, with the host filling small input
buffers, replaying, and reading one small tensor per step.

Primitives (the scheduler in scheduler.py builds continuous batching from them):
    begin()                     every row finished (free)
    admit(images, rows, target) vision of the images, prefill of the rows into cache rows `target`
                                (rows of one image share its prompt prefix: prefilled once)
    step(B) / finished(B)       one MTP step of rows [0, B) / which rows are done
    collect(target)             tokens and stop reasons of those rows
(After a step or an admission the rows' facts are copied to the host behind the replay
(capture/readback.py); the host waits on that copy, and collect reads it.)
`run()` is one batch from start to end. Without CUDA (or with use_graphs=False) the same stage
bodies run directly, which is how the CPU tests check the static path against the eager one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from graphrt.decode import GenerationConfig, RowResult, context_budget, draw_seed
from graphrt.errors import OptionError
from graphrt.kernels import select_kernels
from graphrt.processor import ProcessedImage
from graphrt.request import Batch, Row
from graphrt.timing import StageClock

from .buckets import Buckets
from .graphs import GraphSet
from .inputs import StageInputs
from .pipeline import StaticPipeline
from .readback import ReadBack
from .varlen import select_kernel

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _Segment:
    """Prompt tokens [start, end) of one row, prefilled into cache row `target`; `images`: the
    batch image of each of its prompt's images. `window`: the segment also forwards the last prompt
    token (slot `end`) and the row's first MTP window, and takes its first step's tokens
    (first_round="merged"); the state it seeds is the same either way."""
    row: Row
    images: tuple[int, ...]
    target: int
    start: int
    end: int
    budget: int
    window: bool = False

    @property
    def stop(self) -> int:
        """End of the prompt tokens this segment forwards."""
        return self.end + self.window


# First MTP round: "merged" runs it inside the prefill replay (one forward of prompt + window, as
# NVIDIA's loop does; one weight read fewer per request), "separate" as the first step replay.
# GRAPHRT_FIRST_ROUND overrides GraphRuntime's / EngineOptions' first_round (A/B runs).
FIRST_ROUNDS = ("merged", "separate")


def first_round_choice(configured: str) -> str:
    how = os.environ.get("GRAPHRT_FIRST_ROUND", configured)
    if how not in FIRST_ROUNDS:
        raise OptionError(f"first_round (or GRAPHRT_FIRST_ROUND) must be merged or separate, not {how!r}")
    return how


class GraphRuntime:
    def __init__(self, model, buckets: Buckets, generation: GenerationConfig, attention: str = "auto",
                 strict: bool = False, use_graphs: bool | None = None, sampling_graphs: bool = False,
                 window_plan: str = "shifted", kernels: str = "auto", first_round: str = "merged"):
        self.model, self.buckets, self.generation = model, buckets, generation
        self.kernel_name, kernel = select_kernel(attention, model.device, strict, model.dtype)
        # fused: the Triton layer/step kernels of graphrt.kernels; torch: plain ops (the eager path's)
        self.kernels, self.kernels_reason = select_kernels(kernels, model.device, model.dtype, strict)
        self.use_graphs = (model.device.type == "cuda") if use_graphs is None else use_graphs
        if self.use_graphs and self.kernel_name == "emulated":
            raise ValueError("the emulated attention kernel cannot be captured in CUDA graphs (it reads lengths "
                             "on the host); use fp16/bf16 on CUDA, or use_graphs=False")
        sample = sampling_graphs or generation.sampling.temperature > 0
        self.first_round = first_round_choice(first_round)
        if self.first_round == "merged" and self.kernels == "torch" and self.kernel_name == "flash_attn":
            # the torch kernel set's window rule merges two calls by their log-sum-exp
            if strict:
                raise RuntimeError("first_round='merged' with kernels='torch' needs a varlen kernel with "
                                   "log-sum-exp output (torch-fa2 or emulated), not flash_attn")
            log.info("first_round: separate (flash_attn returns no log-sum-exp for the torch kernel set)")
            self.first_round = "separate"
        self.pipe = StaticPipeline(model, buckets, kernel, generation.sampling, generation.mtp, sample, window_plan,
                                   self.kernels, self.first_round)
        self.inputs = StageInputs(model, self.pipe)
        self.readback = ReadBack(self.pipe)  # finished rows' facts, copied behind each replay
        self._free_pending = False  # begin()'s "every row free", applied before the next prefill
        self.graphs = GraphSet()
        self.capture_seconds = 0.0
        self.pool_bytes = 0
        self.last_timings_ms: dict[str, float] = {}
        self.owner = None  # the capture.backend.GraphDecode (a batch in flight) holding the buffers

    # ------------------------------------------------------------------ capture

    def warmup(self, progress: bool = True) -> None:
        """Capture every bucket's graphs, largest first so the shared pool is sized once.

        Every body first runs uncaptured (lazy inits, cuBLAS handles, Triton compiles) on a side
        stream, and the blocks those runs cached are released before the first capture: otherwise
        the warm-up's activations stay reserved beside the pool that holds the same activations
        (the footprint of the largest replay, twice)."""
        if not self.use_graphs:
            return
        plan = self.buckets.expand()
        keys = [("vision", *k) for k in plan["vision"]] + [("prefill", *k) for k in plan["prefill"]]
        keys += [("step", *k) for k in plan["step"]]
        keys.sort(key=lambda k: -int(np.prod(k[1:])))
        t0 = time.perf_counter()
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for key in tqdm(keys, desc="warming up graph bodies", unit="body", disable=not progress, leave=False):
                    self.pipe.reset_state()
                    for _ in range(2):
                        self._body(key)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_reserved()
            for key in tqdm(keys, desc="capturing CUDA graphs", unit="graph", disable=not progress, leave=False):
                self.pipe.reset_state()
                self.graphs.capture(key, lambda key=key: self._body(key), warmup=0)
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - t0
        self.pool_bytes = torch.cuda.memory_reserved() - before
        self.pipe.reset_state()
        self.readback.invalidate()

    def _body(self, key: tuple) -> None:
        stage, *dims = key
        self.pipe.stages[stage](*dims)

    def _run(self, key: tuple) -> None:
        self.readback.invalidate()
        if self.use_graphs:
            if key not in self.graphs:
                raise RuntimeError(f"no graph captured for {key}; call warmup() first")
            self.graphs.replay(key)
        else:
            with torch.no_grad():
                self._body(key)

    # ------------------------------------------------------------------ requests

    def unsupported(self, batch: Batch, gen: GenerationConfig) -> str | None:
        """Why this batch cannot run on the graphs (None when it can)."""
        b, rows = self.buckets, batch.rows
        reason = self.unsupported_config(gen, [r.temperature for r in rows], [r.max_new_tokens for r in rows])
        if reason:
            return reason
        if max(len(rows), len(batch.images)) > b.max_batch:
            return f"batch of {max(len(rows), len(batch.images))} > largest bucket {b.max_batch}"
        return self.unsupported_job(batch)

    def unsupported_config(self, gen: GenerationConfig, temperatures=(), max_new_tokens=()) -> str | None:
        """Why these generation settings (and per-row temperatures / token caps) cannot run on the graphs."""
        if gen.mode != "fast":
            return f"generation mode {gen.mode!r} (graphs run 'fast' only)"
        if dataclasses.replace(gen.sampling, temperature=0.0) != dataclasses.replace(self.generation.sampling,
                                                                                     temperature=0.0) \
                or gen.mtp != self.generation.mtp:
            return "sampling settings (top-p, top-k, repetition penalty, MTP) differ from the captured ones"
        if not self.pipe.sample and (gen.sampling.temperature > 0 or any((t or 0) > 0 for t in temperatures)):
            return "sampling requested but only greedy graphs were captured (EngineOptions.sampling_graphs)"
        longest = max([c or gen.max_new_tokens for c in max_new_tokens] or [gen.max_new_tokens])
        if longest > self.buckets.max_new_tokens:
            return f"max_new_tokens {longest} > bucket limit {self.buckets.max_new_tokens}"
        return None

    def unsupported_job(self, batch: Batch) -> str | None:
        b, images, rows = self.buckets, batch.images, batch.rows
        if len(images) > b.max_batch:
            return f"{len(images)} images (exemplars included) > largest bucket {b.max_batch}"
        if images and max(im.num_patches for im in images) > b.max_patches:
            return f"image of {max(im.num_patches for im in images)} patches > largest bucket {b.max_patches}"
        reserve = self.pipe.block if self.pipe.merged else 0  # a merged prefill's window slots
        if max(len(r.prompt.ids) - 1 for r in rows) + reserve > b.max_prefill:
            return (f"prompt of {max(len(r.prompt.ids) for r in rows)} tokens > largest prefill bucket {b.max_prefill}"
                    + (f" less the {reserve} slots of the merged first round's window" if reserve else ""))
        for chunk in self._chunks(batch):
            if chunk["patches"] > b.vision_capacity:
                return (f"an image with its rows' exemplars holds {chunk['patches']} patches > one vision replay's "
                        f"capacity {b.vision_capacity} (Buckets.vision_budget)")
        return None

    def run(self, batch: Batch, gen: GenerationConfig, share_prefix: bool = True) -> list[RowResult]:
        """One batch from vision to the last step (rows [0, n) of the smallest fitting bucket)."""
        reason = self.unsupported(batch, gen)
        if reason:
            raise ValueError(f"batch does not fit the graphs: {reason}")
        bb = Buckets.fit(self.buckets.batch_sizes, len(batch.rows))
        targets = list(range(len(batch.rows)))
        self.begin()
        laps = self.admit(batch, targets, gen, share_prefix)
        clock = StageClock(self.model.device)
        steps = self.decode(bb)
        clock.lap("decode_ms")
        self.last_timings_ms = dict(laps, **clock.laps, steps=steps)
        return self.collect(targets)

    def begin(self, owner=None) -> None:
        """A fresh batch: every row free (finished). `owner`: the batch in flight now holding the
        buffers (any later begin() displaces it). The fill is launched by the next admission once
        its vision replay is queued (the vision does not read it; the host reaches the vision
        launch one launch sooner), or by any other use of the row state before that."""
        self._free_pending = True
        self.readback.invalidate()
        self.owner = owner

    def _free_rows(self) -> None:
        if self._free_pending:
            self._free_pending = False
            self.pipe.finished.fill_(True)

    def decode(self, bb: int) -> int:
        """Steps of rows [0, bb) until all are finished; returns the step replays run (with the
        merged first round, one fewer than the rows' MTP rounds, and 0 when the prefill finished all)."""
        steps = 0
        if self.prefill_done():
            return steps
        while True:
            self.step(bb)
            steps += 1
            if self.all_done():  # the one wait per step
                return steps

    def step(self, bb: int) -> None:
        """One step replay of rows [0, bb), and their read-back copy queued behind it."""
        self._free_rows()
        self._run(("step", bb))
        self.readback.enqueue(bb)

    def all_done(self) -> bool:
        """Whether every row is finished after the last replay (waits for its read-back copy)."""
        if self.readback.rows:
            return self.readback.all_done()
        return bool(self.pipe.all_done)

    def prefill_done(self) -> bool:
        """Whether the last admission's merged first round finished every row (the read-back
        copy queued behind it; always False with the separate first round, which leaves every
        row to a step)."""
        return self.pipe.merged and self.all_done()

    def finished(self, bb: int) -> list[bool]:
        self._free_rows()
        if self.readback.covers(range(bb)):
            return self.readback.field("finished", list(range(bb))).tolist()
        return self.pipe.finished[:bb].tolist()

    def admit(self, batch: Batch, targets: list[int], gen: GenerationConfig, share_prefix: bool = True) -> dict:
        """Vision of the batch's images, then its rows' prompts into cache rows `targets` (other rows keep
        decoding). Rows of one image share its prompt prefix when share_prefix is set. Returns
        per-stage milliseconds.

        Admissions whose images exceed one vision replay's patch capacity run in chunks of whole
        images (each image with its rows and their exemplars): vision of a chunk, then its prefill."""
        if gen.seed is None:  # one seed for the whole admission (its prefill passes agree)
            gen = dataclasses.replace(gen, seed=draw_seed() if self.pipe.sample else 0)
        total: dict = {}
        chunks = self._chunks(batch)
        for chunk in chunks:
            laps = self._admit_chunk(batch.part(chunk["images"], chunk["rows"]), [targets[i] for i in chunk["rows"]],
                                     gen, share_prefix)
            for name, value in laps.items():  # times and counts add up; the first chunk's buckets
                total[name] = total.get(name, 0) + value if isinstance(value, (int, float)) else total.get(name, value)
        total["admission_chunks"] = len(chunks)
        return total

    def _chunks(self, batch: Batch) -> list[dict]:
        """Rows grouped by their query image (with every image their rows name), then the groups
        packed greedily, in order, into chunks of at most the vision capacity in patches."""
        images, groups = batch.images, {}
        for i, (image, *extra) in enumerate(batch.row_images):
            g = groups.setdefault(image, {"images": [image], "rows": []})
            g["rows"].append(i)
            g["images"] += [e for e in extra if e not in g["images"]]
        capacity, chunks = self.buckets.vision_capacity, []
        for g in groups.values():
            patches = sum(images[i].num_patches for i in g["images"])
            last = chunks[-1] if chunks else None
            if last is not None and last["patches"] + patches <= capacity:
                last["images"] += [i for i in g["images"] if i not in last["images"]]
                last["rows"] += g["rows"]
                last["patches"] += patches
            else:
                chunks.append(dict(g, patches=patches))
        for c in chunks:
            c["rows"].sort()
        return chunks

    def _admit_chunk(self, batch: Batch, targets: list[int], gen: GenerationConfig, share_prefix: bool) -> dict:
        rows, query_image = batch.rows, [images[0] for images in batch.row_images]
        budgets = [context_budget(self.model.cfg, len(r.prompt.ids), r.max_new_tokens or gen.max_new_tokens)
                   for r in rows]
        clock = StageClock(self.model.device)
        base, (bv, p), passes = self._encode(batch.images)
        self._free_rows()  # begin()'s fill, behind the vision launch
        clock.lap("vision_ms")

        owner: dict[int, int] = {}  # image -> first row of that image
        members = []
        for i, image in enumerate(query_image):
            if share_prefix and image in owner:
                members.append(i)
            else:
                owner.setdefault(image, i)
        owners = {owner[query_image[i]] for i in members}
        first, second = [], []
        for i, (r, images, t, budget) in enumerate(zip(rows, batch.row_images, targets, budgets)):
            last = len(r.prompt.ids) - 1
            start = r.prompt.prefix_len if i in owners or i in members else 0
            # merged: the segment also forwards the last prompt token and the first window in its
            # bucket's last 6 slots (a prompt one token too long for that keeps its first round a step)
            window = self.pipe.merged and last + 1 - start + self.pipe.block <= self.buckets.max_prefill
            if i in owners or i in members:
                if i in owners:
                    first.append(_Segment(r, images, t, 0, r.prompt.prefix_len, budget))
                second.append(_Segment(r, images, t, start, last, budget, window))
            else:
                first.append(_Segment(r, images, t, 0, last, budget, window))
        prefill_passes = self._prefill(first, base, gen)
        if second:
            for i in members:
                self.readback.invalidate()
                self.pipe.share_prefix(targets[i], targets[owner[query_image[i]]], rows[i].prompt.prefix_len)
            prefill_passes += self._prefill(second, base, gen)
        # queued behind the prefill while it runs: prefill_done() and a batch that the merged
        # first round finished read it without a device read of their own
        self.readback.enqueue(max(targets) + 1)
        clock.lap("prefill_ms")
        return dict(clock.laps, bucket_vision=(bv, p), vision_passes=passes, prefill_passes=prefill_passes,
                    shared_rows=len(members))

    def _encode(self, images: list[ProcessedImage]):
        """Vision of all images -> (each image's first row in vision_out, the first pass's key, passes).

        Images share a vision bucket's equal-size slots, so a small image next to a large one
        would cost a whole large slot. Images are grouped by the patch bucket they fit (largest
        first; a group larger than its key's batch is cut), one replay per group. Every pass but
        the last moves its features to the feature rows of vision_out, past every replay's output,
        where the prefill reads them; the last pass is read where the graph wrote it."""
        b, pipe = self.buckets, self.pipe
        order = sorted(range(len(images)), key=lambda i: -images[i].num_patches)
        passes: list[tuple[list[int], tuple[int, int]]] = []
        for i in order:
            p = Buckets.fit(b.patch_budgets, images[i].num_patches)
            if passes and passes[-1][1][1] == p and b.fit_vision(len(passes[-1][0]) + 1, p) is not None:
                passes[-1] = (passes[-1][0] + [i], b.fit_vision(len(passes[-1][0]) + 1, p))
            else:
                passes.append(([i], b.fit_vision(1, p)))
        base = [0] * len(images)
        parked = pipe.exemplar_base
        for n, (members, (bv, p)) in enumerate(passes):
            self.inputs.fill_vision([images[i] for i in members], bv, p)
            self._run(("vision", bv, p))
            if n < len(passes) - 1:
                for slot, i in enumerate(members):
                    rows = images[i].num_patches // 4
                    pipe.vision_out[parked : parked + rows].copy_(pipe.vision_out[slot * p // 4 : slot * p // 4 + rows])
                    base[i], parked = parked, parked + rows
            else:
                for slot, i in enumerate(members):
                    base[i] = slot * p // 4
        return base, passes[0][1], len(passes)

    def _prefill(self, segments: list[_Segment], base: list[int], gen: GenerationConfig) -> int:
        """Segments grouped by their length bucket (longest first; a group beyond its key's batch
        is cut), one prefill replay per group. Returns the replays run."""
        b = self.buckets
        groups: list[tuple[list[_Segment], tuple[int, int]]] = []
        reserve = self.pipe.block if self.pipe.merged else 0  # the window slots of every segment
        for seg in sorted(segments, key=lambda s: -(s.stop - s.start)):
            t = Buckets.fit(b.prefill_lengths, seg.stop - seg.start + reserve)
            if groups and groups[-1][1][1] == t and b.fit_prefill(len(groups[-1][0]) + 1, t) is not None:
                groups[-1] = (groups[-1][0] + [seg], b.fit_prefill(len(groups[-1][0]) + 1, t))
            else:
                groups.append(([seg], b.fit_prefill(1, t)))
        for members, (bb, t) in groups:
            self.inputs.fill_prefill(members, bb, t, base, gen)
            self._run(("prefill", bb, t))
        return len(groups)

    def collect(self, targets: list[int]) -> list[RowResult]:
        """Tokens and stop reasons of the given cache rows (one device->host copy)."""
        pipe, n = self.pipe, len(targets)
        self._free_rows()
        if self.readback.covers(targets):  # copied behind the last replay: no device work here
            n_gen, steps, ended, limit = (self.readback.field(k, targets).tolist()
                                          for k in ("n_gen", "steps", "ended", "step_limit"))
            out = self.readback.field("out_tokens", targets)
        else:
            # Rows [0, n) (a whole batch) by slicing: no device allocation on the latency path.
            index = slice(0, n) if targets == list(range(n)) else torch.tensor(targets, device=self.model.device)
            n_gen, steps, ended, limit = (x[index].tolist() for x in (pipe.n_gen, pipe.steps, pipe.ended,
                                                                      pipe.step_limit))
            out = pipe.out_tokens[index].cpu().numpy()
        results = []
        for i in range(len(targets)):
            reason = "end" if ended[i] else "fixed_steps" if steps[i] >= limit[i] else "max_new_tokens"
            results.append(RowResult(tokens=out[i, : n_gen[i]].tolist(), stop_reason=reason, steps=steps[i]))
        return results

    # ------------------------------------------------------------------ pause / resume

    def snapshot(self, targets: list[int]) -> dict:
        """The device state of rows `targets` (KV included) as CPU tensors."""
        pipe = self.pipe
        self._free_rows()
        index = torch.tensor(targets, device=self.model.device)
        state = pipe.state.snapshot(index)
        width = int(state["cache_len"].max()) + 2 * pipe.block  # pending tokens and window sit above
        width = min(width, pipe.slots)
        state["cache_k"] = pipe.cache.k[:, index, :width].cpu()
        state["cache_v"] = pipe.cache.v[:, index, :width].cpu()
        return state

    def restore(self, state: dict, targets: list[int]) -> None:
        pipe = self.pipe
        self._free_rows()
        self.readback.invalidate()
        index = torch.tensor(targets, device=self.model.device)
        pipe.state.restore(state, index)
        width = state["cache_k"].shape[2]
        pipe.cache.k[:, index, :width] = state["cache_k"].to(self.model.device, pipe.cache.k.dtype)
        pipe.cache.v[:, index, :width] = state["cache_v"].to(self.model.device, pipe.cache.v.dtype)

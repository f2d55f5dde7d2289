"""Static buffers, allocated once for the largest bucket, and the three stage bodies graphs capture.

Each body reads only these buffers and writes only these buffers, with shapes fixed by its bucket:

    vision(B, P)   pixels/pos/rope of B image slots of P patches  -> vision_out
    prefill(B, T)  B right-aligned prompt segments + image rows of vision_out -> KV cache rows
                   p_target[:B] (any rows: fresh batches, refills of finished rows, shared-prefix
                   tails after a cached prefix), and the step state of those rows; with
                   first_round="merged", each segment's last 6 slots hold its first MTP window,
                   and segments flagged in p_window take their first step's tokens from it (the
                   stock loop's round 1: prompt + window in one forward)
    step(B)        one MTP step of rows [0, B): window forward, sampler, proposal, accept, state update

All per-row facts (cache length, accepted tokens, counts, finished flags, temperatures) live in
device tensors; the host fills small input buffers before a replay and reads `all_done` after.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from graphrt.mtp import MTPConfig, StepKind, accept, propose
from graphrt.sampler import SamplingConfig, choose, probabilities, uniforms

from .buckets import Buckets
from .ranges import PrefillRanges, StepKernelRanges, StepRanges, StepRangesLSE, VisionRanges
from .state import RowState
from .varlen import VarlenKernel


class StaticPipeline:
    def __init__(self, model, buckets: Buckets, kernel: VarlenKernel, sampling: SamplingConfig, mtp: MTPConfig,
                 sample: bool, window_plan: str = "shifted", kernels: str = "torch", first_round: str = "separate"):
        if window_plan not in ("shifted", "lse"):
            raise ValueError("window_plan must be 'shifted' or 'lse'")
        if kernels not in ("torch", "fused"):
            raise ValueError("kernels must be 'torch' or 'fused'")
        self.window_plan = window_plan  # torch kernels only; the fused step kernel needs no plan
        self.fused = kernels == "fused"
        if first_round not in ("merged", "separate"):
            raise ValueError("first_round must be 'merged' or 'separate'")
        self.merged = first_round == "merged"  # the first MTP round inside the prefill pass
        cfg = model.cfg
        self.model, self.buckets, self.kernel = model, buckets, kernel
        self.sampling, self.mtp, self.sample = sampling, mtp, sample
        self.ids = cfg.tokens
        self.block = blk = cfg.text.block_size
        self.vocab = cfg.text.vocab_size
        dev, dt = model.device, model.dtype
        bm, pm, tm = buckets.max_batch, buckets.max_patches, buckets.max_prefill
        # Inputs are sized by the largest replay of each stage (its token budget), not by
        # largest batch x largest size: a 25,600-patch image at batch 1 and 32 small images share them.
        vcap, pcap = buckets.vision_capacity, buckets.prefill_capacity
        self.slots = s = buckets.cache_slots(blk)
        self.dead = s - 1
        self.cache = model.llm.new_cache(bm, s)
        z = lambda *shape, dtype=torch.long: torch.zeros(*shape, dtype=dtype, device=dev)  # noqa: E731

        # vision inputs / output
        p, c, hd = cfg.vision.patch_size, cfg.vision.hidden_size, cfg.vision.head_dim
        # Pixels travel as uint8 in patch order; the vision body normalizes them (4x fewer bytes
        # to copy, and no float work on the CPU).
        self.pixels_u8 = z(vcap, 3 * p * p, dtype=torch.uint8)
        self.rgb_stage = z(pm * p * p * 3, dtype=torch.uint8)  # one image's HWC bytes before the patch gather
        self.pix_mean = torch.full((3 * p * p,), 0.5, dtype=torch.float32, device=dev)  # per column (channel)
        self.pix_std = torch.full((3 * p * p,), 0.5, dtype=torch.float32, device=dev)
        self.pos = z(vcap, c, dtype=dt)
        self.cos = z(vcap, hd // 2, dtype=torch.float32)
        self.sin = z(vcap, hd // 2, dtype=torch.float32)
        self.merge_index = z(vcap)
        self.v_seqused = torch.full((bm,), 4, dtype=torch.int32, device=dev)  # never above a bucket's P
        # Past every replay's output: feature rows where the images of earlier vision passes of
        # one admission wait while the next pass runs (an admission chunk holds at most vcap patches).
        self.exemplar_base = vcap // 4
        self.vision_out = z(2 * (vcap // 4), cfg.text.hidden_size, dtype=dt)

        # prefill inputs (prompt[:-1] right-aligned per row) and step-state seeds
        self.p_ids = z(pcap)
        self.p_is_image = z(pcap, dtype=torch.bool)
        self.p_image_row = z(pcap)
        self.p_positions = z(pcap)
        self.p_slots = torch.full((pcap,), self.dead, dtype=torch.long, device=dev)
        self.p_seqused = torch.ones(bm, dtype=torch.int32, device=dev)
        self.p_padding_row = z(bm, dtype=torch.bool)
        self.p_target = z(bm)  # cache row of each prefill segment
        # merged first round: the segment's window (its last 6 slots) takes its first step
        self.p_window = z(bm, dtype=torch.bool)
        # per-segment seeds of the rows a prefill fills (RowState's prompt-id set: pad = V)
        self.seed_inputs = RowState.seed_inputs(bm, tm + 1, self.vocab, dev)

        # per-row step state, declared once in capture/state.py; step() reads its fields as
        # attributes (self.pending, self.cache_len, ...), the same tensors
        widths = {"block": blk, "vocab": self.vocab + 1, "out": buckets.max_new_tokens + 2 * blk + 1}
        self.state = RowState.allocate(bm, widths, dev)
        vars(self).update(self.state.tensors())
        self.trash_col = self.out_tokens.shape[1] - 1
        self.all_done = z((), dtype=torch.bool)
        self.resets = 0  # reset_state() calls

        # constants
        self.arange_blk = torch.arange(blk, device=dev)
        self.rows = torch.arange(bm, device=dev)
        self.rows_blk = self.rows.repeat_interleave(blk)
        self.window_len = torch.full((bm,), blk, dtype=torch.int32, device=dev)
        self.mask_ids = torch.full((bm, blk - 1), self.ids.text_mask, dtype=torch.long, device=dev)
        self.window_index = (self.rows[:, None] * 2 * blk + blk + self.arange_blk[None]).reshape(-1)
        # the fused LM head's rows padded to a multiple of 8 (repeating the last) once, not by a cat per replay
        self.logits_index = {b: torch.cat([self.window_index[: b * blk], self.window_index[b * blk - 1:b * blk]
                                           .expand(-b * blk % 8)]) for b in buckets.batch_sizes}
        self.cu: dict[int, torch.Tensor] = {}
        for width in set(buckets.patch_budgets) | set(buckets.prefill_lengths) | {blk, s}:
            self.cu[width] = (torch.arange(bm + 1, device=dev) * width).to(torch.int32)
        self.end_k = torch.full((1,), bm * s, dtype=torch.long, device=dev)  # unread last cu_k entry
        self.rows_2blk = self.rows.repeat_interleave(2 * blk)
        self.step_attention = {}
        if self.fused:  # one split/merge pair (and its partial buffers) per step batch size
            from graphrt.kernels.step_attention import StepAttention  # lazy: triton is optional

            t = cfg.text
            for b in buckets.batch_sizes:
                self.step_attention[b] = StepAttention(b, blk, t.num_attention_heads, t.num_key_value_heads,
                                                       t.head_dim, dev)
        self.prologue = None  # the step's inputs in torch ops; the fused set: one kernel (GRAPHRT_STEP_PROLOGUE)
        if self.fused:
            from graphrt.kernels import step_prologue  # lazy: triton is optional

            if step_prologue.mode() == "kernel":
                llm = model.llm
                self.prologue = step_prologue.StepPrologue(llm.rotary, llm.embed_tokens.weight, s, self.dead)
        self.softmax = None  # torch.softmax; the fused set: many CTAs per row, checked bit-equal at build
        if self.fused and torch.device(dev).type == "cuda":
            from graphrt.kernels.step_softmax import StepSoftmax  # lazy: triton is optional

            self.softmax = StepSoftmax(dev, dt, self.vocab)
        self.topk = None  # the step's argmax + top-k lists: torch's; the fused set: step_topk's, checked at build
        if self.fused and torch.device(dev).type == "cuda":
            from graphrt.kernels.step_topk import StepTopK  # lazy: triton is optional

            self.topk = StepTopK(dev, dt, self.vocab, buckets.batch_sizes, self.mtp)
        # what a captured graph of each stage runs, keyed like the graphs: (stage, *bucket)
        self.stages = {"vision": self.vision, "prefill": self.prefill, "step": self.step}

    def reset_state(self) -> None:
        """Safe values for warm-up runs: lengths inside every bucket, every row already finished."""
        self.resets += 1  # StageInputs re-sends what it had left in the vision buffers
        self.state.reset()
        for t, v in ((self.p_seqused, 1), (self.v_seqused, 4), (self.p_slots, self.dead), (self.p_padding_row, True),
                     (self.p_window, False)):
            t.fill_(v)
        self.p_target.copy_(self.rows)

    # ------------------------------------------------------------------ stage bodies

    def vision(self, b: int, p: int) -> None:
        n = b * p
        geo = SimpleNamespace(cos=self.cos[:n], sin=self.sin[:n], merge_index=self.merge_index[:n])
        attend = VisionRanges(self.kernel, p, self.cu[p][: b + 1], self.v_seqused[:b])
        pixels = (self.pixels_u8[:n].float() / 255.0 - self.pix_mean) / self.pix_std  # as processor.normalize
        feats = self.model.vision(pixels, self.pos[:n], geo, attend)
        self.vision_out[: n // 4].copy_(self.model.projector(feats))

    def prefill(self, b: int, t: int) -> None:
        n, llm = b * t, self.model.llm
        emb = llm.embed(self.p_ids[:n])
        emb = torch.where(self.p_is_image[:n, None], self.vision_out[self.p_image_row[:n]], emb)
        target = self.p_target[:b]
        cu_k = torch.cat([target * self.slots, self.end_k]).to(torch.int32)  # segment i reads cache row target[i]
        used = self.p_seqused[:b]
        window = {}
        if self.merged:  # each segment's last 6 slots: its first MTP window (capture/inputs.py fills them)
            blk = self.block
            window = {"window": blk, "cu_w": self.cu[blk][: b + 1], "window_len": self.window_len[:b],
                      "cu_k_w": torch.cat([cu_k[:b] + (used - blk).clamp(min=0), cu_k[b:]]),
                      "seqused_prefix": (used - blk - 1).clamp(min=0)}
        ranges = PrefillRanges(self.kernel, t, self.slots, self.p_positions[:n], target[:, None].expand(b, t).reshape(-1),
                               self.p_slots[:n], self.cu[t][: b + 1], cu_k, used, **window)
        if not self.merged:
            llm(emb, ranges, self.cache, ranges, fused=self.fused)
            self._seed(b)
            return
        rows = (self.rows[:b, None] * t + t - blk + self.arange_blk[None]).reshape(-1)  # the windows' rows
        logits = llm(emb, ranges, self.cache, ranges, rows, fused=self.fused).view(b, blk, -1)
        self._seed(b)  # the state before round 1 (as a separate prefill leaves it), then round 1 on it
        self._first_round(b, logits, target, self.p_window[:b] & ~self.p_padding_row[:b])

    def _first_round(self, b: int, logits: torch.Tensor, target: torch.Tensor, windowed: torch.Tensor) -> None:
        """The step's sampler and tail on the windows of a merged prefill: state row r takes the
        tokens of the windowed segment that targets it. Then all_done over every row (free rows
        are finished), so the host can skip the first step replay when nothing is left."""
        hits = (self.rows[:, None] == target[None, :]) & windowed[None, :]  # [rows, segments]
        hit, src = hits.any(1), hits.int().argmax(1)
        temp = self.temperature[target]
        probs = probabilities(logits, self.seen[target, : self.vocab], temp if self.sample else None, self.sampling,
                              self.softmax)
        uniform = uniforms(self.noise_key[target], self.steps[target], self.block) if self.sample else None
        if self.fused:
            from graphrt.kernels import step_tail

            if step_tail.enabled():
                x0, lists = self._choose_and_lists(probs, temp, uniform)
                return step_tail.step_tail(self, b, probs, x0, self.ids, self.mtp, src=src, hit=hit, lists=lists)
        x0 = choose(probs, temp, uniform, sample=self.sample)
        self.torch_tail(b, probs, x0, src=src, hit=hit)

    def _choose_and_lists(self, probs: torch.Tensor, temp: torch.Tensor, uniform: torch.Tensor | None):
        """x0 and the top-k lists for the fused step tail: step_topk's argmax and lists where it is
        checked equal to torch's (greedy graphs take x0 from it too), else torch's (lists None)."""
        made = self.topk(probs) if self.topk is not None else None
        if made is None:
            return choose(probs, temp, uniform, sample=self.sample), None
        x0 = choose(probs, temp, uniform, sample=True) if self.sample else made[0]
        return x0, made[1:]

    def _seed(self, b: int) -> None:
        """Step state of the rows just prefilled: the last prompt token is the first step's
        accepted token. Other rows keep their state (they may be decoding)."""
        target, real = self.p_target[:b], ~self.p_padding_row[:b]
        hits = (self.rows[:, None] == target[None, :]) & real[None, :]  # [rows, segments]
        self.state.seed(self.seed_inputs, b, hits.any(1), hits.int().argmax(1))

    def share_prefix(self, dst: int, src: int, width: int) -> None:
        """Copy cache slots [0, width) of row src to row dst (a shared prompt prefix): two
        strided device copies, no allocation."""
        for buf in (self.cache.k, self.cache.v):
            buf[:, dst, :width].copy_(buf[:, src, :width])

    def _step_ranges(self, b, positions, acc_slots, w0, win_pos):
        """The step's key ranges for the varlen kernels (torch kernel set)."""
        blk = self.block
        common = dict(acc_rows=self.rows_blk[: b * blk], acc_slots=acc_slots.reshape(-1),
                      win_rows=self.rows_blk[: b * blk], cu_q=self.cu[blk][: b + 1],
                      cu_k=self.cu[self.slots][: b + 1], seqused_acc=w0.to(torch.int32))
        if self.window_plan == "shifted":  # window K/V one slot to the left (see ranges.py)
            return StepRanges(self.kernel, blk, self.slots, positions, win_slots=win_pos.reshape(-1),
                              last_rows=self.rows[:b], last_slots=w0 - 1,
                              seqused_win=(w0 + blk - 1).to(torch.int32), **common)
        cu_window = torch.cat([self.rows[:b] * self.slots + w0, self.cu[self.slots][b : b + 1].long()])
        return StepRangesLSE(self.kernel, blk, self.slots, positions, win_slots=(win_pos + 1).reshape(-1),
                             cu_k_window=cu_window.to(torch.int32), seqused_prefix=(w0 - 1).to(torch.int32),
                             seqused_window=self.window_len[:b], **common)

    def step(self, b: int) -> None:
        blk, llm = self.block, self.model.llm
        pend, k, c = self.pending[:b], self.pending_count[:b], self.cache_len[:b]
        if self.prologue is not None:  # ids, slots, embeddings and RoPE tables in one kernel
            embeds, cos, sin, write = self.prologue(pend, k, c, self.mask_ids[:b])
            ranges = StepKernelRanges(None, self.rows_2blk[: 2 * b * blk], write, c, k, self.step_attention[b])
            logits = llm(embeds, ranges, self.cache, ranges, self.logits_index[b], fused=True, rope=(cos, sin),
                         logits_rows=b * blk).view(b, blk, -1)
        else:
            logits = self._step_forward(b)
        self._step_end(b, logits)

    def _step_forward(self, b: int) -> torch.Tensor:
        """The step's forward with its inputs built in torch ops (the torch kernel set, and the fused
        set under GRAPHRT_STEP_PROLOGUE=torch)."""
        blk, llm = self.block, self.model.llm
        pend, k, c = self.pending[:b], self.pending_count[:b], self.cache_len[:b]
        j = self.arange_blk[None]
        first_real = (blk - k)[:, None]
        real = j >= first_real
        acc_slots = torch.where(real, c[:, None] + j - first_real, self.dead)
        w0 = c + k  # first window slot
        win_pos = w0[:, None] - 1 + j  # slot 0 shares the last accepted token's position
        positions = torch.cat([torch.where(real, acc_slots, 0), win_pos], dim=1).reshape(-1)
        ids = torch.cat([pend, pend[:, -1:], self.mask_ids[:b]], dim=1).reshape(-1)
        if self.fused:  # every token's K/V at its own slot; the kernel applies the window rule
            write = torch.cat([acc_slots, w0[:, None] + j], dim=1).reshape(-1)
            ranges = StepKernelRanges(positions, self.rows_2blk[: 2 * b * blk], write, c, k, self.step_attention[b])
        else:
            ranges = self._step_ranges(b, positions, acc_slots, w0, win_pos)
        return llm(llm.embed(ids), ranges, self.cache, ranges, self.window_index[: b * blk],
                   fused=self.fused).view(b, blk, -1)

    def _step_end(self, b: int, logits: torch.Tensor) -> None:
        blk, temp = self.block, self.temperature[:b]
        # greedy graphs hold only temperature-0 rows (the runtime refuses others): no scaling pass
        probs = probabilities(logits, self.seen[:b, : self.vocab], temp if self.sample else None, self.sampling,
                              self.softmax)
        # Seeded draws: uniforms hashed from (row key, row step, slot) in the graph; no generator state.
        uniform = uniforms(self.noise_key[:b], self.steps[:b], blk) if self.sample else None
        if self.fused:  # proposal, pattern handler, state update in one kernel (GRAPHRT_STEP_TAIL=torch: A/B)
            from graphrt.kernels import step_tail

            if step_tail.enabled():
                x0, lists = self._choose_and_lists(probs, temp, uniform)
                return step_tail.step_tail(self, b, probs, x0, self.ids, self.mtp, lists=lists)
        x0 = choose(probs, temp, uniform, sample=self.sample)
        self.torch_tail(b, probs, x0)

    def torch_tail(self, b: int, probs: torch.Tensor, x0: torch.Tensor, src: torch.Tensor | None = None,
                   hit: torch.Tensor | None = None) -> None:
        """The step's end in torch ops (the reference the fused tail is tested against).
        src/hit [R]: a merged prefill's first round; state row r takes segment src[r]'s tokens
        where hit[r], rows [0, R) are updated and all_done is over them."""
        tokens, count, kind = accept(propose(probs, x0, self.ids, "fast", self.mtp), self.ids, "fast")
        if src is not None:
            b = hit.shape[0]
            tokens, count, kind = tokens[src], count[src], kind[src]
        blk, j = self.block, self.arange_blk[None]
        pend, k, c, fin = self.pending[:b], self.pending_count[:b], self.cache_len[:b], self.finished[:b]
        w0 = c + k

        active = ~fin if hit is None else ~fin & hit
        keep = (j < count[:, None]) & active[:, None]
        self.out_tokens[:b].scatter_(1, torch.where(keep, self.n_gen[:b, None] + j, self.trash_col), tokens)
        self.seen[:b].scatter_(1, torch.where(keep, tokens, self.vocab), True)
        new_pending = tokens.gather(1, (j - (blk - count)[:, None]).clamp(min=0))  # right-aligned
        new_n = self.n_gen[:b] + count
        end = active & (kind == int(StepKind.FINISH)) & ~self.ignore_end[:b]
        new_steps = self.steps[:b] + active.long()
        self.pending[:b].copy_(torch.where(active[:, None], new_pending, pend))
        self.pending_count[:b].copy_(torch.where(active, count, k))
        self.cache_len[:b].copy_(torch.where(active, w0, c))
        self.n_gen[:b].copy_(torch.where(active, new_n, self.n_gen[:b]))
        self.steps[:b].copy_(new_steps)
        self.ended[:b].logical_or_(end)
        over = (new_n >= self.budget[:b]) | (new_steps >= self.step_limit[:b])
        self.finished[:b].copy_(fin | end | (active & over))
        self.all_done.copy_(self.finished[:b].all())

"""Eager generation: vision -> prefill -> MTP steps, step by step in plain PyTorch.

This is the reference the CUDA-graph runtime must match token for token. Per step, every active
row forwards `[accepted tokens not yet cached | window]` (window = last accepted token at its own
position + 5 MASK tokens) in one packed LM call; the window's KV is dropped afterwards simply by
not advancing the row's cache length past the accepted tokens. The first round is the same step
with the whole uncached prompt as its accepted tokens (NVIDIA's loop: prompt + window in one
forward); `merged=False` prefills prompt[:-1] first and makes round 1 `[last prompt token | window]`
(the same keys, queries and mask, split in two forwards).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .attention.plan import PlanBuilder
from .decode import NO_STEP_LIMIT, GenerationConfig, RowResult, context_budget, draw_seed, stop_reasons
from .errors import InputError
from .kv_cache import KVCache
from .mtp import StepKind, accept, ar_switch, propose
from .request import Batch, Row
from .sampler import choose, noise_keys, probabilities, uniforms

log = logging.getLogger(__name__)


@dataclass
class EagerBatch:
    """A batch as the eager decoder reads it: the rows (graphrt.request.Row: prompt, temperature,
    token cap; its `index` is its sampling stream) with their prompts' images as LM-width embeddings.

    `images[r]`: a [tokens, D] tensor per image of row r's prompt, in placeholder order (the query
    image, then the exemplars). `prefix_owner[r]`: the earlier row whose KV of the shared prompt
    prefix (`Prompt.prefix_len`: up to the query image's `</img>`) row r reuses, prefilling only its
    tail; None: a full prefill. Without `prefix_owner` no row shares."""

    rows: list[Row]
    images: list[tuple[torch.Tensor, ...]]
    prefix_owner: list[int | None] = field(default_factory=list)

    def __post_init__(self):
        self.prefix_owner = self.prefix_owner or [None] * len(self.rows)
        if not len(self.rows) == len(self.images) == len(self.prefix_owner):
            raise ValueError(f"{len(self.rows)} rows, {len(self.images)} image lists, "
                             f"{len(self.prefix_owner)} prefix owners")

    @classmethod
    def of(cls, batch: Batch, embeds: list[torch.Tensor], share_prefix: bool = False) -> "EagerBatch":
        """The rows of `batch`, `embeds[k]` being the embeddings of its image k. With share_prefix,
        rows naming the same query image share the first such row's prompt prefix."""
        first: dict[int, int] = {}
        owners = []
        for r, images in enumerate(batch.row_images):
            owners.append(first.get(images[0]) if share_prefix else None)
            first.setdefault(images[0], r)
        return cls(batch.rows, [tuple(embeds[k] for k in images) for images in batch.row_images], owners)

    def check_sharing(self) -> None:
        for i, (r, owner) in enumerate(zip(self.rows, self.prefix_owner)):
            if owner is None:
                continue
            o = self.rows[owner]
            if self.prefix_owner[owner] is not None or owner >= i:
                raise ValueError("a prefix owner must be an earlier row that owns its own prefix")
            n = r.prompt.prefix_len
            if n != o.prompt.prefix_len or r.prompt.ids[:n] != o.prompt.ids[:n] or not 0 < n < len(r.prompt.ids) - 1 \
                    or n >= len(o.prompt.ids) - 1:
                raise ValueError(f"row {i} cannot share the prefix of row {owner}")


def embed_prompt(model, row: Row, images: tuple[torch.Tensor, ...], length: int) -> torch.Tensor:
    """Embeddings of the row's prompt[:length] with each image's embeddings in place of its placeholders."""
    spans = row.prompt.image_spans
    if len(spans) != len(images):
        raise ValueError(f"prompt has {len(spans)} images, the row has embeddings of {len(images)}")
    ids = torch.tensor(row.prompt.ids[:length], device=model.device)
    emb = model.llm.embed(ids)
    for (start, _), embeds in zip(spans, images):
        n = embeds.shape[0]
        if start >= length:
            continue  # an exemplar after the cut (a shared prefix ends at image 1's `</img>`)
        if start + n > length:
            raise InputError("prompt is cut inside the image placeholders")
        emb[start : start + n] = embeds.to(emb.dtype)
    return emb


@torch.no_grad()
def generate(model, attend, batch: EagerBatch, gen: GenerationConfig, on_stage=None,
             merged: bool = True) -> list[RowResult]:
    """`on_stage(name)`, when given, is called after the prefill ("prefill", with the first round
    when merged) and after each step ("step"). merged: see EagerDecoder."""
    decoder = EagerDecoder(model, attend, batch, gen, merged=merged)
    if on_stage:
        on_stage("prefill")
    while not decoder.done:
        decoder.step()
        if on_stage:
            on_stage("step")
    return decoder.results


class EagerDecoder:
    """The eager loop as an object: prefill on construction, then one `step()` per MTP step.
    merged (generate() and the eager backend): the first round runs on construction too, in one
    forward of prompt + first window, as NVIDIA's loop. The default (False) prefills prompt[:-1]
    and leaves the first round to the first `step()`, for callers that drive and compare decoders
    round by round from the prefill (calib/'s teacher-forced FP8 reports).

    All its state is in plain attributes, so `state_dict()` / `from_state()` pause a generation
    and continue it later (in another process too), token for token.
    """

    @torch.no_grad()
    def __init__(self, model, attend, batch: EagerBatch, gen: GenerationConfig,
                 state: tuple[dict, dict] | None = None, merged: bool = False):
        cfg, device = model.cfg, model.device
        self.model, self.attend, self.gen = model, attend, gen
        self.block, vocab = cfg.text.block_size, cfg.text.vocab_size
        rows = batch.rows
        n = len(rows)
        temps = [gen.sampling.temperature if r.temperature is None else r.temperature for r in rows]
        self.temps = torch.tensor(temps, dtype=torch.float32, device=device)
        self.sampled = [t > 0 for t in temps]  # host copy: greedy rows skip the draw
        seed = gen.seed if gen.seed is not None else draw_seed() if any(self.sampled) else 0
        self.keys = noise_keys(seed, [r.index for r in rows]).to(device)
        self._first: dict[int, torch.Tensor] = {}  # row -> embeddings of its uncached prompt (round 1)
        if state is not None:
            self._load(*state)
            return
        batch.check_sharing()
        prompts = [r.prompt.ids for r in rows]
        self.budgets = [context_budget(cfg, len(p), r.max_new_tokens or gen.max_new_tokens)
                        for p, r in zip(prompts, rows)]
        self.cache = model.llm.new_cache(n, max(len(p) + b + 2 * self.block for p, b in zip(prompts, self.budgets)))
        self.results = [RowResult(tokens=[], stop_reason="") for _ in rows]
        self.ar_mode = [gen.mode == "slow"] * n
        self.seen = torch.zeros(n, vocab, dtype=torch.bool, device=device)
        for row, p in enumerate(prompts):
            self.seen[row, torch.tensor(p, device=device)] = True
        self.active = list(range(n))
        self.steps_done = 0
        if not merged:
            self._prefill(batch)
            self.cached = [len(p) - 1 for p in prompts]
            self.pending = [[p[-1]] for p in prompts]
            return
        self.cached = self._prefill_shared_prefixes(batch)
        self.pending = [p[c:] for p, c in zip(prompts, self.cached)]
        self._first = {row: embed_prompt(model, r, images, len(r.prompt.ids))[c:]
                       for row, (r, images, c) in enumerate(zip(rows, batch.images, self.cached))}
        self.step()  # round 1: the uncached prompt and the first window in one forward

    def _prefill(self, batch: EagerBatch) -> None:
        """All but the last prompt token: the first step then forwards [last | window], which is
        the stock first round (prompt + window in one call) with the prompt split off.

        Rows sharing a prefix: the owner's prefix is prefilled once and its KV copied to the
        members; then every sharing row prefills only its tail, attending to the copied prefix."""
        model, device, owners = self.model, self.model.device, batch.prefix_owner
        members = [i for i, owner in enumerate(owners) if owner is not None]
        sharing = set(members) | {owners[i] for i in members}
        plan, embeds = PlanBuilder(), []
        for row, (r, images) in enumerate(zip(batch.rows, batch.images)):
            if row in members:
                continue
            length = r.prompt.prefix_len if row in sharing else len(r.prompt.ids) - 1
            plan.add_causal(row, 0, length)
            embeds.append(embed_prompt(model, r, images, length))
        model.llm(torch.cat(embeds), plan.build(device), self.cache, self.attend)
        if not members:
            return
        dst = torch.tensor(members, device=device)
        src = torch.tensor([owners[i] for i in members], device=device)
        width = max(batch.rows[i].prompt.prefix_len for i in members)
        for buf in (self.cache.k, self.cache.v):
            buf[:, dst, :width] = buf[:, src, :width]
        plan, embeds = PlanBuilder(), []
        for row in sorted(sharing):
            r, cut = batch.rows[row], batch.rows[row].prompt.prefix_len
            plan.add_causal(row, cut, len(r.prompt.ids) - 1 - cut)
            embeds.append(embed_prompt(model, r, batch.images[row], len(r.prompt.ids) - 1)[cut:])
        model.llm(torch.cat(embeds), plan.build(device), self.cache, self.attend)

    def _prefill_shared_prefixes(self, batch: EagerBatch) -> list[int]:
        """The merged first round's only prefill: each shared prefix once, its KV copied to the
        rows sharing it. Returns each row's cached length (its prefix, or 0)."""
        model, device, owner_of = self.model, self.model.device, batch.prefix_owner
        members = [i for i, owner in enumerate(owner_of) if owner is not None]
        owners = sorted({owner_of[i] for i in members})
        if not members:
            return [0] * len(batch.rows)
        plan = PlanBuilder()
        for row in owners:
            plan.add_causal(row, 0, batch.rows[row].prompt.prefix_len)
        embeds = torch.cat([embed_prompt(model, batch.rows[row], batch.images[row], batch.rows[row].prompt.prefix_len)
                            for row in owners])
        model.llm(embeds, plan.build(device), self.cache, self.attend)
        dst = torch.tensor(members, device=device)
        src = torch.tensor([owner_of[i] for i in members], device=device)
        width = max(batch.rows[i].prompt.prefix_len for i in members)
        for buf in (self.cache.k, self.cache.v):
            buf[:, dst, :width] = buf[:, src, :width]
        sharing = set(members) | set(owners)
        return [r.prompt.prefix_len if row in sharing else 0 for row, r in enumerate(batch.rows)]

    @property
    def done(self) -> bool:
        return not self.active

    @torch.no_grad()
    def step(self) -> None:
        """One decode step (MTP, or AR for rows in AR mode) of every active row."""
        model, gen, ids, block = self.model, self.gen, self.model.cfg.tokens, self.block
        device, mask_id = model.device, ids.text_mask
        plan, tokens, logit_rows, first = PlanBuilder(), [], [], []
        for row in self.active:
            window = 0 if self.ar_mode[row] else block
            plan.add_step(row, self.cached[row], len(self.pending[row]), window)
            pend = self.pending[row]
            if row in self._first:  # round 1: the prompt's embeddings (images in place) for its tokens
                first.append((len(tokens), self._first.pop(row)))
            tokens += pend + ([pend[-1]] + [mask_id] * (block - 1) if window else [])
            logit_rows.append(list(range(len(tokens) - window, len(tokens))) if window else [len(tokens) - 1])
        embeds = model.llm.embed(torch.tensor(tokens, device=device))
        for start, prompt_embeds in first:
            embeds[start : start + prompt_embeds.shape[0]] = prompt_embeds
        index = torch.tensor([i for rows in logit_rows for i in rows], device=device)
        logits = model.llm(embeds, plan.build(device), self.cache, self.attend, logits_index=index)

        offset, still = 0, []
        for i, row in enumerate(self.active):
            width = len(logit_rows[i])
            row_logits = logits[offset : offset + width][None]
            offset += width
            probs = probabilities(row_logits, self.seen[row : row + 1], self.temps[row : row + 1], gen.sampling)
            res = self.results[row]
            if self.sampled[row]:
                uniform = uniforms(self.keys[row : row + 1], torch.tensor([res.steps], device=device), width)
                x0 = choose(probs, self.temps[row : row + 1], uniform, sample=True)
            else:
                x0 = probs.argmax(dim=-1)
            if self.ar_mode[row]:
                token = x0[:, 0]
                finish, back = ar_switch(token, ids, gen.mode)
                kept, done = [int(token)], bool(finish)
                self.ar_mode[row] = not bool(back)
                res.kinds.append(-1)
            else:
                proposal = propose(probs, x0, ids, gen.mode, gen.mtp)
                step_tokens, count, kind = accept(proposal, ids, gen.mode)
                kept = step_tokens[0, : int(count)].tolist()
                done = int(kind) == StepKind.FINISH
                self.ar_mode[row] = gen.mode == "hybrid" and int(kind) == StepKind.BROKEN_BOX
                res.kinds.append(int(kind))
            self.cached[row] += len(self.pending[row])
            self.pending[row] = kept
            res.tokens += kept
            res.accepted.append(len(kept))
            res.steps += 1
            self.seen[row, torch.tensor(kept, device=device)] = True
            if gen.fixed_steps is not None:
                done = res.steps >= gen.fixed_steps
            if done:
                res.stop_reason = "end" if gen.fixed_steps is None else "fixed_steps"
            elif len(res.tokens) >= self.budgets[row]:
                res.stop_reason = "max_new_tokens"
            else:
                still.append(row)
        self.active = still
        self.steps_done += 1

    # ------------------------------------------------------------------ pause / resume

    def state_dict(self) -> tuple[dict, dict]:
        """Everything needed to continue: (CPU tensors named as decode.PAUSED_TENSORS, plus the
        KV cache; plain values of the eager loop alone: AR mode, per-step counts and kinds)."""
        n, blk, gen = len(self.results), self.block, self.gen
        pending = torch.zeros(n, blk, dtype=torch.long)
        for row, tokens in enumerate(self.pending):  # right-aligned, as the graph runtime keeps them
            pending[row, blk - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        width = max([len(r.tokens) for r in self.results] + [1])
        out = torch.zeros(n, width, dtype=torch.long)
        for row, r in enumerate(self.results):
            out[row, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
        active = set(self.active)
        limit = NO_STEP_LIMIT if gen.fixed_steps is None else gen.fixed_steps
        long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
        flags = lambda values: torch.tensor(values, dtype=torch.bool)  # noqa: E731
        tensors = {
            "pending": pending, "pending_count": long([len(p) for p in self.pending]), "cache_len": long(self.cached),
            "n_gen": long([len(r.tokens) for r in self.results]), "budget": long(self.budgets),
            "finished": flags([row not in active for row in range(n)]),
            "ended": flags([r.stop_reason == "end" for r in self.results]),
            "steps": long([r.steps for r in self.results]), "temperature": self.temps.cpu(),
            "step_limit": long([limit] * n), "ignore_end": flags([gen.fixed_steps is not None] * n),
            "noise_key": self.keys.cpu(),
            "seen": torch.cat([self.seen.cpu(), torch.zeros(n, 1, dtype=torch.bool)], 1),  # column V: padding
            "out_tokens": out, "cache_k": self.cache.k.cpu(), "cache_v": self.cache.v.cpu(),
        }
        extra = {"ar_mode": list(self.ar_mode), "accepted": [r.accepted for r in self.results],
                 "kinds": [r.kinds for r in self.results], "steps_done": self.steps_done}
        return tensors, extra

    def _load(self, tensors: dict, extra: dict) -> None:
        device, blk = self.model.device, self.block
        count, n_gen, steps = (tensors[k].tolist() for k in ("pending_count", "n_gen", "steps"))
        reasons = stop_reasons(tensors["finished"].tolist(), tensors["ended"].tolist(), steps,
                               tensors["step_limit"].tolist())
        self.cached = tensors["cache_len"].tolist()
        self.pending = [tensors["pending"][row, blk - k :].tolist() for row, k in enumerate(count)]
        self.results = [RowResult(tensors["out_tokens"][row, :n].tolist(), reason, s, list(acc), list(kinds))
                        for row, (n, reason, s, acc, kinds)
                        in enumerate(zip(n_gen, reasons, steps, extra["accepted"], extra["kinds"]))]
        self.ar_mode = list(extra["ar_mode"])
        self.active = [row for row, done in enumerate(tensors["finished"].tolist()) if not done]
        self.budgets = tensors["budget"].tolist()
        self.steps_done = extra["steps_done"]
        k = tensors["cache_k"]
        self.cache = KVCache(k.shape[0], k.shape[1], k.shape[2], k.shape[3], k.shape[4], self.model.dtype, device)
        self.cache.k.copy_(k)
        self.cache.v.copy_(tensors["cache_v"])
        self.seen = tensors["seen"][:, : self.model.cfg.text.vocab_size].to(device)
        self.keys = tensors["noise_key"].to(device)
        self.temps = tensors["temperature"].to(device)
        self.sampled = [t > 0 for t in self.temps.tolist()]

    @classmethod
    def from_state(cls, model, attend, batch: EagerBatch, gen: GenerationConfig, tensors: dict,
                   extra: dict) -> "EagerDecoder":
        """A paused generation of these rows (their images are not needed: the KV holds them)."""
        return cls(model, attend, batch, gen, state=(tensors, extra))

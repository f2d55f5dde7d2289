"""Eager generation: vision -> prefill -> MTP steps, step by step in plain PyTorch.

This is the reference the CUDA-graph runtime must match token for token. Per step, every active
row forwards `[accepted tokens not yet cached | window]` (window = last accepted token at its own
position + 5 MASK tokens) in one packed LM call; the window's KV is dropped afterwards simply by
not advancing the row's cache length past the accepted tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .attention.plan import PlanBuilder
from .config import ModelConfig
from .errors import InputError
from .mtp import MODES, MTPConfig, StepKind, accept, ar_switch, propose
from .sampler import SamplingConfig, choose, probabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    mode: str = "fast"
    max_new_tokens: int = 2048
    sampling: SamplingConfig = SamplingConfig()
    mtp: MTPConfig = MTPConfig()
    seed: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"generation mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")


@dataclass
class RowRequest:
    prompt: list[int]
    image_embeds: torch.Tensor  # [image tokens, D], scattered over the prompt's image placeholders
    image_start: int
    temperature: float | None = None  # None: the config's temperature
    max_new_tokens: int | None = None  # None: the config's max_new_tokens


@dataclass
class RowResult:
    tokens: list[int]
    stop_reason: str  # "end" (the model stopped) | "max_new_tokens"
    steps: int = 0
    accepted: list[int] = field(default_factory=list)  # tokens kept per step
    kinds: list[int] = field(default_factory=list)  # StepKind per MTP step, -1 for an AR step


def embed_prompt(model, req: RowRequest, length: int) -> torch.Tensor:
    """Embeddings of prompt[:length] with the image embeddings in place of the placeholders."""
    ids = torch.tensor(req.prompt[:length], device=model.device)
    emb = model.llm.embed(ids)
    n = req.image_embeds.shape[0]
    if req.image_start + n > length:
        raise InputError("prompt is cut inside the image placeholders")
    emb[req.image_start : req.image_start + n] = req.image_embeds.to(emb.dtype)
    return emb


def context_budget(cfg: ModelConfig, prompt_len: int, max_new_tokens: int) -> int:
    """Tokens a row may generate; raises when the prompt alone does not fit the context."""
    block = cfg.text.block_size
    limit = cfg.text.max_position_embeddings
    room = limit - prompt_len - 2 * block  # a step can overshoot the budget by block - 1 tokens
    if room < 1:
        raise InputError(f"prompt of {prompt_len} tokens does not fit the model context of {limit} tokens")
    if max_new_tokens > room:
        log.warning("max_new_tokens %d cut to %d to fit the %d-token context", max_new_tokens, room, limit)
    return min(max_new_tokens, room)


@torch.no_grad()
def generate(model, attend, requests: list[RowRequest], gen: GenerationConfig, on_stage=None) -> list[RowResult]:
    """`on_stage(name)`, when given, is called after the prefill ("prefill") and after each step ("step")."""
    cfg, ids, device = model.cfg, model.cfg.tokens, model.device
    block, vocab = cfg.text.block_size, cfg.text.vocab_size
    n = len(requests)
    budgets = [context_budget(cfg, len(r.prompt), r.max_new_tokens or gen.max_new_tokens) for r in requests]
    cache = model.llm.new_cache(n, max(len(r.prompt) + b + 2 * block for r, b in zip(requests, budgets)))

    # Prefill all but the last prompt token: the first step then forwards [last | window], which is
    # the stock first round (prompt + window in one call) with the prompt split off.
    plan = PlanBuilder()
    for row, r in enumerate(requests):
        plan.add_causal(row, 0, len(r.prompt) - 1)
    embeds = torch.cat([embed_prompt(model, r, len(r.prompt) - 1) for r in requests])
    model.llm(embeds, plan.build(device), cache, attend)
    if on_stage:
        on_stage("prefill")

    cached = [len(r.prompt) - 1 for r in requests]
    pending = [[r.prompt[-1]] for r in requests]
    results = [RowResult(tokens=[], stop_reason="") for _ in requests]
    ar_mode = [gen.mode == "slow"] * n
    seen = torch.zeros(n, vocab, dtype=torch.bool, device=device)
    for row, r in enumerate(requests):
        seen[row, torch.tensor(r.prompt, device=device)] = True
    temps = torch.tensor([gen.sampling.temperature if r.temperature is None else r.temperature for r in requests],
                         dtype=torch.float32, device=device)
    rng = torch.Generator(device=device).manual_seed(gen.seed) if gen.seed is not None else None
    mask_id = ids.text_mask
    active = list(range(n))

    while active:
        plan, tokens, logit_rows = PlanBuilder(), [], []
        for row in active:
            window = 0 if ar_mode[row] else block
            plan.add_step(row, cached[row], len(pending[row]), window)
            tokens += pending[row] + ([pending[row][-1]] + [mask_id] * (block - 1) if window else [])
            logit_rows.append(list(range(len(tokens) - window, len(tokens))) if window else [len(tokens) - 1])
        embeds = model.llm.embed(torch.tensor(tokens, device=device))
        index = torch.tensor([i for rows in logit_rows for i in rows], device=device)
        logits = model.llm(embeds, plan.build(device), cache, attend, logits_index=index)

        offset, still = 0, []
        for i, row in enumerate(active):
            width = len(logit_rows[i])
            row_logits = logits[offset : offset + width][None]
            offset += width
            probs = probabilities(row_logits, seen[row : row + 1], temps[row : row + 1], gen.sampling)
            x0 = choose(probs, temps[row : row + 1], rng)
            res = results[row]
            if ar_mode[row]:
                token = x0[:, 0]
                finish, back = ar_switch(token, ids, gen.mode)
                kept, done = [int(token)], bool(finish)
                ar_mode[row] = not bool(back)
                res.kinds.append(-1)
            else:
                proposal = propose(probs, x0, ids, gen.mode, gen.mtp)
                step_tokens, count, kind = accept(proposal, ids, gen.mode)
                kept = step_tokens[0, : int(count)].tolist()
                done = int(kind) == StepKind.FINISH
                ar_mode[row] = gen.mode == "hybrid" and int(kind) == StepKind.BROKEN_BOX
                res.kinds.append(int(kind))
            cached[row] += len(pending[row])
            pending[row] = kept
            res.tokens += kept
            res.accepted.append(len(kept))
            res.steps += 1
            seen[row, torch.tensor(kept, device=device)] = True
            if done:
                res.stop_reason = "end"
            elif len(res.tokens) >= budgets[row]:
                res.stop_reason = "max_new_tokens"
            else:
                still.append(row)
        active = still
        if on_stage:
            on_stage("step")
    return results

"""The stock logits pipeline, batched over rows: repetition penalty -> temperature -> top-p ->
top-k -> softmax -> argmax (greedy) or a categorical draw. Ops run in the logits' own dtype, as
the reference does, so probabilities round the same way. No host synchronization."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy; per-row temperatures override it
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, S, V]; seen [B, V] bool (ids of prompt + generated). Positive logits / penalty, others * penalty."""
    mask = seen[:, None, :]
    positive = logits > 0
    logits = torch.where(mask & positive, logits / penalty, logits)
    return torch.where(mask & ~positive, logits * penalty, logits)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest prefix (by probability) whose mass reaches top_p; always keep the first."""
    sorted_logits, order = torch.sort(logits, descending=True)
    remove = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1) > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    mask = torch.zeros_like(remove).scatter_(-1, order, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, k)[0][..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def probabilities(logits: torch.Tensor, seen: torch.Tensor | None, temperature: torch.Tensor | None,
                  cfg: SamplingConfig) -> torch.Tensor:
    """logits [B, S, V] -> probs [B, S, V]; temperature [B] (0 = greedy row, no scaling; None:
    every row is greedy, so the division by 1 is skipped: one pass over the logits fewer)."""
    if cfg.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if temperature is not None:
        scale = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).to(logits.dtype)
        logits = logits / scale[:, None, None]
    if cfg.top_p is not None and cfg.top_p < 1:
        logits = top_p_filter(logits, cfg.top_p)
    if cfg.top_k is not None:
        logits = top_k_filter(logits, cfg.top_k)
    return torch.softmax(logits, dim=-1)


def choose(probs: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None = None,
           sample: bool | None = None) -> torch.Tensor:
    """Argmax for greedy rows; a categorical draw (exponential race, graph-safe) for the others.
    `sample` says whether any row may sample; None asks the device (a host sync: eager only)."""
    greedy = probs.argmax(dim=-1)
    if sample is None:
        sample = bool((temperature > 0).any())
    if not sample:
        return greedy
    noise = torch.empty(probs.shape, dtype=torch.float32, device=probs.device).exponential_(generator=generator)
    drawn = (probs.float() / noise).argmax(dim=-1)
    return torch.where(temperature[:, None] > 0, drawn, greedy)

"""The stock logits pipeline, batched over rows: repetition penalty -> temperature -> top-p ->
top-k -> softmax -> argmax (greedy) or a categorical draw. Ops run in the logits' own dtype, as
the reference does, so probabilities round the same way. No host synchronization.

Draws are inverse-CDF with one uniform per (row, slot) taken from a counter-based hash of
(row key, the row's step, slot); the row key hashes (seed, the row's stream id). The stream is
a pure function of those counters, so it needs no generator state: a captured CUDA graph reads
the keys from a device tensor and is reseeded by writing that tensor, and the eager loop, the
uncaptured static path and the graphs all draw the same numbers for the same row and step."""

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
                  cfg: SamplingConfig, softmax=None) -> torch.Tensor:
    """logits [B, S, V] -> probs [B, S, V]; temperature [B] (0 = greedy row, no scaling; None:
    every row is greedy, so the division by 1 is skipped: one pass over the logits fewer).
    `softmax`: a drop-in for torch.softmax(x, -1) with its bits (the graphs' StepSoftmax)."""
    if cfg.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if temperature is not None:
        scale = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).to(logits.dtype)
        logits = logits / scale[:, None, None]
    if cfg.top_p is not None and cfg.top_p < 1:
        logits = top_p_filter(logits, cfg.top_p)
    if cfg.top_k is not None:
        logits = top_k_filter(logits, cfg.top_k)
    return torch.softmax(logits, dim=-1) if softmax is None else softmax(logits)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), in 16-bit halves so no int64 product overflows."""
    return ((x & 0xFFFF) * c + (((x >> 16) * (c & 0xFFFF)) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (xor-shift / multiply rounds; Wellons' "lowbias32" constants)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def noise_keys(seed: int, streams) -> torch.Tensor:
    """Per-row keys [B] (int64, CPU) of the sampling streams: a hash of (seed, stream id)."""
    s = int(seed) % (1 << 64)
    lo = torch.full((len(streams),), s & _MASK32, dtype=torch.long)
    stream = torch.tensor([int(t) & _MASK32 for t in streams], dtype=torch.long)
    return _mix32(_mix32(_mix32(lo ^ 0x9E3779B9) ^ (s >> 32)) ^ stream)


def uniforms(keys: torch.Tensor, steps: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] float32 uniforms in [0, 1 - 2**-23] for rows with keys [B] at their steps [B]
    (one per window slot). Elementwise integer ops only: graph-safe, same bits on CPU and GPU."""
    slot = torch.arange(width, device=keys.device)
    counter = (steps[:, None] * 64 + slot[None]) & _MASK32  # slot < 64 (the window is 6 wide)
    h = _mix32(_mix32(keys[:, None] ^ _mix32((counter + 0x9E3779B9) & _MASK32)) ^ counter)
    return (h >> 9).float() * 2.0**-23


def choose(probs: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor | None = None,
           sample: bool | None = None) -> torch.Tensor:
    """Argmax for greedy rows; for the others, the first token whose cumulative probability
    exceeds uniform * total (inverse CDF: a token of zero probability is never drawn).
    `uniform` [B, S] from `uniforms` (None: unseeded torch.rand). `sample` says whether any row
    may sample; None asks the device (a host sync: eager only)."""
    greedy = probs.argmax(dim=-1)
    if sample is None:
        sample = bool((temperature > 0).any())
    if not sample:
        return greedy
    if uniform is None:
        uniform = torch.rand(probs.shape[:-1], device=probs.device)
    cdf = probs.float().cumsum(dim=-1)
    target = (uniform * cdf[..., -1]).unsqueeze(-1)  # < total: a 23-bit uniform times a float stays below it
    drawn = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    return torch.where(temperature[:, None] > 0, drawn, greedy)

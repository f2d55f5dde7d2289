"""What every decode path shares (eager loop, CUDA-graph runtime, pause/resume): the generation
settings, a row's raw decode result, the context budget and the sampling seed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .config import ModelConfig
from .errors import InputError
from .mtp import MODES, MTPConfig
from .sampler import SamplingConfig

log = logging.getLogger(__name__)

NO_STEP_LIMIT = 1 << 30  # a row's step limit when the run has no fixed step count

# A paused generation's per-row tensors, the same names and meaning on every backend (the graph
# runtime's RowState fields, capture/state.py), besides the KV cache rows `cache_k`, `cache_v`.
PAUSED_TENSORS = ("pending", "pending_count", "cache_len", "n_gen", "budget", "finished", "ended", "steps",
                  "temperature", "step_limit", "ignore_end", "noise_key", "seen", "out_tokens")


@dataclass(frozen=True)
class GenerationConfig:
    mode: str = "fast"
    max_new_tokens: int = 2048
    sampling: SamplingConfig = SamplingConfig()
    mtp: MTPConfig = MTPConfig()
    seed: int | None = None  # sampling stream (with each row's stream id); None: drawn from torch's global RNG
    # Benchmarks on random weights: every row runs exactly this many decode steps, end tokens
    # ignored (the max_new_tokens budget still applies). None: rows stop at the model's end.
    fixed_steps: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"generation mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.fixed_steps is not None and self.fixed_steps < 1:
            raise ValueError("fixed_steps must be >= 1 (or None)")


def draw_seed() -> int:
    """A seed for a call that names none: from torch's global RNG (torch.manual_seed fixes it)."""
    return int(torch.randint(0, 2**62, (1,)))


def stop_reasons(finished, ended, steps, step_limit) -> list[str]:
    """Each row's stop reason from its state flags ("" while it runs)."""
    return ["" if not f else "end" if e else "fixed_steps" if s >= lim else "max_new_tokens"
            for f, e, s, lim in zip(finished, ended, steps, step_limit)]


@dataclass
class RowResult:
    tokens: list[int]
    stop_reason: str  # "end" (the model stopped) | "max_new_tokens"
    steps: int = 0
    accepted: list[int] = field(default_factory=list)  # tokens kept per step
    kinds: list[int] = field(default_factory=list)  # StepKind per MTP step, -1 for an AR step


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

"""Static shapes: which (batch, patches), (batch, prompt tokens) and batch sizes get a graph.

Like a precompile config, the lists expand to every standalone combination; a request is padded
up to the smallest bucket that fits.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Buckets:
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    patch_budgets: tuple[int, ...] = (1024, 1680, 4144)  # patches per image (640x480 = 1656, 1024x768 = 4144)
    # Prompt tokens per segment (image tokens included): 64 takes the query tails of shared
    # prefixes; 480 a 640x480 image with the official prompt (414 image tokens + ~37 of text:
    # 451, realistic BPE; measured 2026-11-24 on the H100, prefill 9.4 -> 8.1 ms at B=1 and
    # 180 -> 153 ms at B=32 against padding to 576); 576 the same with long queries; 1280 the
    # largest image (4144 patches = 1036 image tokens) with a query of up to ~100 tokens.
    prefill_lengths: tuple[int, ...] = (64, 256, 480, 576, 896, 1280)
    max_new_tokens: int = 2048  # = GenerationConfig's default, so default requests run on the graphs

    def __post_init__(self):
        for name in ("batch_sizes", "patch_budgets", "prefill_lengths"):
            values = tuple(sorted(set(getattr(self, name))))
            if not values or values[0] < 1:
                raise ValueError(f"{name} must hold positive sizes")
            object.__setattr__(self, name, values)
        if any(p % 4 for p in self.patch_budgets):
            raise ValueError("patch budgets must be multiples of 4 (2x2 merge)")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    @property
    def max_patches(self) -> int:
        return self.patch_budgets[-1]

    @property
    def max_prefill(self) -> int:
        return self.prefill_lengths[-1]

    def cache_slots(self, block: int) -> int:
        """KV slots per row: prompt + generated + one step of overshoot and window + a dead slot."""
        return self.max_prefill + self.max_new_tokens + 3 * block + 1

    def expand(self) -> dict[str, list[tuple[int, ...]]]:
        return {
            "vision": [(b, p) for b in self.batch_sizes for p in self.patch_budgets],
            "prefill": [(b, t) for b in self.batch_sizes for t in self.prefill_lengths],
            "step": [(b,) for b in self.batch_sizes],
        }

    @staticmethod
    def fit(sizes: tuple[int, ...], need: int) -> int | None:
        """Smallest size >= need, or None when nothing fits."""
        i = bisect.bisect_left(sizes, need)
        return sizes[i] if i < len(sizes) else None

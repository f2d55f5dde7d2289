"""Static shapes: which (batch, patches), (batch, prompt tokens) and batch sizes get a graph.

Sizes are ladders (patches per image, prompt tokens per segment) crossed with the batch sizes,
kept only where a replay stays inside its token budget: a vision graph of b images of p patches
holds b*p <= vision_budget patches, a prefill graph of b segments of t tokens b*t <= prefill_budget
tokens. So the largest image (25,600 patches, the processor's in_token_limit) gets graphs at small
batch and small images at large batch, and the graph pool is bounded by the budgets, not by
largest batch x largest size. A request is padded up to the cheapest key that fits; an admission
that fits no key is split into several replays (capture/runtime.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Buckets:
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    # Patches per image: 640x480 = 1656 (exact: a 1680 slot wasted 1.4% of every tower GEMM's rows;
    # 1657-1680-patch images, e.g. 560x588, now take a 4144 slot), 1024x768 = 4144, 1280x720 = 4784,
    # 1920x1080 = 10764, 2240x2240 = 25600; 26676 is the most the processor makes of any image (its
    # in_token_limit of 25600 holds before the sides are rounded up to multiples of 28).
    patch_budgets: tuple[int, ...] = (1024, 1656, 4144, 4800, 10816, 26676)
    # Prompt tokens per segment (image tokens included): 64 takes the query tails of shared
    # prefixes; 464 a 640x480 image with the official prompt and a short query (414 image tokens +
    # 37-39 of text = 451-453; with the merged first round a segment is the prompt plus the 6-slot
    # window, 457-459: queries of up to 8 BPE tokens fit); 480 the same with queries of up to 24
    # tokens (measured 2026-11-24 on the H100, prefill 9.4 -> 8.1 ms at
    # B=1 and 180 -> 153 ms at B=32 against padding to 576); 576 the same with long queries; 1280 a
    # 4144- or 4800-patch image (1036 / 1196 image tokens) with its query; 2816 a 1080p frame
    # (2691 image tokens) and 6944 the largest image (6669) with up to 275 tokens of text.
    prefill_lengths: tuple[int, ...] = (64, 256, 464, 480, 576, 896, 1280, 2816, 6944)
    max_new_tokens: int = 2048  # = GenerationConfig's default, so default requests run on the graphs
    # Patches per vision replay and tokens per prefill replay (None: no limit, every combination).
    # The defaults keep today's small-image buckets (32 x 4144 patches, 32 x 1280 tokens).
    vision_budget: int | None = 32 * 4144
    prefill_budget: int | None = 32 * 1280

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
        for name, sizes in (("vision_budget", self.patch_budgets), ("prefill_budget", self.prefill_lengths)):
            budget = getattr(self, name)
            if budget is not None and budget < self.batch_sizes[0] * sizes[-1]:
                raise ValueError(f"{name} {budget} is below one replay of the largest size "
                                 f"({self.batch_sizes[0]} x {sizes[-1]})")

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

    @staticmethod
    def _keys(batches, sizes, budget) -> list[tuple[int, int]]:
        return [(b, s) for b in batches for s in sizes if budget is None or b * s <= budget]

    def vision_keys(self) -> list[tuple[int, int]]:
        return self._keys(self.batch_sizes, self.patch_budgets, self.vision_budget)

    def prefill_keys(self) -> list[tuple[int, int]]:
        return self._keys(self.batch_sizes, self.prefill_lengths, self.prefill_budget)

    @property
    def vision_capacity(self) -> int:
        """Patches of the largest vision replay (the size of the vision input buffers)."""
        return max(b * p for b, p in self.vision_keys())

    @property
    def prefill_capacity(self) -> int:
        """Tokens of the largest prefill replay (the size of the prefill input buffers)."""
        return max(b * t for b, t in self.prefill_keys())

    def expand(self) -> dict[str, list[tuple[int, ...]]]:
        return {"vision": self.vision_keys(), "prefill": self.prefill_keys(), "step": [(b,) for b in self.batch_sizes]}

    def fit_vision(self, images: int, patches: int) -> tuple[int, int] | None:
        """The cheapest vision key for `images` images of at most `patches` patches, or None."""
        return _cheapest(self.vision_keys(), images, patches)

    def fit_prefill(self, segments: int, tokens: int) -> tuple[int, int] | None:
        """The cheapest prefill key for `segments` segments of at most `tokens` tokens, or None."""
        return _cheapest(self.prefill_keys(), segments, tokens)

    @staticmethod
    def fit(sizes: tuple[int, ...], need: int) -> int | None:
        """Smallest size >= need, or None when nothing fits."""
        i = bisect.bisect_left(sizes, need)
        return sizes[i] if i < len(sizes) else None


def _cheapest(keys, count: int, size: int) -> tuple[int, int] | None:
    fits = [(b * s, s, b) for b, s in keys if b >= count and s >= size]
    if not fits:
        return None
    _, s, b = min(fits)
    return b, s


"""Per-row device state of the step graphs, declared once.

Each field of `RowState` names its dtype, its per-row width, the value of a free row, and how a
prefill seeds it when a prompt takes the row. Everything else is derived from that one list:
the device tensors (allocated once for the largest bucket), the warm-up reset, the prefill's
seed of refilled rows, the host staging of per-segment seed values, and pause/resume. A new
per-row feature adds one field here and reads it in `StaticPipeline.step()`.

Seeds: a constant (every new row starts there), `FromSegments(fn)` (one value per prefill
segment, computed on the host by `fn(segments, gen)` for all segments at once and broadcast over
the field's width), or `TokenSet(fn)` (a bool row over the vocabulary, True at the token ids
`fn(segment, gen)` returns). None: not seeded (the row's `n_gen` makes stale values unreachable).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from graphrt.decode import NO_STEP_LIMIT as NO_LIMIT
from graphrt.sampler import noise_keys


@dataclass(frozen=True)
class FromSegments:
    values: Callable  # (segments, GenerationConfig) -> one number per segment


@dataclass(frozen=True)
class TokenSet:
    ids: Callable  # (segment, GenerationConfig) -> token ids


def row_field(dtype: torch.dtype, free=0, seed=None, width: str | None = None):
    """A RowState field: `free` is a free row's value (allocation and warm-up reset); `width`
    names a per-row width of the pipeline (None: one value per row)."""
    return dataclasses.field(metadata={"dtype": dtype, "free": free, "seed": seed, "width": width})


def per_segment(fn: Callable) -> FromSegments:
    """A seed computed segment by segment: fn(segment, gen)."""
    return FromSegments(lambda segments, gen: [fn(seg, gen) for seg in segments])


def _temperature(seg, gen) -> float:
    return gen.sampling.temperature if seg.row.temperature is None else seg.row.temperature


def _stream_keys(segments, gen):
    # admit() fixes gen.seed for the whole admission, so both prefill passes hash the same seed
    return noise_keys(gen.seed, [s.row.index for s in segments]).numpy()  # a row's stream: its Row.index


@dataclass
class RowState:
    # accepted tokens not yet in the cache, right-aligned; a new row starts with its last prompt token
    pending: torch.Tensor = row_field(torch.long, 0, per_segment(lambda seg, gen: seg.row.prompt.ids[-1]), "block")
    pending_count: torch.Tensor = row_field(torch.long, 1, 1)
    cache_len: torch.Tensor = row_field(torch.long, 1, per_segment(lambda seg, gen: seg.end))  # KV slots cached
    n_gen: torch.Tensor = row_field(torch.long, 0, 0)  # tokens generated
    budget: torch.Tensor = row_field(torch.long, 1, per_segment(lambda seg, gen: seg.budget))  # max new tokens
    finished: torch.Tensor = row_field(torch.bool, True, False)
    ended: torch.Tensor = row_field(torch.bool, False, False)  # finished by an end token (not the budget)
    steps: torch.Tensor = row_field(torch.long, 0, 0)
    temperature: torch.Tensor = row_field(torch.float32, 0.0, per_segment(_temperature))
    # fixed-step benchmarks: run exactly this many steps, end tokens ignored
    step_limit: torch.Tensor = row_field(torch.long, NO_LIMIT, per_segment(
        lambda seg, gen: NO_LIMIT if gen.fixed_steps is None else gen.fixed_steps))
    ignore_end: torch.Tensor = row_field(torch.bool, False, per_segment(lambda seg, gen: gen.fixed_steps is not None))
    noise_key: torch.Tensor = row_field(torch.long, 0, FromSegments(_stream_keys))  # sampling stream (sampler.uniforms)
    # tokens seen (repetition penalty); column V absorbs padding
    # (the prompt's int64 id array: written into the host seed row without converting a list)
    seen: torch.Tensor = row_field(torch.bool, False, TokenSet(lambda seg, gen: seg.row.prompt.token_array()), "vocab")
    out_tokens: torch.Tensor = row_field(torch.long, 0, None, "out")

    @classmethod
    def allocate(cls, rows: int, widths: dict[str, int], device) -> "RowState":
        """Device tensors for `rows` rows; `widths` gives each named width (block, vocab, out)."""
        tensors = {}
        for f in dataclasses.fields(cls):
            m = f.metadata
            shape = (rows,) if m["width"] is None else (rows, widths[m["width"]])
            tensors[f.name] = torch.full(shape, m["free"], dtype=m["dtype"], device=device)
        return cls(**tensors)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def reset(self) -> None:
        """Every row free (warm-up runs and captures see lengths inside every bucket)."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).fill_(f.metadata["free"])

    def snapshot(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows `index` as CPU tensors (a paused generation)."""
        return {name: t[index].cpu() for name, t in self.tensors().items()}

    def restore(self, saved: dict[str, torch.Tensor], index: torch.Tensor) -> None:
        for name, t in self.tensors().items():
            t[index] = saved[name].to(t.device)

    # ------------------------------------------------------------------ prefill seeds

    @classmethod
    def seeded(cls) -> dict[str, object]:
        """Field name -> seed, for the fields a prefill sets."""
        return {f.name: f.metadata["seed"] for f in dataclasses.fields(cls) if f.metadata["seed"] is not None}

    @classmethod
    def seed_inputs(cls, rows: int, set_width: int, pad_id: int, device) -> dict[str, torch.Tensor]:
        """Device input buffers of the host-computed seeds: one value per segment, or the token
        ids of a TokenSet ([rows, set_width], padded with `pad_id`)."""
        out = {}
        for f in dataclasses.fields(cls):
            seed = f.metadata["seed"]
            if isinstance(seed, FromSegments):
                out[f.name] = torch.full((rows,), f.metadata["free"], dtype=f.metadata["dtype"], device=device)
            elif isinstance(seed, TokenSet):
                out[f.name] = torch.full((rows, set_width), pad_id, dtype=torch.long, device=device)
        return out

    @classmethod
    def fill_seeds(cls, host: dict, segments: list, gen, pad_id: int) -> None:
        """Host (numpy) seed inputs of `segments`; rows past them are padding segments, which
        seed no row."""
        for name, seed in cls.seeded().items():
            if isinstance(seed, FromSegments):
                host[name][: len(segments)] = seed.values(segments, gen)
            elif isinstance(seed, TokenSet):
                for i, seg in enumerate(segments):
                    ids = seed.ids(seg, gen)
                    host[name][i, : len(ids)] = ids
                    host[name][i, len(ids) :] = pad_id

    def seed(self, inputs: dict[str, torch.Tensor], b: int, hit: torch.Tensor, src: torch.Tensor) -> None:
        """Rows `hit` take the seeds of prefill segment `src` (of the first `b`); other rows keep
        their state (they may be decoding). Graph-safe: masked copies, no host reads."""
        for name, seed in self.seeded().items():
            state = getattr(self, name)
            if isinstance(seed, FromSegments):
                new = inputs[name][:b]
                if state.dim() == 2:
                    new = new[:, None].expand(b, state.shape[1])
            elif isinstance(seed, TokenSet):
                new = torch.zeros(b, state.shape[1], dtype=state.dtype, device=state.device)
                new.scatter_(1, inputs[name][:b], True)
            else:
                new = torch.full((b, *state.shape[1:]), seed, dtype=state.dtype, device=state.device)
            mask = hit.view(-1, *([1] * (state.dim() - 1)))
            state.copy_(torch.where(mask, new[src], state))

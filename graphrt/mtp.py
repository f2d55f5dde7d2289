"""Parallel box decoding: from the 6 window rows of logits to the tokens a step accepts.

`propose` builds a 6-token proposal per row (empty frame / legal box / reference text / raw
argmax), `accept` is the stock pattern handler that decides how many proposal tokens stay.
Both are batched over rows on device tensors, with no host round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

from .config import TokenIds

MODES = ("fast", "hybrid", "slow")  # fast: MTP only; hybrid: MTP, AR after a broken box; slow: AR only


class StepKind(IntEnum):
    FINISH = 0  # proposal starts with null / im_end: append im_end and stop
    EMPTY = 1  # <box> none </box>
    BOX = 2  # <box> x1 y1 x2 y2 </box>
    POINT = 3  # <box> x y </box>
    BROKEN_BOX = 4  # <box> ... that is neither: 'fast' keeps all 6, 'hybrid' keeps the coordinates and goes AR
    REF = 5  # reference text (cut at the first null)


@dataclass(frozen=True)
class MTPConfig:
    """Thresholds of the stock decoder (generate_utils.py)."""

    keep_k: int = 4  # candidates per coordinate slot (sample_tokens passes keep_k_avg, default 4)
    box_start_thresh: float = 0.7
    empty_none_thresh: float = 0.2
    empty_end_thresh: float = 0.2
    empty_null_thresh: float = 0.1
    legal_end_thresh: float = 0.2
    ref_start_thresh: float = 0.6
    ref_keep_k: int = 5
    # 'hybrid' only: a coordinate whose best prob < 0.9 while its candidates spread > 60 becomes 0.
    abnormal_prob: float = 0.9
    abnormal_spread: int = 60


def _is_coord(x: torch.Tensor, ids: TokenIds) -> torch.Tensor:
    return (x >= ids.coord_start) & (x <= ids.coord_end)


def _first_match(candidates: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """The first candidate (in top-k order) for which ok holds, per slot."""
    return candidates.gather(-1, ok.long().argmax(dim=-1, keepdim=True)).squeeze(-1)


def candidates(probs: torch.Tensor, cfg: MTPConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k lists `propose` reads: (probs [B, 4, keep_k], ids [B, 4, keep_k]) of slots 1-4 and
    ids [B, 5, ref_keep_k] of slots 1-5. One function, so the fused step tail
    (graphrt/kernels/step_tail.py) reads exactly the lists, tie order included, that this path reads."""
    top_p, top_i = torch.topk(probs[:, 1:5], cfg.keep_k, dim=-1)
    ref_i = torch.topk(probs[:, 1:], cfg.ref_keep_k, dim=-1)[1]
    return top_p, top_i, ref_i


def propose(probs: torch.Tensor, x0: torch.Tensor, ids: TokenIds, mode: str, cfg: MTPConfig = MTPConfig()) -> torch.Tensor:
    """probs [B, 6, V], x0 [B, 6] (argmax or drawn) -> proposal [B, 6]."""
    b = probs.shape[0]
    full = lambda token: torch.full((b,), token, dtype=x0.dtype, device=x0.device)  # noqa: E731
    p = probs
    empty = (
        (p[:, 0, ids.box_start] >= cfg.box_start_thresh)
        & (p[:, 1, ids.none] > cfg.empty_none_thresh)
        & (p[:, 2, ids.box_end] > cfg.empty_end_thresh)
        & (p[:, 3, ids.null] > cfg.empty_null_thresh)
        & (p[:, 4, ids.null] > cfg.empty_null_thresh)
    )
    # Stack then sum, as the reference sums probs[5, [</box>, null, im_end]] (one rounding in bf16).
    enders = torch.stack([p[:, 5, ids.box_end], p[:, 5, ids.null], p[:, 5, ids.im_end]], dim=-1)
    legal = ~empty & (enders.sum(-1) >= cfg.legal_end_thresh)

    top_p, top_i, ref_i = candidates(p, cfg)
    coord_ok = _is_coord(top_i, ids)
    coords = _first_match(top_i, coord_ok)
    if mode == "hybrid":
        best = top_p.gather(-1, coord_ok.long().argmax(-1, keepdim=True)).squeeze(-1)
        spread = torch.where(coord_ok, top_i, -(10**6)).amax(-1) - torch.where(coord_ok, top_i, 10**6).amin(-1)
        abnormal = (best < cfg.abnormal_prob) & (coord_ok.sum(-1) > 1) & (spread > cfg.abnormal_spread)
        coords = torch.where(abnormal, torch.zeros_like(coords), coords)
    box = legal & coord_ok.any(-1).all(-1)

    text_ok = ~_is_coord(ref_i, ids)
    ref = ~empty & ~box & (p[:, 0, ids.ref_start] >= cfg.ref_start_thresh) & text_ok.any(-1).all(-1)

    empty_prop = torch.stack([full(ids.box_start), full(ids.none), full(ids.box_end)] + [full(ids.null)] * 3, dim=1)
    box_prop = torch.cat([full(ids.box_start)[:, None], coords.to(x0.dtype), full(ids.box_end)[:, None]], dim=1)
    ref_prop = torch.cat([full(ids.ref_start)[:, None], _first_match(ref_i, text_ok).to(x0.dtype)], dim=1)
    out = torch.where(ref[:, None], ref_prop, x0)
    out = torch.where(box[:, None], box_prop, out)
    return torch.where(empty[:, None], empty_prop, out)


def accept(x: torch.Tensor, ids: TokenIds, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stock pattern handler. x [B, 6] -> (tokens [B, 6], count [B], kind [B]); tokens[:, :count] are kept."""
    first = x[:, 0]
    finish = (first == ids.null) | (first == ids.im_end)
    empty = ~finish & (first == ids.box_start) & (x[:, 1] == ids.none)
    is_box = ~finish & ~empty & (first == ids.box_start)
    lead = _is_coord(x[:, 1:5], ids).long().cumprod(dim=-1).sum(dim=-1)  # leading coordinates, 0..4
    full_box = is_box & (lead == 4) & (x[:, 5] == ids.box_end)
    point = is_box & ~full_box & (lead == 2) & (x[:, 3] == ids.box_end)
    broken = is_box & ~full_box & ~point
    ref = ~finish & ~empty & ~is_box

    width = x.shape[1]
    is_null = x == ids.null
    ref_len = torch.where(is_null.any(-1), is_null.long().argmax(-1), torch.full_like(lead, width))
    last = x.gather(1, (ref_len - 1).clamp(min=0)[:, None]).squeeze(1)
    before = x.gather(1, (ref_len - 2).clamp(min=0)[:, None]).squeeze(1)
    ref_len = ref_len - ((ref_len >= 2) & (last == ids.ref_end) & (before == ids.ref_end)).long()

    broken_len = torch.full_like(lead, width) if mode == "fast" else 1 + lead
    count = torch.full_like(lead, width)
    count = torch.where(point, torch.full_like(lead, 4), count)
    count = torch.where(broken, broken_len, count)
    count = torch.where(ref, ref_len, count)
    count = torch.where(empty, torch.full_like(lead, 3), count)
    count = torch.where(finish, torch.ones_like(lead), count)

    tokens = x.clone()
    tokens[:, 0] = torch.where(finish, torch.full_like(first, ids.im_end), first)
    tokens[:, 2] = torch.where(empty, torch.full_like(first, ids.box_end), tokens[:, 2])

    kind = torch.full_like(lead, int(StepKind.REF))
    for flag, k in ((full_box, StepKind.BOX), (point, StepKind.POINT), (broken, StepKind.BROKEN_BOX),
                    (empty, StepKind.EMPTY), (finish, StepKind.FINISH)):
        kind = torch.where(flag, torch.full_like(kind, int(k)), kind)
    return tokens, count, kind


def ar_switch(token: torch.Tensor, ids: TokenIds, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """After an AR token: (finish [B], back_to_mtp [B]). 'hybrid' returns to MTP after </box> and
    stops on anything that is not a coordinate, `none` or </box>; 'slow' stops only on im_end."""
    if mode == "slow":
        return token == ids.im_end, torch.zeros_like(token, dtype=torch.bool)
    back = token == ids.box_end
    stay = _is_coord(token, ids) | (token == ids.none)
    return ~back & ~stay, back

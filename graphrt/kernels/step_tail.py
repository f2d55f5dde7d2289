"""The end of an MTP step in one Triton kernel: proposal (empty frame / legal box / reference text /
raw choice), the stock pattern handler ('fast' mode), and the per-row state update (out tokens,
seen ids, pending window, counts, cache length, finished flags, all_done).

Exactness by construction, not by tolerance. The kernel takes the same inputs the torch tail
reads and makes only integer and comparison decisions on them:

- `probs`: torch's softmax bits (graphrt.sampler.probabilities; step_softmax reproduces them);
- `x0`: torch's own argmax / seeded draw (graphrt.sampler.choose);
- the top-k lists: graphrt.mtp.candidates, the very function `propose` calls, so the same
  indices in the same tie order; or graphrt/kernels/step_topk.py's, which re-derive torch CUDA's
  tie order from its source and are checked equal to torch's on the device before use;
- thresholds: torch compares a bf16/fp16 tensor with a Python float by first rounding the float
  to the tensor's dtype (0.7 -> 0.69921875 in bf16); the kernel gets the thresholds rounded the
  same way and compares exactly in fp32;
- the one arithmetic step, probs[5, </box>] + probs[5, null] + probs[5, im_end], is summed in fp32
  in that order and rounded once to the probs dtype, as torch's sum of the stacked three does.

What it replaces: ~150 small torch kernels of propose/accept/state update (0.3-0.5 ms per step on
the H100) with one launch. The argmax and the two top-k calls are step_topk's two kernels
(torch's where its build check fails, or GRAPHRT_STEP_TOPK=torch); the softmax is
graphrt/kernels/step_softmax.py's, bit-equal to torch's (checked at build, torch's otherwise).
`GRAPHRT_STEP_TAIL=torch` keeps the torch tail on the fused kernel set (A/B runs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphrt.kernels import env_choice
from graphrt.kernels.pdl_ops import pdl_enter
from graphrt.kernels.step_softmax import end_launch
from graphrt.mtp import MTPConfig, StepKind, candidates


@triton.jit
def _col(x, j, c):
    """Column c of a [rows, cols] tile as a [rows] vector (c may be a per-row vector)."""
    return tl.sum(tl.where(j == c, x, 0), axis=1)


@triton.jit
def _p(row0, slot, token, V, live1):
    """probs[row, slot, token] of every row as fp32 (exact: a bf16/fp16 value)."""
    return tl.load(row0 + slot * V + token, mask=live1, other=0.0).to(tl.float32)


@triton.jit
def _first_match(cand_ptr, r, j, live, slot0, n_slots, KK: tl.constexpr, LO, HI, WANT_COORD: tl.constexpr):
    """For columns j in [slot0, slot0 + n_slots): the first of the KK candidates (in list order) that
    is (or, WANT_COORD false, is not) a coordinate id, else the first candidate; and whether any is."""
    use = live & (j >= slot0) & (j < slot0 + n_slots)
    base = cand_ptr + (r * n_slots + (j - slot0)) * KK
    sel = tl.load(base, mask=use, other=0)
    ok = (sel >= LO) & (sel <= HI)
    if not WANT_COORD:
        ok = ~ok
    found = ok
    for t in tl.static_range(1, KK):
        cand = tl.load(base + t, mask=use, other=0)
        hit = (cand >= LO) & (cand <= HI)
        if not WANT_COORD:
            hit = ~hit
        sel = tl.where(~found & hit, cand, sel)
        found = found | hit
    return sel, found


@triton.jit
def _step_tail_kernel(probs_ptr, x0_ptr, top_ptr, ref_ptr,
                      pend_ptr, count_ptr, clen_ptr, ngen_ptr, budget_ptr, fin_ptr, ended_ptr, steps_ptr,
                      limit_ptr, ignore_ptr, seen_ptr, out_ptr, done_ptr, src_ptr, hit_ptr,
                      B, V, stride_pend, stride_seen, stride_out,
                      BOX_START, BOX_END, REF_START, REF_END, COORD_START, COORD_END, NONE, NULL, IM_END,
                      TH_BOX, TH_NONE, TH_END, TH_NULL, TH_LEGAL, TH_REF,
                      W: tl.constexpr, KK: tl.constexpr, KR: tl.constexpr, MAPPED: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)  # PDL launches: every read below comes after the previous kernel completed
    # Lane r1 updates state row r1. Unmapped (a step): its logits are row r1's. MAPPED (the first
    # round inside a prefill): its logits are segment src[r1]'s, and only rows with hit[r1] move.
    r1 = tl.arange(0, BLOCK_B)
    live1 = r1 < B
    if MAPPED:
        g1 = tl.load(src_ptr + r1, mask=live1, other=0)
        hit1 = tl.load(hit_ptr + r1, mask=live1, other=0) != 0
    else:
        g1 = r1
        hit1 = live1
    r = r1[:, None]
    g = g1[:, None]
    j = tl.arange(0, BLOCK_W)[None, :]
    live = live1[:, None] & (j < W)
    pdt = probs_ptr.dtype.element_ty
    row0 = probs_ptr + (g1 * W).to(tl.int64) * V
    # ---- proposal (graphrt.mtp.propose, mode 'fast')
    empty = ((_p(row0, 0, BOX_START, V, live1) >= TH_BOX) & (_p(row0, 1, NONE, V, live1) > TH_NONE)
             & (_p(row0, 2, BOX_END, V, live1) > TH_END) & (_p(row0, 3, NULL, V, live1) > TH_NULL)
             & (_p(row0, 4, NULL, V, live1) > TH_NULL))
    enders = _p(row0, 5, BOX_END, V, live1) + _p(row0, 5, NULL, V, live1)
    enders = (enders + _p(row0, 5, IM_END, V, live1)).to(pdt).to(tl.float32)  # one rounding, as torch's sum
    legal = ~empty & (enders >= TH_LEGAL)
    coords, coord_ok = _first_match(top_ptr, g, j, live, 1, 4, KK, COORD_START, COORD_END, True)
    slots14 = (j >= 1) & (j <= 4)
    box = legal & (tl.min(tl.where(slots14, coord_ok.to(tl.int32), 1), axis=1) == 1)
    text, text_ok = _first_match(ref_ptr, g, j, live, 1, 5, KR, COORD_START, COORD_END, False)
    slots15 = (j >= 1) & (j <= 5)
    ref = (~empty & ~box & (_p(row0, 0, REF_START, V, live1) >= TH_REF)
           & (tl.min(tl.where(slots15, text_ok.to(tl.int32), 1), axis=1) == 1))

    x = tl.load(x0_ptr + g * W + j, mask=live, other=0)
    ref_prop = tl.where(j == 0, REF_START, text)
    box_prop = tl.where(j == 0, BOX_START, tl.where(j == 5, BOX_END, coords))
    empty_prop = tl.where(j == 0, BOX_START, tl.where(j == 1, NONE, tl.where(j == 2, BOX_END, NULL)))
    x = tl.where(ref[:, None], ref_prop, x)
    x = tl.where(box[:, None], box_prop, x)
    x = tl.where(empty[:, None], empty_prop, x)
    x = tl.where(live, x, 0)

    # ---- pattern handler (graphrt.mtp.accept, mode 'fast')
    first = _col(x, j, 0)
    finish = (first == NULL) | (first == IM_END)
    a_empty = ~finish & (first == BOX_START) & (_col(x, j, 1) == NONE)
    is_box = ~finish & ~a_empty & (first == BOX_START)
    is_coord = (x >= COORD_START) & (x <= COORD_END)
    lead = tl.min(tl.where(slots14 & ~is_coord, j, 5), axis=1) - 1  # leading coordinates of x[1:5]
    full_box = is_box & (lead == 4) & (_col(x, j, 5) == BOX_END)
    point = is_box & ~full_box & (lead == 2) & (_col(x, j, 3) == BOX_END)
    broken = is_box & ~full_box & ~point
    a_ref = ~finish & ~a_empty & ~is_box
    ref_len = tl.min(tl.where((x == NULL) & (j < W), j, W), axis=1)
    last = _col(x, j, tl.maximum(ref_len - 1, 0)[:, None])
    before = _col(x, j, tl.maximum(ref_len - 2, 0)[:, None])
    ref_len = ref_len - ((ref_len >= 2) & (last == REF_END) & (before == REF_END)).to(ref_len.dtype)
    count = tl.full((BLOCK_B,), W, tl.int64)
    count = tl.where(point, 4, count)
    count = tl.where(broken, W, count)  # 'fast' keeps all of a broken box
    count = tl.where(a_ref, ref_len.to(tl.int64), count)
    count = tl.where(a_empty, 3, count)
    count = tl.where(finish, 1, count)
    tokens = tl.where((j == 0) & finish[:, None], IM_END, x)
    tokens = tl.where((j == 2) & a_empty[:, None], BOX_END, tokens)

    # ---- state update (capture/pipeline.py, StaticPipeline.step's torch tail)
    fin = tl.load(fin_ptr + r1, mask=live1, other=1) != 0
    active = ~fin & live1 & hit1
    k = tl.load(count_ptr + r1, mask=live1, other=1)
    c = tl.load(clen_ptr + r1, mask=live1, other=0)
    n_gen = tl.load(ngen_ptr + r1, mask=live1, other=0)
    steps = tl.load(steps_ptr + r1, mask=live1, other=0)
    keep = (j < count[:, None]) & active[:, None] & live
    tl.store(out_ptr + r * stride_out + n_gen[:, None] + j, tokens, mask=keep)
    tl.store(seen_ptr + r * stride_seen + tl.where(keep, tokens, V), tl.full((BLOCK_B, BLOCK_W), 1, tl.int8),
             mask=live)
    src = tl.maximum(j - (W - count)[:, None], 0)  # new pending window, right-aligned
    new_pending = tokens
    for s in tl.static_range(W):
        new_pending = tl.where(src == s, _col(tokens, j, s)[:, None], new_pending)
    pend = tl.load(pend_ptr + r * stride_pend + j, mask=live, other=0)
    tl.store(pend_ptr + r * stride_pend + j, tl.where(active[:, None], new_pending, pend), mask=live)
    tl.store(count_ptr + r1, tl.where(active, count, k), mask=live1)
    tl.store(clen_ptr + r1, tl.where(active, c + k, c), mask=live1)
    new_n = n_gen + count
    tl.store(ngen_ptr + r1, tl.where(active, new_n, n_gen), mask=live1)
    new_steps = steps + active.to(steps.dtype)
    tl.store(steps_ptr + r1, new_steps, mask=live1)
    end = active & finish & (tl.load(ignore_ptr + r1, mask=live1, other=0) == 0)
    ended = (tl.load(ended_ptr + r1, mask=live1, other=0) != 0) | end
    tl.store(ended_ptr + r1, ended.to(tl.int8), mask=live1)
    over = (new_n >= tl.load(budget_ptr + r1, mask=live1, other=0)) | (new_steps >= tl.load(limit_ptr + r1, mask=live1,
                                                                                             other=0))
    finished = fin | end | (active & over)
    tl.store(fin_ptr + r1, finished.to(tl.int8), mask=live1)
    all_done = tl.min(tl.where(live1, finished.to(tl.int32), 1), axis=0)
    tl.store(done_ptr, all_done.to(tl.int8))


def enabled() -> bool:
    """Whether the fused kernel set runs this tail (GRAPHRT_STEP_TAIL=torch: the torch tail, for A/B)."""
    return env_choice("GRAPHRT_STEP_TAIL", ("fused", "torch")) == "fused"


def _as_u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def step_tail(state, b: int, probs: torch.Tensor, x0: torch.Tensor, ids, cfg: MTPConfig = MTPConfig(),
              src: torch.Tensor | None = None, hit: torch.Tensor | None = None,
              lists: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """From the step's probabilities [b, 6, V] and choices x0 [b, 6] to the next state, in place on
    `state` (a StaticPipeline: pending, pending_count, cache_len, n_gen, budget, finished, ended,
    steps, step_limit, ignore_end, seen [rows, V+1], out_tokens, all_done; rows [0, b)).

    src/hit [R] (the first round inside a prefill, whose logits rows are prompt segments): state
    rows [0, R) take segment src[r]'s logits where hit[r], the others stay; all_done is then over
    rows [0, R).

    lists: (top_i, ref_i) already made (graphrt/kernels/step_topk.py, checked equal to
    graphrt.mtp.candidates' torch.topk lists); None: candidates runs here."""
    assert int(StepKind.FINISH) == 0
    mapped = src is not None
    rows = hit.shape[0] if mapped else b
    width = probs.shape[1]
    probs = probs.contiguous()
    top_i, ref_i = lists if lists is not None else candidates(probs, cfg)[1:]
    round_ = lambda v: torch.tensor(v, dtype=probs.dtype).item()  # noqa: E731  (as torch compares)
    for t in (state.pending, state.seen, state.out_tokens):
        assert t.stride(1) == 1
    _step_tail_kernel[(1,)](
        probs, x0.contiguous(), top_i.contiguous(), ref_i.contiguous(),
        state.pending, state.pending_count, state.cache_len, state.n_gen, state.budget, _as_u8(state.finished),
        _as_u8(state.ended), state.steps, state.step_limit, _as_u8(state.ignore_end), _as_u8(state.seen),
        state.out_tokens, _as_u8(state.all_done), src if mapped else x0, _as_u8(hit) if mapped else x0,
        rows, probs.shape[2], state.pending.stride(0), state.seen.stride(0), state.out_tokens.stride(0),
        ids.box_start, ids.box_end, ids.ref_start, ids.ref_end, ids.coord_start, ids.coord_end, ids.none, ids.null,
        ids.im_end,
        round_(cfg.box_start_thresh), round_(cfg.empty_none_thresh), round_(cfg.empty_end_thresh),
        round_(cfg.empty_null_thresh), round_(cfg.legal_end_thresh), round_(cfg.ref_start_thresh),
        W=width, KK=cfg.keep_k, KR=cfg.ref_keep_k, MAPPED=mapped, BLOCK_B=max(2, triton.next_power_of_2(rows)),
        BLOCK_W=triton.next_power_of_2(width), num_warps=1, **end_launch(probs, probs.shape[0] * width))

"""Proposal builder and pattern handler: every branch on hand-made probabilities, and the
batched GPU-style code against a plain per-row transcription of the stock decoder."""

from __future__ import annotations

import pytest
import torch

from graphrt.mtp import StepKind, accept, ar_switch, propose
from references import stock_pattern, stock_proposal
from weights.presets import PRESETS

IDS = PRESETS["tiny"].config.tokens
V = PRESETS["tiny"].config.text.vocab_size
C = IDS.coord_start


def peaked(rows: list[dict[int, float]]) -> torch.Tensor:
    """[1, 6, V] probabilities with the given mass per slot, the rest spread evenly."""
    probs = torch.zeros(1, 6, V)
    for slot, mass in enumerate(rows):
        rest = 1.0 - sum(mass.values())
        probs[0, slot] = rest / (V - len(mass))
        for tok, p in mass.items():
            probs[0, slot, tok] = p
    return probs


def run(probs: torch.Tensor, mode: str = "fast"):
    x0 = probs.argmax(-1)
    proposal = propose(probs, x0, IDS, mode)
    tokens, count, kind = accept(proposal, IDS, mode)
    return proposal[0].tolist(), tokens[0, : int(count)].tolist(), StepKind(int(kind))


def test_empty_frame():
    probs = peaked([{IDS.box_start: 0.8}, {IDS.none: 0.3}, {IDS.box_end: 0.3}, {IDS.null: 0.2}, {IDS.null: 0.2},
                    {7: 0.9}])
    proposal, kept, kind = run(probs)
    assert proposal == [IDS.box_start, IDS.none, IDS.box_end, IDS.null, IDS.null, IDS.null]
    assert kept == [IDS.box_start, IDS.none, IDS.box_end] and kind == StepKind.EMPTY


def test_legal_box_takes_first_coordinate_in_topk_even_when_not_argmax():
    # Slot 2's argmax is a text token; its best coordinate (2nd in top-4) is used.
    probs = peaked([{IDS.box_start: 0.5}, {C + 10: 0.6}, {50: 0.5, C + 20: 0.3}, {C + 300: 0.7}, {C + 400: 0.7},
                    {IDS.box_end: 0.25}])
    proposal, kept, kind = run(probs)
    assert kept == [IDS.box_start, C + 10, C + 20, C + 300, C + 400, IDS.box_end] and kind == StepKind.BOX
    assert proposal == kept


def test_box_needs_end_mass_in_slot5():
    probs = peaked([{IDS.box_start: 0.5}, {C + 10: 0.6}, {C + 20: 0.6}, {C + 30: 0.6}, {C + 40: 0.6},
                    {IDS.box_end: 0.05, IDS.null: 0.05, IDS.im_end: 0.05, 9: 0.8}])
    proposal, _, _ = run(probs)
    assert proposal == [IDS.box_start, C + 10, C + 20, C + 30, C + 40, 9]  # raw argmax


def test_reference_text_proposal():
    probs = peaked([{IDS.ref_start: 0.7}, {C + 1: 0.5, 60: 0.2}, {61: 0.5}, {IDS.ref_end: 0.5}, {IDS.null: 0.5},
                    {IDS.null: 0.5}])
    proposal, kept, kind = run(probs)
    assert proposal == [IDS.ref_start, 60, 61, IDS.ref_end, IDS.null, IDS.null]
    assert kept == [IDS.ref_start, 60, 61, IDS.ref_end] and kind == StepKind.REF


def test_fallback_to_argmax_and_cut_at_null():
    probs = peaked([{70: 0.5}, {71: 0.5}, {IDS.null: 0.5}, {72: 0.5}, {73: 0.5}, {74: 0.5}])
    proposal, kept, kind = run(probs)
    assert proposal == [70, 71, IDS.null, 72, 73, 74] and kept == [70, 71] and kind == StepKind.REF


@pytest.mark.parametrize("first", [IDS.im_end, IDS.null])
def test_finish(first):
    probs = peaked([{first: 0.9}, {1: 0.9}, {2: 0.9}, {3: 0.9}, {4: 0.9}, {5: 0.9}])
    _, kept, kind = run(probs)
    assert kept == [IDS.im_end] and kind == StepKind.FINISH


@pytest.mark.parametrize(
    "x, mode, kept, kind",
    [
        ([IDS.box_start, C + 1, C + 2, IDS.box_end, 5, 6], "fast", [IDS.box_start, C + 1, C + 2, IDS.box_end],
         StepKind.POINT),
        ([IDS.box_start, C + 1, 9, 9, 9, 9], "fast", [IDS.box_start, C + 1, 9, 9, 9, 9], StepKind.BROKEN_BOX),
        ([IDS.box_start, C + 1, 9, 9, 9, 9], "hybrid", [IDS.box_start, C + 1], StepKind.BROKEN_BOX),
        ([IDS.ref_start, 60, IDS.ref_end, IDS.ref_end, IDS.null, 3], "fast", [IDS.ref_start, 60, IDS.ref_end],
         StepKind.REF),
        ([60, 61, 62, 63, 64, 65], "fast", [60, 61, 62, 63, 64, 65], StepKind.REF),
    ],
)
def test_pattern_handler_cases(x, mode, kept, kind):
    tokens, count, got_kind = accept(torch.tensor([x]), IDS, mode)
    assert tokens[0, : int(count)].tolist() == kept and StepKind(int(got_kind)) == kind


@pytest.mark.parametrize("mode", ["fast", "hybrid"])
def test_batched_decoder_matches_per_row_stock_transcription(mode):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(64):
        logits = torch.randn(6, V, generator=gen) * 3
        # Push some rows towards each branch so all of them are exercised.
        branch = i % 4
        if branch == 0:
            logits[0, IDS.box_start] += 12
            logits[1:5, C : C + 1001] += torch.randn(4, 1001, generator=gen) * 4 + 6
            logits[5, IDS.box_end] += 8
        elif branch == 1:
            logits[0, IDS.box_start] += 14
            logits[1, IDS.none] += 12
            logits[2, IDS.box_end] += 12
            logits[3:, IDS.null] += 12
        elif branch == 2:
            logits[0, IDS.ref_start] += 12
            logits[2:, IDS.null] += torch.rand(1, generator=gen).item() * 12
        rows.append(logits)
    logits = torch.stack(rows)
    probs = torch.softmax(logits, -1)
    x0 = probs.argmax(-1)
    proposal = propose(probs, x0, IDS, mode)
    tokens, count, _ = accept(proposal, IDS, mode)
    kinds = set()
    for b in range(len(rows)):
        want_prop = stock_proposal(probs[b], x0[b].tolist(), IDS, mode)
        want_type, want_kept = stock_pattern(want_prop, IDS, mode)
        kinds.add(want_type)
        assert proposal[b].tolist() == want_prop, b
        assert tokens[b, : int(count[b])].tolist() == want_kept, b
    assert {"coord_box", "empty_box", "ref_object"} <= kinds


def test_ar_switch_rules():
    tok = torch.tensor([IDS.box_end, C + 5, IDS.none, 77, IDS.im_end])
    finish, back = ar_switch(tok, IDS, "hybrid")
    assert finish.tolist() == [False, False, False, True, True] and back.tolist() == [True, False, False, False, False]
    finish, back = ar_switch(tok, IDS, "slow")
    assert finish.tolist() == [False, False, False, False, True] and not back.any()

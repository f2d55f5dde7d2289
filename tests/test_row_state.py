"""The graph runtime's per-row state is declared once (capture/state.py): a field added to the
declaration is allocated, reset, seeded by a prefill from host values, snapshotted and restored
with no other edit. Checked here on a declaration with one extra field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from capture.state import RowState, per_segment, row_field
from graphrt.decode import PAUSED_TENSORS, GenerationConfig
from graphrt.prompt import Prompt
from graphrt.request import Row


@dataclass
class WithPromptLen(RowState):
    prompt_len: torch.Tensor = row_field(torch.long, -1, per_segment(lambda seg, gen: len(seg.row.prompt.ids)))


@dataclass
class Segment:  # what the runtime's prefill segments carry
    row: Row
    target: int
    end: int
    budget: int


def segment(index: int, ids: list[int], target: int) -> Segment:
    return Segment(Row.of_prompt(Prompt(ids, 0, 0, 0), index), target, len(ids) - 1, 9)


def test_a_declared_field_goes_everywhere():
    rows, vocab, widths = 4, 16, {"block": 6, "vocab": 17, "out": 8}
    state = WithPromptLen.allocate(rows, widths, "cpu")
    assert state.prompt_len.tolist() == [-1] * 4  # allocated at its free value
    inputs = WithPromptLen.seed_inputs(rows, 8, vocab, "cpu")
    assert "prompt_len" in inputs
    host = {name: t.numpy() for name, t in inputs.items()}
    segments = [segment(5, [1, 2, 3], target=2), segment(6, [4, 5, 6, 7, 8], target=0)]
    WithPromptLen.fill_seeds(host, segments, GenerationConfig(seed=1), vocab)
    assert host["prompt_len"][:2].tolist() == [3, 5]
    hit = torch.tensor([True, False, True, False])
    src = torch.tensor([1, 0, 0, 0])  # cache row 0 <- segment 1, cache row 2 <- segment 0
    state.seed(inputs, 2, hit, src)
    assert state.prompt_len.tolist() == [5, -1, 3, -1]
    assert state.pending[2].tolist() == [3] * 6 and state.cache_len.tolist() == [4, 1, 2, 1]
    assert np.flatnonzero(state.seen[0].numpy()).tolist() == [4, 5, 6, 7, 8, vocab]  # column V: padding
    saved = state.snapshot(torch.tensor([2, 0]))
    assert set(saved) == set(PAUSED_TENSORS) | {"prompt_len"}
    state.reset()
    assert state.prompt_len.tolist() == [-1] * 4 and state.finished.all()
    state.restore(saved, torch.tensor([1, 3]))
    assert state.prompt_len.tolist() == [-1, 3, -1, 5]


def test_the_pause_format_is_the_state():
    """Every tensor of the shared pause format is a field of the graph runtime's state."""
    names = set(RowState.allocate(1, {"block": 1, "vocab": 1, "out": 1}, "cpu").tensors())
    assert names == set(PAUSED_TENSORS)

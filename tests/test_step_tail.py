"""The fused step tail (graphrt/kernels/step_tail.py) against the torch tail of the graph path
(capture.pipeline.StaticPipeline.torch_tail), state tensor for state tensor, on crafted
probabilities: every proposal kind and pattern-handler branch, thresholds hit exactly at their
dtype-rounded values and one step either side, the enders' sum on its rounding edge, top-k lists
full of ties, finished / budget / step-limit / ignore-end rows. CPU through Triton's interpreter;
the same cases on the GPU (marked gpu)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from capture.pipeline import StaticPipeline
from graphrt.config import TokenIds
from graphrt.mtp import MTPConfig

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

IDS = TokenIds(image=9, box_start=1, box_end=2, ref_start=3, ref_end=4, coord_start=40, coord_end=80, none=5,
               null=6, switch=7, im_end=8, text_mask=10)
V, W = 96, 6


def _step_dtype(t: torch.Tensor, up: bool) -> float:
    """The neighbour of a bf16/fp16 value in its own dtype (one unit in the last place)."""
    bits = t.view(torch.int16 if t.dtype != torch.float32 else torch.int32)
    return (bits + (1 if up else -1)).view(t.dtype).item()


def _edge(v: float, dtype, gen, strict: bool = False) -> float:
    """A threshold's value as the dtype rounds it, or its neighbour below or above; mostly values
    that pass the test (>=, or > when strict), so that rows reach the later conditions."""
    r = torch.tensor(v, dtype=dtype)
    passing = _step_dtype(r, True) if strict else r.item()
    return [passing, passing, r.item(), _step_dtype(r, False), _step_dtype(r, True)][
        int(torch.randint(0, 5, (), generator=gen))]


def crafted_batch(b: int, dtype, gen: torch.Generator):
    """probs [b, W, V] and x0 [b, W] steering rows into every branch; values from a few levels so
    that the top-k lists hold ties."""
    cfg = MTPConfig()
    levels = torch.tensor([0.0, 0.001, 0.01, 0.02, 0.05], dtype=dtype)
    probs = levels[torch.randint(0, len(levels), (b, W, V), generator=gen)]
    specials = [IDS.box_start, IDS.box_end, IDS.ref_start, IDS.ref_end, IDS.none, IDS.null, IDS.im_end]
    pool = torch.tensor(specials + list(range(38, 84)) + [11, 12, 90])  # specials, coords and their edges, text
    x0 = pool[torch.randint(0, len(pool), (b, W), generator=gen)]
    for r in range(b):
        kind = int(torch.randint(0, 6, (), generator=gen))
        e = lambda v: _edge(v, dtype, gen)  # noqa: E731
        if kind == 0:  # an empty frame near every threshold
            probs[r, 0, IDS.box_start] = e(cfg.box_start_thresh)
            probs[r, 1, IDS.none] = _edge(cfg.empty_none_thresh, dtype, gen, True)
            probs[r, 2, IDS.box_end] = _edge(cfg.empty_end_thresh, dtype, gen, True)
            probs[r, 3, IDS.null] = _edge(cfg.empty_null_thresh, dtype, gen, True)
            probs[r, 4, IDS.null] = _edge(cfg.empty_null_thresh, dtype, gen, True)
        elif kind in (1, 2):  # a box: enders' sum at the legal threshold, coordinates tied with text
            probs[r, 0, IDS.box_start] = 0.9
            third = torch.tensor(cfg.legal_end_thresh / 3, dtype=dtype)
            a = third.item()
            probs[r, 5, IDS.box_end], probs[r, 5, IDS.null] = a, _edge(a, dtype, gen)
            probs[r, 5, IDS.im_end] = _edge(cfg.legal_end_thresh - 2 * a, dtype, gen)
            for s in range(1, 5):
                hot = torch.randint(38, 84, (3,), generator=gen)
                probs[r, s, hot] = 0.6
                if kind == 2:
                    probs[r, s, 11] = 0.6  # a text token tied with the coordinates
        elif kind == 3:  # reference text near its threshold, coordinates tied among the top 5
            probs[r, 0, IDS.ref_start] = e(cfg.ref_start_thresh)
            for s in range(1, 6):
                probs[r, s, torch.randint(38, 84, (4,), generator=gen)] = 0.7
                probs[r, s, int(torch.randint(11, 38, (), generator=gen))] = 0.7
        elif kind == 4:  # x0 drives the handler: finish, ref_end pairs, nulls
            x0[r] = torch.tensor([[IDS.null, 11, 12, 6, 6, 6], [IDS.im_end] * 6, [11, 4, 4, 6, 12, 6],
                                  [11, 12, 4, 4, 4, 90], [IDS.box_start, 41, 42, IDS.box_end, 6, 6],
                                  [IDS.box_start, 41, 42, 43, 44, IDS.box_end], [IDS.box_start, 41, 11, 43, 44, 2],
                                  [IDS.box_start, IDS.none, 7, 6, 6, 6]][int(torch.randint(0, 8, (), generator=gen))])
    return probs, x0


def state(b: int, gen: torch.Generator, device) -> SimpleNamespace:
    ri = lambda lo, hi, *s: torch.randint(lo, hi, s, generator=gen)  # noqa: E731
    rows = b + 2  # rows past b must stay untouched
    n_gen = ri(0, 20, rows)
    s = SimpleNamespace(
        block=W, vocab=V, ids=IDS, mtp=MTPConfig(), arange_blk=torch.arange(W),
        pending=ri(0, V, rows, W), pending_count=ri(1, W + 1, rows), cache_len=ri(1, 500, rows), n_gen=n_gen,
        budget=n_gen + ri(1, 12, rows), finished=ri(0, 4, rows) == 0, ended=ri(0, 2, rows) == 1,
        steps=ri(0, 9, rows), step_limit=ri(1, 12, rows), ignore_end=ri(0, 3, rows) == 0,
        seen=ri(0, 8, rows, V + 1) == 0, out_tokens=torch.zeros(rows, 40, dtype=torch.long),
        all_done=torch.zeros((), dtype=torch.bool))
    s.trash_col = s.out_tokens.shape[1] - 1
    for k, v in vars(s).items():
        if isinstance(v, torch.Tensor):
            setattr(s, k, v.to(device))
    return s


def fields(s):
    out = {k: v.clone() for k, v in vars(s).items() if isinstance(v, torch.Tensor) and k != "arange_blk"}
    out["out_tokens"] = out["out_tokens"][:, :-1]  # the torch tail's trash column takes unkept tokens
    return out


def check(device, dtype, trials: int, b: int) -> int:
    from graphrt.kernels.step_tail import step_tail

    gen = torch.Generator().manual_seed(1)
    compared = 0
    for _ in range(trials):
        probs, x0 = crafted_batch(b, dtype, gen)
        probs, x0 = probs.to(device), x0.to(device)
        seed = int(torch.randint(0, 1 << 30, (), generator=gen))
        ref, got = state(b, torch.Generator().manual_seed(seed), device), state(b, torch.Generator().manual_seed(seed), device)
        StaticPipeline.torch_tail(ref, b, probs, x0)
        step_tail(got, b, probs, x0, IDS, MTPConfig())
        want, have = fields(ref), fields(got)
        for k in want:
            assert torch.equal(want[k], have[k]), (k, want[k], have[k])
        compared += b
    return compared


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="needs TRITON_INTERPRET=1 or a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_step_tail_equals_torch_tail_cpu(dtype):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU case runs in the Triton interpreter")
    assert check("cpu", dtype, trials=40, b=8) == 320


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b", [1, 8, 32])
def test_fused_step_tail_equals_torch_tail_gpu(dtype, b):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    check("cuda", dtype, trials=40, b=b)


def check_mapped(device, dtype, trials: int, b: int) -> None:
    """The first round inside a merged prefill: logits rows are segments, state row r takes segment
    src[r] where hit[r]; rows not hit (decoding rows, padding) stay exactly as they were."""
    from graphrt.kernels.step_tail import step_tail

    gen = torch.Generator().manual_seed(2)
    for _ in range(trials):
        probs, x0 = crafted_batch(b, dtype, gen)
        probs, x0 = probs.to(device), x0.to(device)
        seed = int(torch.randint(0, 1 << 30, (), generator=gen))
        ref, got = state(b, torch.Generator().manual_seed(seed), device), state(b, torch.Generator().manual_seed(seed), device)
        rows = ref.pending.shape[0]
        perm = torch.randperm(rows, generator=gen)
        src = (perm % b).to(device)  # a permutation of segments over rows (each segment one row)
        hit = (torch.randint(0, 3, (rows,), generator=gen) > 0).to(device)
        before = fields(ref)
        StaticPipeline.torch_tail(ref, b, probs, x0, src=src, hit=hit)
        step_tail(got, b, probs, x0, IDS, MTPConfig(), src=src, hit=hit)
        want, have = fields(ref), fields(got)
        for k in want:
            assert torch.equal(want[k], have[k]), (k, want[k], have[k])
        untouched = (~hit).cpu()
        for k in ("pending", "pending_count", "cache_len", "n_gen", "steps", "finished", "ended", "out_tokens"):
            assert torch.equal(want[k].cpu()[untouched], before[k].cpu()[untouched]), k


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_fused_step_tail_mapped_rows_equals_torch_tail(dtype):
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")
    check_mapped("cuda" if torch.cuda.is_available() else "cpu", dtype, trials=20, b=8)

"""The step's top-k lists and argmax (graphrt/kernels/step_topk.py) against torch.

CPU (Triton's interpreter): the kernels against the rule derived from torch's CUDA source
(`reference_topk`, pure Python: selection by (value desc, index asc), gatherTopK's list order,
SmallBitonicSort's network), on tie-heavy rows; and against torch.topk / argmax where no value
ties (where every implementation agrees). GPU (marked gpu): against torch.topk / argmax CUDA bit
for bit on tie-heavy rows at the real vocabulary and B = 1, 8, 32; the self-check refuses a
kernel with a wrong tie order; the fused step tail fed step_topk's lists equals the torch tail."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from graphrt.kernels import step_topk as st  # noqa: E402
from graphrt.mtp import MTPConfig  # noqa: E402

VOCAB = 152_681
interp = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU case runs in the Triton interpreter")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


def test_network_sorts_descending_and_tables_cover_every_weak_order():
    g = torch.Generator().manual_seed(0)
    for n in range(1, 33):
        keys = torch.randn(n, generator=g).tolist()
        out, src = st.bitonic_network(keys, list(range(n)))
        assert out == sorted(keys, reverse=True)
        assert [keys[i] for i in src] == out
    # weak orders of k items: the Fubini numbers
    assert int((st.network_table(4) >= 0).sum()) == 75
    assert int((st.network_table(5) >= 0).sum()) == 541


def test_reference_rule_equals_torch_topk_without_ties():
    g = torch.Generator().manual_seed(1)
    for v in (7, 100, 2000):
        row = torch.randperm(v, generator=g).to(torch.float16)  # integers <= 2048: exact, distinct
        for k in (1, 4, 5):
            assert st.reference_topk(row, k) == torch.topk(row.float(), k).indices.tolist()


def _check_against_rule(b: int, v: int, dtype, seed: int) -> int:
    tables = st._Tables("cpu", 4, 5)
    n = 0
    for probs in st.check_probs(b, v, dtype, "cpu", seed=seed):
        am, ti, ri = st.fused_lists(probs, tables)
        assert torch.equal(am, probs.float().argmax(-1))  # argmax: the first maximal index, documented
        for r in range(b):
            for s in range(6):
                row = probs[r, s]
                if 1 <= s <= 4:
                    assert ti[r, s - 1].tolist() == st.reference_topk(row, 4), (r, s)
                if s >= 1:
                    assert ri[r, s - 1].tolist() == st.reference_topk(row, 5), (r, s)
                n += 1
    return n


@interp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernels_equal_derived_rule_on_tie_heavy_rows(dtype):
    assert _check_against_rule(2, 9000, dtype, seed=3) == 2 * 6 * 6


@interp
def test_kernels_equal_torch_topk_without_ties():
    g = torch.Generator().manual_seed(2)
    v = 2000
    probs = torch.stack([torch.randperm(v, generator=g) for _ in range(12)]).to(torch.float16).view(2, 6, v)
    am, ti, ri = st.fused_lists(probs, st._Tables("cpu", 4, 5))
    assert torch.equal(am, probs.float().argmax(-1))
    assert torch.equal(ti, torch.topk(probs[:, 1:5].float(), 4, dim=-1).indices)
    assert torch.equal(ri, torch.topk(probs[:, 1:].float(), 5, dim=-1).indices)


# ---- GPU: torch CUDA is the reference

@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b", [1, 8, 32])
def test_kernels_equal_torch_cuda_on_tie_heavy_rows(dtype, b):
    tables = st._Tables("cuda", 4, 5)
    for seed in range(3):
        for case, probs in enumerate(st.check_probs(b, VOCAB, dtype, "cuda", seed=100 * b + seed)):
            want, got = st.torch_lists(probs), st.fused_lists(probs, tables)
            for w, h in zip(want, got):
                assert torch.equal(w, h), (case, (w != h).nonzero()[:4].tolist())


@pytest.mark.gpu
@gpu
def test_self_check_passes_and_refuses_a_wrong_tie_order():
    assert st.self_check("cuda", torch.bfloat16, VOCAB, (1, 8, 32)) == ""

    def index_order(probs, tables, cfg=MTPConfig()):  # right sets, ties by index (not torch's network)
        am, ti, ri = st.fused_lists(probs, tables, cfg)
        return am, ti.sort(-1).values, ri.sort(-1).values

    assert "differs from torch" in st.self_check("cuda", torch.bfloat16, VOCAB, (1,), kernel=index_order)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("b", [1, 8, 32])
def test_fused_step_tail_with_step_topk_lists_equals_torch_tail(b):
    from test_step_tail import IDS, crafted_batch, fields, state

    from capture.pipeline import StaticPipeline
    from graphrt.kernels.step_tail import step_tail

    tables = st._Tables("cuda", 4, 5)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        probs, x0 = crafted_batch(b, torch.bfloat16, gen)
        probs, x0 = probs.cuda(), x0.cuda()
        seed = int(torch.randint(0, 1 << 30, (), generator=gen))
        ref, got = state(b, torch.Generator().manual_seed(seed), "cuda"), state(b, torch.Generator().manual_seed(seed), "cuda")
        am, ti, ri = st.fused_lists(probs, tables)
        assert torch.equal(am, probs.argmax(-1))
        StaticPipeline.torch_tail(ref, b, probs, probs.argmax(-1))
        step_tail(got, b, probs, am, IDS, MTPConfig(), lists=(ti, ri))
        want, have = fields(ref), fields(got)
        for k in want:
            assert torch.equal(want[k], have[k]), k

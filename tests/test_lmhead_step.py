"""The step's end after the lmhead pass: the LM head on the swap-AB GEMM (Qwen2.logits_step,
GRAPHRT_STEP_LMHEAD) and PDL launches of the softmax / top-k / tail kernels (step_softmax.end_launch,
GRAPHRT_STEP_END_PDL).

What is compared: the swap-AB head's logits against the fp32 product rounded once (CPU interpreter)
and against cuBLAS's transposed product (GPU: at most one bf16 rounding step apart, the summation
orders differing; the same argmax on every row, i.e. the same greedy tokens); a CUDA graph of
head -> softmax -> top-k with PDL launches giving the bits of the same chain launched plainly and of
torch.softmax, replay after replay with new inputs. The whole step token for token against the
eager generator stays with tests/test_kernels_gpu.py and tests/test_pdl_gpu.py (default switches)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="CPU case runs in the Triton interpreter (TRITON_INTERPRET=1)")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _logits_step(head, hidden, rows):
    """Qwen2.logits_step on a stand-in that has only the tied head (all the method reads)."""
    from graphrt.llm import Qwen2

    stub = SimpleNamespace(embed_tokens=SimpleNamespace(weight=head), lm_head=None)
    stub.logits_transposed = Qwen2.logits_transposed.__get__(stub)
    return Qwen2.logits_step(stub, hidden, rows)


def test_lmhead_switch_refuses_unknown_value(monkeypatch):
    from graphrt.errors import OptionError

    monkeypatch.setenv("GRAPHRT_STEP_LMHEAD", "cublas")
    with pytest.raises(OptionError, match="GRAPHRT_STEP_LMHEAD"):
        _logits_step(torch.zeros(16, 8), torch.zeros(8, 8), 6)


def test_end_launch_follows_switch_and_pdl_rule(monkeypatch):
    from graphrt.errors import OptionError
    from graphrt.kernels import pdl, step_softmax

    x = torch.zeros(6, 4)
    assert step_softmax.end_launch(x, 6) == {"PDL": False}  # CPU: never PDL
    seen = []
    monkeypatch.setattr(pdl, "launch", lambda t, rows=None: seen.append(rows) or {"PDL": True, "launch_pdl": True})
    assert step_softmax.end_launch(x, 6) == {"PDL": True, "launch_pdl": True}
    assert seen == [6]  # the rule sees the logits rows
    monkeypatch.setenv("GRAPHRT_STEP_END_PDL", "off")
    assert step_softmax.end_launch(x, 6) == {"PDL": False}
    monkeypatch.setenv("GRAPHRT_STEP_END_PDL", "on")
    with pytest.raises(OptionError, match="GRAPHRT_STEP_END_PDL"):
        step_softmax.end_launch(x, 6)


@interpreted
def test_swab_head_odd_vocab_rows_cpu():
    """An odd vocabulary (unaligned output rows): y [M, V] row-major, each value its fp32 dot product
    rounded once (compared within one rounding step: the kernel's fp32 order is its own)."""
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_matmul

    gen = torch.Generator().manual_seed(3)
    m, v, k = 8, 203, 64
    x = torch.randn(m, k, generator=gen).half()
    w = (torch.randn(v, k, generator=gen) * k**-0.5).half()
    y = swab_matmul(x, w, None, False, SwabConfig(64, 16, 32, 1, 4, 2, True))
    assert y.shape == (m, v) and y.is_contiguous()
    ref = x.float() @ w.float().t()
    step = ref.abs().clamp_min(2.0**-14) * 2.0**-10  # one fp16 rounding step
    assert ((y.float() - ref).abs() <= step).all()
    assert torch.equal(y.float().argmax(1), ref.argmax(1))


@interpreted
def test_logits_step_cpu_takes_transposed_path():
    """Off CUDA the head stays the transposed product (+ copy): the first `rows` rows."""
    gen = torch.Generator().manual_seed(4)
    head = torch.randn(301, 32, generator=gen).half()
    hidden = torch.randn(8, 32, generator=gen).half()
    got = _logits_step(head, hidden, 6)
    assert got.shape == (6, 301) and got.is_contiguous()
    assert torch.equal(got, torch.mm(head, hidden.t()).t()[:6])


def _big_head(device, v=152681, d=2048, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(v, d, device=device, generator=gen) * d**-0.5).bfloat16()


@gpu
@needs_cuda
@pytest.mark.parametrize("rows", [6, 48])  # B=1, B=8 (B=32's 192 rows keep the transposed product)
def test_swab_head_vs_transposed_gpu(monkeypatch, rows):
    """The 3B head: swap-AB (chosen by the step GEMM chooser) against cuBLAS's transposed product.
    Same argmax on every row; every logit at most one bf16 rounding step from it; the exact fp32
    product's winner within one rounding step of the row's max."""
    from graphrt.kernels.skinny_gemm import choose
    from graphrt.kernels.swap_ab_gemm import SwabConfig

    head = _big_head("cuda")
    m = rows + (-rows % 8)
    hidden = torch.randn(m, head.shape[1], device="cuda").bfloat16()
    cfg = choose(m, head, False, False)
    if not isinstance(cfg, SwabConfig):
        pytest.skip(f"the chooser keeps cuBLAS for the head at {m} rows ({cfg})")
    monkeypatch.setenv("GRAPHRT_STEP_LMHEAD", "swab")
    got = _logits_step(head, hidden, rows)
    monkeypatch.setenv("GRAPHRT_STEP_LMHEAD", "transposed")
    want = _logits_step(head, hidden, rows)
    assert got.shape == want.shape == (rows, head.shape[0]) and got.is_contiguous()
    exact = (hidden.float() @ head.float().t())[:rows]
    step = want.float().abs().clamp_min(2.0**-126) * 2.0**-7
    assert ((got.float() - want.float()).abs() <= step).all()
    assert torch.equal(got.float().argmax(1), want.float().argmax(1))
    # the exact winner is among the rounded maxima (rounding to bf16 may tie it with another index)
    top = got.float().gather(1, exact.argmax(1, keepdim=True))[:, 0]
    assert (got.float().amax(1) - top <= step.amax(1)).all()


@gpu
@needs_cuda
def test_end_chain_pdl_graph_same_bits_gpu(monkeypatch):
    """head -> softmax -> top-k lists captured in a CUDA graph with PDL launches (B=1: 6 rows) gives
    the bits of the same chain launched plainly and torch.softmax's, replay after replay."""
    from graphrt.kernels import pdl
    from graphrt.kernels.step_softmax import triton_softmax
    from graphrt.kernels.step_topk import _Tables, fused_lists

    if not pdl._supported(torch.cuda.current_device()):
        pytest.skip("PDL needs compute capability 9+ and triton's gdc ops")
    monkeypatch.setenv("GRAPHRT_PDL", "on")
    head = _big_head("cuda", seed=1)
    tables = _Tables("cuda", 4, 5)
    hidden = torch.empty(8, head.shape[1], device="cuda", dtype=torch.bfloat16)

    def chain():
        logits = _logits_step(head, hidden, 6)
        probs = triton_softmax(logits)
        return (logits, probs) + fused_lists(probs.view(1, 6, -1), tables)

    hidden.copy_(torch.randn_like(hidden, dtype=torch.float32))
    chain()  # compiles and lets the chooser time outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = chain()
    for seed in range(4):
        gen = torch.Generator(device="cuda").manual_seed(100 + seed)
        hidden.copy_(torch.randn(hidden.shape, device="cuda", generator=gen) * (1 + 3 * seed))
        graph.replay()
        torch.cuda.synchronize()
        monkeypatch.setenv("GRAPHRT_STEP_END_PDL", "off")  # the head keeps its config (PDL on: same chooser key)
        want = chain()
        torch.cuda.synchronize()
        monkeypatch.setenv("GRAPHRT_STEP_END_PDL", "auto")
        logits, probs = outs[0], outs[1]
        assert torch.equal(logits, want[0]), seed
        assert torch.equal(probs.view(torch.int16), torch.softmax(logits, -1).view(torch.int16)), seed
        for a, b in zip(outs[1:], want[1:]):
            assert torch.equal(a, b), seed

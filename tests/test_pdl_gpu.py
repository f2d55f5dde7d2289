"""Programmatic dependent launch (graphrt/kernels/pdl.py) on the GPU: a chain of the fused step
kernels at the 3B widths (norm, QKV GEMM with split-K, rope + cache write, step attention, O GEMM,
norm, gate/up + SiLU, down) over several layers, captured in a CUDA graph with PDL on, gives the
same bits as the same chain with PDL off and uncaptured, replay after replay with new inputs (a
kernel that read its inputs before its grid-dependency wait would see the previous replay's)."""

from __future__ import annotations

import pytest
import torch
from graph_capture import capture_after_warmup

pytestmark = pytest.mark.gpu

HQ, HKV, D, HIDDEN, INTER, W = 16, 2, 128, 2048, 11008, 6


def _needs_hopper():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9+")


def _layers(n, gen, dtype):
    def w(*shape, scale):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)

    return [dict(n1=1 + w(HIDDEN, scale=0.1), n2=1 + w(HIDDEN, scale=0.1),
                 qkv=w((HQ + 2 * HKV) * D, HIDDEN, scale=HIDDEN**-0.5), bqkv=w((HQ + 2 * HKV) * D, scale=0.1),
                 o=w(HIDDEN, HQ * D, scale=(HQ * D) ** -0.5), gu=w(2 * INTER, HIDDEN, scale=HIDDEN**-0.5),
                 down=w(HIDDEN, INTER, scale=INTER**-0.5)) for _ in range(n)]


def _chain(state, layers, att):
    """One step's layer kernels, as the fused graph path calls them (fixed configs, split-K on)."""
    from graphrt.kernels.layer_ops import add_rms_norm, rope_write
    from graphrt.kernels.skinny_gemm import Config, skinny_matmul

    x, delta = state["x"], state["delta"]
    m = x.shape[0]
    for i, p in enumerate(layers):
        x, h = add_rms_norm(x, delta, p["n1"], 1e-6)
        qkv = skinny_matmul(h, p["qkv"], p["bqkv"], False, Config(16, 128, 2, 4, 4))
        q = rope_write(qkv, state["cos"], state["sin"], state["rows"], state["slots"], state["k"][i], state["v"][i],
                       HQ, HKV)
        a = att(q, state["k"][i], state["v"][i], state["clen"], state["count"])
        o = skinny_matmul(a.view(m, HQ * D), p["o"], None, False, Config(32, 128, 4, 4, 4))
        x, h = add_rms_norm(x, o, p["n2"], 1e-6)
        g = skinny_matmul(h, p["gu"], None, True, Config(32, 128, 1, 4, 4))
        delta = skinny_matmul(g, p["down"], None, False, Config(16, 256, 2, 4, 3))
    return x, delta


@pytest.mark.parametrize("batch,prefetch", [(1, "0"), (1, "1"), (8, "0")])
def test_pdl_chain_in_graph_equals_plain_launches(batch, prefetch, monkeypatch):
    """prefetch "1": the skinny GEMM's L2 weight prefetch before its wait (GRAPHRT_STEP_PREFETCH)."""
    _needs_hopper()
    from graphrt.kernels import pdl
    from graphrt.kernels.step_attention import StepAttention
    from graphrt.llm import RotaryEmbedding

    dtype, n_layers, slots = torch.bfloat16, 3, 700
    gen = torch.Generator(device="cuda").manual_seed(batch)
    layers = _layers(n_layers, gen, dtype)
    m = batch * 2 * W
    clen = torch.arange(batch, device="cuda") * 37 + 100
    count = torch.full((batch,), W, device="cuda")
    slot = (clen[:, None] + torch.arange(2 * W, device="cuda")[None, :]).reshape(-1)
    cos, sin = RotaryEmbedding(D, 1e6, "cuda")(slot, dtype)
    state = dict(x=torch.empty(m, HIDDEN, device="cuda", dtype=dtype), delta=torch.empty(m, HIDDEN, device="cuda", dtype=dtype),
                 cos=cos, sin=sin, rows=torch.arange(batch, device="cuda").repeat_interleave(2 * W), slots=slot,
                 clen=clen, count=count,
                 k=[torch.empty(batch + 1, slots, HKV, D, device="cuda", dtype=dtype) for _ in range(n_layers)],
                 v=[torch.empty(batch + 1, slots, HKV, D, device="cuda", dtype=dtype) for _ in range(n_layers)])
    att = StepAttention(batch, W, HQ, HKV, D, "cuda")

    def fill(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        state["x"].copy_(torch.randn(m, HIDDEN, device="cuda", generator=g))
        state["delta"].copy_(torch.randn(m, HIDDEN, device="cuda", generator=g))
        for t in state["k"] + state["v"]:
            t.copy_(torch.randn(t.shape, device="cuda", generator=g))

    monkeypatch.setenv("GRAPHRT_PDL", "off")
    want = []
    for seed in (1, 2, 3):
        fill(seed)
        out = _chain(state, layers, att)
        want.append([t.clone() for t in (*out, *state["k"], *state["v"])])

    monkeypatch.setenv("GRAPHRT_PDL", "on")
    monkeypatch.setenv("GRAPHRT_STEP_PREFETCH", prefetch)
    assert pdl.enabled(state["x"], m)
    graph, out = capture_after_warmup(lambda: _chain(state, layers, att), fill)
    for seed, ref in zip((1, 2, 3, 1), want + want[:1]):
        fill(seed)
        graph.replay()
        got = [*out, *state["k"], *state["v"]]
        for name, a, b in zip(["x", "delta"] + [f"cache{i}" for i in range(2 * n_layers)], got, ref):
            assert torch.equal(a, b), (seed, name, (a.float() - b.float()).abs().max())

"""The swap-AB GEMM's early weight reads (graphrt/kernels/swap_ab_gemm.py, PRE / GRAPHRT_STEP_EARLY_W):
each program's first PRE weight tiles (gate and up with SiLU) read before its PDL wait and
accumulated first after it must give the same bits as PRE = 0 — every epilogue, split-K, K ranges
with fewer tiles than PRE (clamped), TMA and pointer configs (CPU interpreter); and a PDL chain of
swap-AB GEMMs and norms captured in a CUDA graph with the switch on gives the same bits as plain
launches, replay after replay with new inputs (GPU). Plus the switch itself."""

from __future__ import annotations

import os

import pytest
import torch
from graph_capture import capture_after_warmup

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="CPU case runs in the Triton interpreter (TRITON_INTERPRET=1)")

CPU_CASES = [  # (m, n, k, bias, silu, (block_w, block_t, block_k, split, warps, stages, tma))
    (12, 200, 96, True, False, (64, 16, 32, 1, 4, 2, False)),  # 3 tiles, pointer loads, N past the tile edge
    (12, 200, 96, True, False, (64, 16, 32, 1, 4, 2, True)),  # the same through TMA
    (5, 130, 160, False, False, (64, 16, 32, 2, 4, 2, True)),  # split-K 2 (3 tiles each)
    (12, 64, 200, True, False, (64, 16, 32, 3, 4, 2, False)),  # split-K 3: 3, 3, 1 tiles (last partial)
    (40, 256, 96, False, True, (64, 16, 32, 1, 4, 2, True)),  # SiLU * up (gate and up tiles), 3 token tiles
    (24, 192, 128, False, True, (64, 32, 32, 2, 4, 2, False)),  # SiLU with split-K
    (12, 128, 40, False, False, (64, 16, 32, 1, 4, 2, False)),  # K = 40: 2 tiles, the second partial
    (12, 128, 24, False, True, (64, 16, 32, 1, 4, 2, True)),  # K shorter than one tile
]


def _run(case, pre, seed=0):
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_matmul

    m, n, k, bias, silu, cfg = case
    gen = torch.Generator().manual_seed(seed + m + n + k)
    x = torch.randn(m, k, generator=gen).half()
    w = (torch.randn(2 * n if silu else n, k, generator=gen) * k**-0.5).half()
    b = torch.randn(n, generator=gen).half() if bias else None
    return swab_matmul(x, w, b, silu, SwabConfig(*cfg), pre=pre)


@interpreted
@pytest.mark.parametrize("case", CPU_CASES)
def test_early_tiles_same_bits_cpu(case):
    want = _run(case, 0)
    for pre in (1, 2, 4):
        got = _run(case, pre)
        assert torch.equal(got, want), (pre, (got.float() - want.float()).abs().max().item())


def test_early_tiles_clamped_to_every_split():
    from graphrt.kernels.swap_ab_gemm import early_tiles

    assert early_tiles(2048, 3, 64, 4) == 4  # 11, 11, 10 tiles
    assert early_tiles(96, 1, 32, 4) == 3
    assert early_tiles(200, 3, 32, 4) == 1  # 3, 3, 1 tiles
    assert early_tiles(100, 3, 32, 2) == 0  # k_per 64: the third split is empty
    assert early_tiles(24, 1, 32, 2) == 1
    assert early_tiles(2048, 4, 128, 0) == 0


def test_bad_pre_refused():
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_matmul

    x, w = torch.zeros(12, 64).half(), torch.zeros(64, 64).half()
    with pytest.raises(ValueError, match="pre"):
        swab_matmul(x, w, None, False, SwabConfig(64, 16, 32, 1, 4, 2, False), pre=5)


def test_early_switch(monkeypatch):
    from graphrt.errors import OptionError
    from graphrt.kernels.swap_ab_gemm import early_w

    monkeypatch.delenv("GRAPHRT_STEP_EARLY_W", raising=False)
    assert early_w() == (0, 2)  # default: the L2 prefetch of 2 tiles (measured faster at B=1)
    for value, want in (("off", (0, 0)), ("1", (1, 0)), ("2", (2, 0)), ("4", (4, 0)), ("l2-2", (0, 2)),
                        ("l2-4", (0, 4))):
        monkeypatch.setenv("GRAPHRT_STEP_EARLY_W", value)
        assert early_w() == want
    for bad in ("3", "on", "l2-3", ""):
        monkeypatch.setenv("GRAPHRT_STEP_EARLY_W", bad)
        with pytest.raises(OptionError, match="GRAPHRT_STEP_EARLY_W"):
            early_w()


# ---- GPU: a PDL chain of the step's swap-AB GEMMs (B=1 picks) in a CUDA graph ----

HIDDEN, QKV, INTER = 2048, 2560, 11008
QKV_CFG, O_CFG = (64, 16, 64, 3, 4, 16, False), (64, 16, 64, 4, 4, 16, False)
GU_CFG, DOWN_CFG = (64, 16, 128, 1, 4, 5, True), (64, 16, 128, 4, 4, 6, True)


def _chain(state, layers):
    from graphrt.kernels.layer_ops import add_rms_norm
    from graphrt.kernels.skinny_gemm import run_choice
    from graphrt.kernels.swap_ab_gemm import SwabConfig

    x, delta = state["x"], state["delta"]
    for p in layers:
        x, h = add_rms_norm(x, delta, p["n1"], 1e-6)
        qkv = run_choice(h, p["qkv"], p["bqkv"], False, SwabConfig(*QKV_CFG))
        o = run_choice(qkv[:, :HIDDEN], p["o"], None, False, SwabConfig(*O_CFG))  # stands in for attention
        x, h = add_rms_norm(x, o, p["n2"], 1e-6)
        g = run_choice(h, p["gu"], None, True, SwabConfig(*GU_CFG))
        delta = run_choice(g, p["down"], None, False, SwabConfig(*DOWN_CFG))
    return x, delta


@pytest.mark.gpu
@pytest.mark.parametrize("early", ["off", "1", "2", "4", "l2-2", "l2-4"])
def test_pdl_chain_early_same_bits_gpu(early, monkeypatch):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs a compute-capability-9+ GPU")
    from graphrt.kernels import pdl

    dtype, m = torch.bfloat16, 12
    gen = torch.Generator(device="cuda").manual_seed(7)

    def w(*shape, scale):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)

    layers = [dict(n1=1 + w(HIDDEN, scale=0.1), n2=1 + w(HIDDEN, scale=0.1), qkv=w(QKV, HIDDEN, scale=HIDDEN**-0.5),
                   bqkv=w(QKV, scale=0.1), o=w(HIDDEN, HIDDEN, scale=HIDDEN**-0.5),
                   gu=w(2 * INTER, HIDDEN, scale=HIDDEN**-0.5), down=w(HIDDEN, INTER, scale=INTER**-0.5))
              for _ in range(3)]
    state = dict(x=torch.empty(m, HIDDEN, device="cuda", dtype=dtype),
                 delta=torch.empty(m, HIDDEN, device="cuda", dtype=dtype))

    def fill(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        state["x"].copy_(torch.randn(m, HIDDEN, device="cuda", generator=g))
        state["delta"].copy_(torch.randn(m, HIDDEN, device="cuda", generator=g))

    monkeypatch.setenv("GRAPHRT_PDL", "off")
    monkeypatch.setenv("GRAPHRT_STEP_EARLY_W", "off")
    want = []
    for seed in (1, 2, 3):
        fill(seed)
        want.append([t.clone() for t in _chain(state, layers)])

    monkeypatch.setenv("GRAPHRT_PDL", "on")
    monkeypatch.setenv("GRAPHRT_STEP_EARLY_W", early)
    assert pdl.enabled(state["x"], m)
    graph, out = capture_after_warmup(lambda: _chain(state, layers), fill)
    for seed, ref in zip((1, 2, 3, 1), want + want[:1]):
        fill(seed)
        graph.replay()
        for name, a, b in zip(("x", "delta"), out, ref):
            assert torch.equal(a, b), (early, seed, name, (a.float() - b.float()).abs().max().item())

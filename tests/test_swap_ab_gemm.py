"""The swap-AB step GEMM (graphrt/kernels/swap_ab_gemm.py) against an fp32 reference: every
epilogue (none, bias, SiLU * up), split-K with the last-arriving reduction (SiLU included), token
rows / weight rows / K that do not fill a tile, more than one token tile, TMA descriptors and
pointer loads; on the GPU the 3B step's shapes at B = 1, 8, 32. And the per-shape chooser in
skinny_gemm.py: what it times, what it picks, and the A/B switch that leaves the swap-AB kernel out."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from test_skinny_gemm import STEP_SHAPES, bound, reference  # noqa: E402

interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="CPU case runs in the Triton interpreter (TRITON_INTERPRET=1)")


def check(device, dtype, m, n, k, bias, silu, config, x=None):
    from graphrt.kernels.skinny_gemm import run_choice
    from graphrt.kernels.swap_ab_gemm import SwabConfig

    gen = torch.Generator(device=device).manual_seed(m * 11 + n + k)
    if x is None:
        x = torch.randn(m, k, device=device, generator=gen).to(dtype)
    w = (torch.randn(n, k, device=device, generator=gen) * k**-0.5).to(dtype)
    b = torch.randn(n, device=device, generator=gen).to(dtype) if bias else None
    want = reference(x, w, b, silu)
    tol = bound(x, w, dtype)
    if silu:
        g_t, u_t = tol.chunk(2, -1)
        tol = (g_t * 1.2 + u_t) * 2  # as test_skinny_gemm: silu's slope < 1.1, each factor scales the other's error
    tol = tol + torch.finfo(dtype).eps * want.float().abs() * 2
    first = None
    for _ in range(3):  # later calls: the split-K counters were reset by the one before
        got = run_choice(x, w, b, silu, SwabConfig(*config))
        assert got.shape == want.shape and got.dtype == dtype and torch.isfinite(got).all()
        err = (got.float() - want.float()).abs()
        assert (err <= tol).all(), (err.max().item(), tol.max().item())
        if first is None:
            first = got.clone()
        assert torch.equal(got, first)  # split order fixed: the same bits every call
    return got


CPU_CASES = [  # (m, n, k, bias, silu, (block_w, block_t, block_k, split, warps, stages, tma))
    (12, 200, 96, True, False, (64, 16, 32, 1, 4, 2, True)),  # bias; N past the tile edge (TMA zero-fill)
    (12, 200, 96, True, False, (64, 16, 32, 1, 4, 2, False)),  # the same through pointer loads
    (5, 130, 160, False, False, (64, 16, 32, 2, 4, 2, True)),  # split-K 2, a 5-row tile
    (12, 64, 100, True, False, (64, 16, 32, 3, 4, 2, False)),  # K not a multiple of BLOCK_K: short last split
    (12, 64, 200, True, False, (64, 16, 32, 3, 4, 2, True)),  # the same through TMA (K edge zero-filled)
    (40, 256, 96, False, True, (64, 16, 32, 1, 4, 2, True)),  # SiLU * up, three token tiles (last partial)
    (24, 192, 128, False, True, (64, 32, 32, 4, 4, 2, True)),  # SiLU with split-K (gate and up partials)
    (24, 192, 128, False, True, (64, 32, 32, 2, 4, 2, False)),
    (130, 128, 64, True, False, (128, 128, 32, 2, 4, 2, True)),  # two 128-row token tiles, 128 weight rows
]


@interpreted
@pytest.mark.parametrize("case", CPU_CASES)
def test_swab_gemm_cpu(case):
    check("cpu", torch.float16, *case)  # the interpreter multiplies bf16 tiles wrongly (triton 3.9); GPU: bf16


@interpreted
def test_swab_unaligned_x_runs_pointer_loads():
    """x whose rows start off a 16-byte boundary cannot be a TMA descriptor: run_choice runs the
    same tiles with pointer loads, same result."""
    from graphrt.kernels.swap_ab_gemm import tma_ok

    m, n, k = 12, 128, 64
    big = torch.randn(m, k + 1).half()
    x = big[:, 1:]  # base 2 bytes off, row stride 130 bytes
    assert not tma_ok(x)
    check("cpu", torch.float16, m, n, k, True, False, (64, 16, 32, 2, 4, 2, True), x=x)


def test_swab_refuses_bad_inputs():
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_matmul

    x = torch.randn(4, 64, dtype=torch.float16)
    cfg = SwabConfig(64, 16, 32, 1, 4, 2, False)
    with pytest.raises(ValueError, match="K"):
        swab_matmul(x, torch.randn(32, 48, dtype=torch.float16), config=cfg)
    with pytest.raises(ValueError, match="fp16 or both bf16"):
        swab_matmul(x, torch.randn(32, 64, dtype=torch.bfloat16), config=cfg)
    with pytest.raises(ValueError, match="SiLU"):
        swab_matmul(x, torch.randn(32, 64, dtype=torch.float16), torch.zeros(32, dtype=torch.float16), True, cfg)
    with pytest.raises(ValueError, match="TMA"):
        swab_matmul(torch.randn(4, 65, dtype=torch.float16)[:, 1:], torch.randn(32, 64, dtype=torch.float16),
                    config=SwabConfig(64, 16, 32, 1, 4, 2, True))


def test_swab_candidates_cover_the_step_shapes():
    """Every 3B step GEMM at B = 1..32 has swap-AB candidates; each is a valid tiling: splits start
    inside K, the program count covers the GPU, the token tile holds the rows (or tiles them),
    the pipeline fits in shared memory; a small model's shapes have none."""
    from graphrt.kernels.swap_ab_gemm import swab_candidates

    for n, k, _, silu in STEP_SHAPES:
        out_n = n // 2 if silu else n
        for batch in (1, 2, 4, 8, 16, 32):
            m = 12 * batch
            cands = swab_candidates(m, out_n, k, silu)
            assert 3 <= len(cands) <= 13 and len(set(cands)) == len(cands), (n, k, batch)
            assert any(c[6] for c in cands) and any(not c[6] for c in cands)  # TMA and the pointer fallback
            assert max(c[1] for c in cands) >= min(m, 128)  # one candidate holds all rows (up to 128) per tile
            for block_w, block_t, block_k, split, warps, stages, _ in cands:
                assert 16 <= block_t <= 128 and block_t & (block_t - 1) == 0
                assert -(-k // block_k) >= 2 * split
                programs = -(-out_n // block_w) * split * -(-m // block_t)
                assert programs >= 64
                assert stages >= 2 and (block_w * (2 if silu else 1) + block_t) * block_k * 2 * stages <= 200 * 1024
    assert swab_candidates(12, 64, 64, False) == [] and swab_candidates(12, 128, 64, True) == []


def test_chooser_times_swab_unless_switched_off(monkeypatch):
    """auto times the swap-AB shortlist (3-6 configs, each a candidate of the full list) where a
    shape has one; `noswab`, weights the copy engine cannot address, or shapes without swap-AB
    candidates time skinny_gemm's own shortlist; a small model's shapes time nothing (cuBLAS)."""
    from graphrt.kernels import skinny_gemm as sg
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_candidates

    for n, k, _, silu in STEP_SHAPES:
        out_n = n // 2 if silu else n
        for batch in (1, 2, 4, 8, 16, 32):
            m = 12 * batch
            auto = sg.configs_to_time(m, n, k, silu, "auto", True)
            assert 3 <= len(auto) <= 6 and all(isinstance(c, SwabConfig) for c in auto), (n, k, batch)
            assert set(auto) <= set(swab_candidates(m, out_n, k, silu))
            assert any(not c[6] for c in auto)  # the pointer-load variant is timed too
            old = sg.configs_to_time(m, n, k, silu, "noswab", True)
            assert old == sg.shortlist(m, out_n, k, silu) and old
            assert sg.configs_to_time(m, n, k, silu, "auto", False) == old
    assert sg.configs_to_time(12, 64, 64, False, "auto", True) == []  # small model: cuBLAS untimed
    monkeypatch.setenv("GRAPHRT_STEP_GEMM", "noswab")
    assert sg.mode() == "noswab"
    monkeypatch.setenv("GRAPHRT_STEP_GEMM", "swab")
    with pytest.raises(ValueError, match="GRAPHRT_STEP_GEMM"):
        sg.mode()


def test_swab_shortlist_keeps_the_measured_winners():
    """The configs that won their shape in the H100 sweep (2026-11-24, run 2: B = 1, 8, 32) stay
    in the start-up shortlist (a trimmed shortlist must not drop a winner)."""
    from graphrt.kernels.skinny_gemm import swab_shortlist
    from graphrt.kernels.swap_ab_gemm import SwabConfig

    winners = {(12, 2560, 2048, False): (64, 16, 64, 3, 4, 16, False), (12, 2048, 2048, False): (64, 16, 64, 4, 4, 16, False),
               (12, 11008, 2048, True): (64, 16, 128, 1, 4, 5, True), (12, 2048, 11008, False): (64, 16, 128, 4, 4, 6, True),
               (96, 11008, 2048, True): (64, 128, 128, 1, 8, 3, True), (384, 2560, 2048, False): (64, 128, 128, 1, 4, 4, True),
               (384, 11008, 2048, True): (128, 128, 64, 1, 8, 4, True), (384, 2048, 11008, False): (64, 128, 64, 1, 4, 8, True)}
    for (m, n, k, silu), cfg in winners.items():
        assert SwabConfig(*cfg) in swab_shortlist(m, n, k, silu), (m, n, k)


def test_chooser_picks_the_fastest_and_keeps_cublas_on_ties():
    from graphrt.kernels import skinny_gemm as sg
    from graphrt.kernels.swap_ab_gemm import SwabConfig

    a, s = sg.Config(16, 256, 2, 4, 4), SwabConfig(128, 16, 128, 8, 4, 5, True)
    assert sg.fastest({"cublas": 0.010, a: 0.009, s: 0.008}, "auto") == s
    assert sg.fastest({"cublas": 0.010, a: 0.008, s: 0.009}, "auto") == a
    assert sg.fastest({"cublas": 0.008, a: 0.009, s: 0.008}, "auto") is None  # tie: cuBLAS
    assert sg.fastest({"cublas": 0.007, a: 0.009, s: 0.008}, "triton") == s  # forced Triton
    assert sg.fastest({"cublas": 0.007}, "auto") is None  # nothing compiled


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("shape", STEP_SHAPES)
def test_swab_gemm_step_shapes_gpu(batch, shape):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    from graphrt.kernels.swap_ab_gemm import swab_candidates

    n, k, bias, silu = shape
    m = 12 * batch
    for cfg in swab_candidates(m, n // 2 if silu else n, k, silu):
        check("cuda", torch.bfloat16, m, n, k, bias, silu, cfg)


def test_chooser_margin_in_a_pdl_chain():
    """In a PDL chain cuBLAS (which ends the chain) wins only when CHAIN_MARGIN faster: the B=1 QKV
    case that flipped between runs (cuBLAS 7.10 vs swap-AB 7.13 us) stays on the swap-AB kernel."""
    from graphrt.kernels import skinny_gemm as sg
    from graphrt.kernels.swap_ab_gemm import SwabConfig

    s = SwabConfig(64, 16, 64, 3, 4, 16, True)
    t = {"cublas": 0.00710, s: 0.00713}
    assert sg.fastest(t, "auto") is None  # the plain rule: any lead picks cuBLAS
    assert sg.fastest(t, "auto", sg.CHAIN_MARGIN) == s
    assert sg.fastest({"cublas": 0.0060, s: 0.0070}, "auto", sg.CHAIN_MARGIN) is None  # a clear lead still wins

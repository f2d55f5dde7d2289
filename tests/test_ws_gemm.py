"""The warp-specialized stream-K Gluon step GEMM (graphrt/kernels/ws_gemm.py).

CPU: the stream-K work split (every K block owned by exactly one program, the segment count and
slot the kernel computes agree with the ranges), the candidate lists' validity, the chooser's
registration (opt-in: timed only under GRAPHRT_STEP_GEMM=ws and where Gluon runs; picked only
by measurement). GPU (Triton 3.6, Hopper): every step shape at odd and even M against the fp32
reference within the swap-AB tests' bound, bias and SiLU*up, against the swap-AB kernel (same
bound), forced stream-K cuts (few programs: tiles summed from 2+ slots; one K block per program),
the same bits on every call and inside a CUDA graph, and the chooser choosing it only by timing."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from test_skinny_gemm import STEP_SHAPES, bound, reference  # noqa: E402


def ranges(total, programs):
    return [(p * total // programs, (p + 1) * total // programs) for p in range(programs)]


@pytest.mark.parametrize("tiles,k_blocks,programs", [(172, 32, 132), (40, 16, 132), (3, 5, 7), (1, 16, 16),
                                                     (16, 172, 132), (2, 3, 6), (100, 1, 132)])
def test_stream_k_split_covers_every_block_once(tiles, k_blocks, programs):
    """Ranges partition the (tile, K block) space; owner() (the kernel's formula) names the range
    that holds each block; a tile's segments are the programs from owner(first) to owner(last),
    consecutive, each with its slot p - owner(first) < max_segments."""
    from graphrt.kernels.ws_gemm import max_segments, owner

    total = tiles * k_blocks
    programs = min(programs, total)
    seen = []
    for p, (lo, hi) in enumerate(ranges(total, programs)):
        assert lo < hi  # programs <= total: nobody idle
        for b in range(lo, hi):
            assert owner(b, programs, total) == p
        seen += range(lo, hi)
    assert seen == list(range(total))
    segs = max_segments(tiles, k_blocks, programs)
    for t in range(tiles):
        first, last = owner(t * k_blocks, programs, total), owner((t + 1) * k_blocks - 1, programs, total)
        holders = {owner(b, programs, total) for b in range(t * k_blocks, (t + 1) * k_blocks)}
        assert holders == set(range(first, last + 1)) and last - first + 1 <= segs


@pytest.mark.parametrize("tiles,k_blocks,programs", [(172, 32, 132), (40, 16, 132), (516, 32, 132), (5, 3, 2),
                                                     (7, 4, 3), (3, 5, 7)])
def test_whole_tiles_then_stream_k_cover_every_block_once(tiles, k_blocks, programs):
    """dp: full waves of whole tiles (tile p + j * G to program p), then the rest cut by K blocks;
    every block done once; whole tiles never cut, the rest's segments as owner() says."""
    from graphrt.kernels.ws_gemm import blocks_of, max_segments, owner, plan

    programs = min(programs, tiles)  # as ws_matmul: dp never runs more programs than tiles
    whole, rem = plan(tiles, k_blocks, programs, True)
    assert whole % programs == 0 and (tiles - whole) < programs and rem == (tiles - whole) * k_blocks
    work = [blocks_of(p, tiles, k_blocks, programs, True) for p in range(programs)]
    assert sorted(sum(work, [])) == list(range(tiles * k_blocks))
    for t in range(whole):
        holders = {p for p, w in enumerate(work) if t * k_blocks in w}
        assert holders == {t % programs} and all(t * k_blocks + kb in work[t % programs] for kb in range(k_blocks))
    for t in range(whole, tiles):
        lo = (t - whole) * k_blocks
        holders = {p for p, w in enumerate(work) for kb in range(k_blocks) if whole * k_blocks + lo + kb in w}
        first, last = owner(lo, programs, rem), owner(lo + k_blocks - 1, programs, rem)
        assert holders == set(range(first, last + 1)) and last - first + 1 <= max_segments(tiles - whole, k_blocks, programs)
    assert blocks_of(0, tiles, k_blocks, programs, False) == list(range(tiles * k_blocks // programs))


def test_ws_candidates_are_valid_tilings():
    from graphrt.kernels.ws_gemm import SMEM_BUDGET, ws_candidates, ws_shortlist

    for n, k, _, silu in STEP_SHAPES:
        out_n = n // 2 if silu else n
        for batch in (1, 2, 4, 8, 16, 32):
            m = 12 * batch
            cands = ws_candidates(m, out_n, k, silu)
            assert 3 <= len(cands) <= 5 and len(set(cands)) == len(cands) and any(c[6] for c in cands)
            short = ws_shortlist(m, out_n, k, silu)
            assert 1 <= len(short) <= 2 and set(short) <= set(cands)
            for block_w, block_t, block_k, stages, warps, per_sm, _ in cands:
                assert block_w in (64, 128) and warps * 16 <= block_w * 2 and warps >= 4
                assert 16 <= block_t <= 128 and block_t & (block_t - 1) == 0 and block_t >= min(m, 128)
                per_stage = (block_w * (2 if silu else 1) + block_t) * block_k * 2
                assert stages >= 3 and per_stage * stages * per_sm <= SMEM_BUDGET
    assert ws_candidates(12, 32, 64, False) == []


def test_chooser_times_ws_only_when_switched_on_and_gluon_runs(monkeypatch):
    from graphrt.kernels import skinny_gemm as sg
    from graphrt.kernels.ws_gemm import WsConfig, ws_shortlist

    for n, k, _, silu in STEP_SHAPES:
        out_n = n // 2 if silu else n
        for batch in (1, 8, 32):
            m = 12 * batch
            without = sg.configs_to_time(m, n, k, silu, "auto", True, True)
            assert not any(isinstance(c, WsConfig) for c in without)
            with_ws = sg.configs_to_time(m, n, k, silu, "ws", True, True)
            assert with_ws == without + ws_shortlist(m, out_n, k, silu)
            assert sg.configs_to_time(m, n, k, silu, "ws", True, False) == without  # no Gluon here
            assert sg.configs_to_time(m, n, k, silu, "triton", True, True) == without
            assert sg.configs_to_time(m, n, k, silu, "noswab", True, True) == sg.shortlist(m, out_n, k, silu)
            assert sg.configs_to_time(m, n, k, silu, "ws", False, True) == sg.shortlist(m, out_n, k, silu)
    monkeypatch.setenv("GRAPHRT_STEP_GEMM", "ws")
    assert sg.mode() == "ws"
    ws = WsConfig(64, 16, 128, 10, 4, 1)
    assert sg.fastest({"cublas": 0.010, ws: 0.009}, "auto") == ws
    assert sg.fastest({"cublas": 0.009, ws: 0.009}, "auto") is None  # ties stay on cuBLAS


def test_ws_unavailable_off_triton_36_or_without_gpu():
    """Off the Triton release the kernel is written for (CPU CI: 3.9) or without a Hopper GPU the
    chooser has no such candidate, and importing the module imports no Gluon."""
    import triton

    from graphrt.kernels import ws_gemm

    if not (triton.__version__.startswith(ws_gemm.GLUON_TRITON) and torch.cuda.is_available()):
        assert ws_gemm.available() is False


# ---- GPU ----

def gpu_or_skip():
    from graphrt.kernels import ws_gemm

    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    if not ws_gemm.available():
        pytest.skip(f"Gluon kernel needs Triton {ws_gemm.GLUON_TRITON} and a Hopper GPU")


def check(m, n, k, bias, silu, config, programs=None, against_swab=True):
    from graphrt.kernels.swap_ab_gemm import SwabConfig, block_t_for, swab_matmul
    from graphrt.kernels.ws_gemm import WsConfig, ws_matmul

    dtype = torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(m * 13 + n + k)
    x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=gen) * k**-0.5).to(dtype)
    b = torch.randn(n, device="cuda", generator=gen).to(dtype) if bias else None
    want = reference(x, w, b, silu)
    tol = bound(x, w, dtype)
    if silu:
        g_t, u_t = tol.chunk(2, -1)
        tol = (g_t * 1.2 + u_t) * 2  # as test_swap_ab_gemm: each factor scales the other's error
    tol = tol + torch.finfo(dtype).eps * want.float().abs() * 2
    first = None
    for _ in range(3):  # later calls: the stream-K counters were reset by the one before
        got = ws_matmul(x, w, b, silu, WsConfig(*config), programs=programs)
        assert got.shape == want.shape and got.dtype == dtype and torch.isfinite(got).all()
        err = (got.float() - want.float()).abs()
        assert (err <= tol).all(), (err.max().item(), tol.max().item())
        if first is None:
            first = got.clone()
        assert torch.equal(got, first)  # segment order fixed: the same bits every call
    if against_swab:  # the current kernel, same epilogue: both within the bound of each other's sum
        cur = swab_matmul(x, w, b, silu, SwabConfig(64, block_t_for(m), 64, 1, 8 if silu and m > 64 else 4, 4, True))
        assert ((got.float() - cur.float()).abs() <= 2 * tol).all()
    return x, w, b, got


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 12, 13, 96, 100, 384])
@pytest.mark.parametrize("shape", STEP_SHAPES)
def test_ws_gemm_step_shapes_gpu(m, shape):
    gpu_or_skip()
    from graphrt.kernels.ws_gemm import ws_candidates

    n, k, bias, silu = shape
    for cfg in ws_candidates(m, n // 2 if silu else n, k, silu):
        check(m, n, k, bias, silu, cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("programs", [1, 3, 7, 40])
def test_ws_gemm_stream_k_cuts_gpu(programs):
    """Few programs: every tile summed from several slots (SiLU: gate and up partials), rows and
    weight rows past the tile edges; K of one block per program (40 programs over 2 tiles x 20 blocks)."""
    gpu_or_skip()
    check(13, 256 + 64, 1280, True, False, (64, 16, 64, 4, 4, 1), programs=programs)
    check(100, 2 * 192, 1280, False, True, (64, 128, 64, 4, 4, 1), programs=programs)
    check(140, 200, 1280, False, False, (128, 128, 64, 4, 8, 1), programs=programs)


@pytest.mark.gpu
def test_ws_gemm_in_cuda_graph_gpu():
    """Captured and replayed: the same bits as the eager call (counters reset inside the graph)."""
    gpu_or_skip()
    from graphrt.kernels.ws_gemm import WsConfig, ws_matmul

    x, w, _, eager = check(96, 22016, 2048, False, True, (64, 128, 64, 6, 4, 1), against_swab=False)
    cfg = WsConfig(64, 128, 64, 6, 4, 1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ws_matmul(x, w, None, True, cfg)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ws_matmul(x, w, None, True, cfg)
    for _ in range(3):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)


@pytest.mark.gpu
def test_chooser_picks_ws_only_by_measurement_gpu(monkeypatch):
    """With Gluon on the device and GRAPHRT_STEP_GEMM=ws the chooser times the ws shortlist beside
    the rest and keeps the fastest of what it measured (ws or not); `auto` never times or picks it."""
    gpu_or_skip()
    from graphrt.kernels import skinny_gemm as sg
    from graphrt.kernels.ws_gemm import WsConfig

    w = torch.randn(22016, 2048, device="cuda", dtype=torch.bfloat16) * 0.02
    for how in ("ws", "auto"):
        monkeypatch.setenv("GRAPHRT_STEP_GEMM", how)
        pick = sg.choose(96, w, False, True)
        key = next(k for k in sg.timings if k[:3] == (96, 22016, 2048) and k[6] == how)
        t = sg.timings[key]
        assert any(isinstance(c, WsConfig) for c in t) == (how == "ws")
        assert pick == sg.fastest(t, how)


@pytest.mark.skipif(__import__("os").environ.get("TRITON_INTERPRET") != "1",
                    reason="CPU case runs in the Triton interpreter (TRITON_INTERPRET=1)")
def test_ws_choice_on_unaligned_x_runs_swab_pointer_loads():
    """An x the copy engine cannot address (base off 16 bytes) under a ws pick runs the swap-AB
    kernel's pointer loads (same tiles), against the fp32 reference."""
    from graphrt.kernels.skinny_gemm import run_choice
    from graphrt.kernels.ws_gemm import WsConfig, tma_ok

    m, n, k = 12, 128, 64
    x = torch.randn(m, k + 1).half()[:, 1:]
    assert not tma_ok(x)
    w = (torch.randn(n, k) * k**-0.5).half()
    b = torch.randn(n).half()
    got = run_choice(x, w, b, False, WsConfig(64, 16, 32, 4, 4, 1))
    want = reference(x, w, b, False)
    assert ((got.float() - want.float()).abs() <= bound(x, w, torch.float16) + 1e-3 * want.float().abs()).all()

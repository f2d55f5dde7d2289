"""The residual add + RMSNorm folded into the swap-AB step GEMMs (graphrt/kernels/norm_fold.py):
a producer GEMM (residual add + per-tile sums of squares in its epilogue) and a consumer GEMM (the
norm in its prologue) against the separate path they replace: the plain swap-AB GEMM,
layer_ops.add_rms_norm, the plain swap-AB GEMM on its output, with the same tile configs.

On CPU the kernels run under Triton's interpreter (fp16: it multiplies bf16 tiles wrongly). With
exact operands (small integers times powers of two: every product, residual sum and sum of
squares is exact in fp16 / fp32, so the order of the fp32 sum of squares cannot matter) the folded
pair must give the separate path's bits, split-K, partial tiles and SiLU included. With random
operands the residual is still bit-equal (the same rounded delta, the same rounded add) and the
consumer's output stays within one fp16 unit of its inputs times |w| of the separate path's.
GPU (bf16, tests/test_norm_fold_gpu.py): the step graphs with folded norms against the norm
kernels, token for token."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="CPU case runs in the Triton interpreter (TRITON_INTERPRET=1)")
EPS = 1e-6
DT = torch.float16


def operands(m, k1, n, n_out, bias, silu, exact, seed):
    g = torch.Generator().manual_seed(seed)
    if exact:  # products, sums and squares exact: every order of every sum gives the same bits
        h = torch.randint(-2, 3, (m, k1), generator=g) * 1.0
        o_w = torch.randint(-1, 2, (n, k1), generator=g) * 0.25
        r = torch.randint(-16, 17, (m, n), generator=g) * 0.25
        # not powers of two: rounding the scaled row before the weight product is visible
        norm_w = torch.randint(5, 23, (n,), generator=g) / 8 * (torch.randint(0, 2, (n,), generator=g) * 2 - 1)
    else:
        h = torch.randn(m, k1, generator=g)
        o_w = torch.randn(n, k1, generator=g) * k1**-0.5
        r = torch.randn(m, n, generator=g) * 2
        norm_w = 1 + 0.2 * torch.randn(n, generator=g)
    rows = n_out * (2 if silu else 1)
    w2 = torch.randn(rows, n, generator=g) * n**-0.5
    b2 = torch.randn(rows, generator=g) if bias else None
    to = lambda t: None if t is None else t.to(DT).contiguous()  # noqa: E731
    return to(h), to(o_w), to(r), to(norm_w), to(w2), to(b2)


def separate_and_folded(m, k1, n, n_out, bias, silu, prod, cons, exact, seed=0):
    from graphrt.kernels.layer_ops import add_rms_norm
    from graphrt.kernels.norm_fold import consume, produce
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_matmul

    prod, cons = SwabConfig(*prod), SwabConfig(*cons)
    h, o_w, r, norm_w, w2, b2 = operands(m, k1, n, n_out, bias, silu, exact, seed)
    delta = swab_matmul(h, o_w, None, False, prod)
    res, normed = add_rms_norm(r, delta, norm_w, EPS)
    want = swab_matmul(normed, w2, b2, silu, cons)
    outs = []
    for _ in range(3):  # later calls: split-K counters reset; the same bits every call
        x, ss = produce(h, SimpleNamespace(weight=o_w, bias=None), r, prod)
        got = consume(x, ss, SimpleNamespace(weight=norm_w, eps=EPS), SimpleNamespace(weight=w2, bias=b2), silu, cons)
        outs.append((x, ss.parts, got))
    for x, parts, got in outs[1:]:
        assert torch.equal(x, outs[0][0]) and torch.equal(parts, outs[0][1]) and torch.equal(got, outs[0][2])
    return (res, normed, want), outs[0], (h, o_w, r, norm_w, w2, b2)


# (m, k1, n, n_out, bias, silu, producer config, consumer config): configs are
# (block_w, block_t, block_k, split, warps, stages, tma)
CASES = [
    (12, 64, 200, 96, True, False, (64, 16, 32, 1, 4, 2, True), (64, 16, 32, 1, 4, 2, True)),  # qkv-like: bias
    (12, 96, 200, 96, True, False, (64, 16, 32, 3, 4, 2, True), (64, 16, 32, 2, 4, 2, False)),  # split-K both sides
    (5, 64, 136, 64, False, True, (64, 16, 32, 2, 4, 2, False), (64, 16, 32, 1, 4, 2, True)),  # SiLU consumer
    (12, 128, 128, 64, False, True, (64, 16, 32, 4, 4, 2, True), (64, 16, 64, 2, 4, 2, True)),  # SiLU split-K
    (40, 64, 192, 64, False, False, (64, 16, 32, 2, 4, 2, True), (64, 32, 32, 3, 4, 2, True)),  # 3 / 2 token tiles
    (12, 64, 264, 80, True, False, (128, 16, 32, 1, 4, 2, False), (64, 16, 32, 1, 4, 2, False)),  # 128-row tiles
]


@interpreted
@pytest.mark.parametrize("case", CASES)
def test_folded_pair_equals_norm_kernel_and_gemms_exactly(case):
    (res, normed, want), (x, parts, got), (_, _, _, _, _, _) = separate_and_folded(*case, exact=True)
    m, _, n = case[:3]
    assert torch.equal(x, res)  # the new residual: r + round(delta), rounded
    tiles = -(-n // case[6][0])
    want_parts = torch.nn.functional.pad(res.float().square(), (0, tiles * case[6][0] - n)).view(m, tiles, -1).sum(-1)
    assert parts.shape == (tiles, m) and torch.equal(parts, want_parts.t())
    assert got.shape == want.shape and torch.equal(got, want)


@interpreted
@pytest.mark.parametrize("case", CASES[:4])
def test_folded_pair_within_bound_on_random_operands(case):
    """Random data: the sum of squares may add in another order (its last bit may differ, so the
    normalized input by one fp16 unit); the consumer's output within that unit times |w|, plus
    two units of the output."""
    (res, normed, want), (x, parts, got), (_, _, _, _, w2, b2) = separate_and_folded(*case, exact=False, seed=5)
    assert torch.equal(x, res)
    torch.testing.assert_close(parts.sum(0), res.float().square().sum(-1), rtol=1e-5, atol=0)
    ulp = torch.finfo(DT).eps
    tol = ulp * (normed.float().abs() @ w2.float().abs().t())
    if case[5]:
        g_t, u_t = tol.chunk(2, -1)
        tol = (g_t * 1.2 + u_t) * 4
    err = (got.float() - want.float()).abs()
    assert (err <= tol + 2 * ulp * want.float().abs() + 1e-4).all(), (err.max().item(), tol.max().item())


def test_folded_gemm_refuses_bad_norm_operands():
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_matmul

    x = torch.randn(4, 64, dtype=DT)
    w = torch.randn(32, 64, dtype=DT)
    cfg = SwabConfig(64, 16, 32, 1, 4, 2, False)
    ss = torch.ones(2, 4)
    with pytest.raises(ValueError, match="norm weight"):
        swab_matmul(x, w, config=cfg, norm=(torch.ones(63, dtype=DT), ss, EPS))
    with pytest.raises(ValueError, match="sums of squares"):
        swab_matmul(x, w, config=cfg, norm=(torch.ones(64, dtype=DT), torch.ones(2, 5), EPS))
    with pytest.raises(ValueError, match="residual"):
        swab_matmul(x, w, config=cfg, residual=torch.zeros(4, 31, dtype=DT))
    with pytest.raises(ValueError, match="residual"):
        swab_matmul(x, torch.randn(64, 64, dtype=DT), silu=True, config=cfg, residual=torch.zeros(4, 32, dtype=DT))


def test_plan_and_mode(monkeypatch):
    """Nothing folds off CUDA or under GRAPHRT_STEP_NORM=kernel (the default); a bad mode is named."""
    from graphrt.kernels import norm_fold

    layer = SimpleNamespace(**{name: SimpleNamespace(weight=torch.zeros(8, 8)) for name in
                               ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")})
    assert norm_fold.plan([layer], torch.zeros(12, 8)) == norm_fold.NO_FOLD
    monkeypatch.delenv("GRAPHRT_STEP_NORM", raising=False)
    assert norm_fold.mode() == "kernel"  # the default: the fold measured slower (docs/notes.md)
    monkeypatch.setenv("GRAPHRT_STEP_NORM", "kernel")
    assert norm_fold.mode() == "kernel"
    monkeypatch.setenv("GRAPHRT_STEP_NORM", "fused")
    with pytest.raises(ValueError, match="GRAPHRT_STEP_NORM"):
        norm_fold.mode()


@interpreted
def test_layer_helpers_route_pending_deltas_and_sums():
    """normed_linear / residual_linear (what Qwen2Layer.forward_fused runs): a delta goes through
    the norm kernel, a SumSquares through the folded consumer; both give the same bits here."""
    from graphrt.kernels import norm_fold, skinny_gemm
    from graphrt.kernels.swap_ab_gemm import SwabConfig

    h, o_w, r, norm_w, w2, b2 = operands(12, 64, 200, 96, True, False, True, 3)
    cfg = SwabConfig(64, 16, 32, 2, 4, 2, False)
    o, lin = SimpleNamespace(weight=o_w, bias=None), SimpleNamespace(weight=w2, bias=b2)
    norm = SimpleNamespace(weight=norm_w, eps=EPS)
    try:  # the chooser's pick for these shapes (CPU tensors never reach it otherwise)
        orig_choose, orig_linear = norm_fold.choose, norm_fold.linear
        norm_fold.choose = lambda *a: cfg
        norm_fold.linear = lambda x, mod: skinny_gemm.run_choice(x, mod.weight, mod.bias, False, cfg)
        x_k, delta = norm_fold.residual_linear(h, o, r, fold=False)
        x_f, pending = norm_fold.residual_linear(h, o, r, fold=True)
        assert isinstance(pending, norm_fold.SumSquares) and not isinstance(delta, norm_fold.SumSquares)
        x_k, y_k = norm_fold.normed_linear(x_k, delta, norm, lin)
        x_f, y_f = norm_fold.normed_linear(x_f, pending, norm, lin)
    finally:
        norm_fold.choose, norm_fold.linear = orig_choose, orig_linear
    assert torch.equal(x_k, x_f) and torch.equal(y_k, y_f)

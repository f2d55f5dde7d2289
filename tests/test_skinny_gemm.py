"""The skinny step GEMM (graphrt/kernels/skinny_gemm.py) against torch: every epilogue (none, bias,
SiLU * up), split-K with the last-arriving reduction, row counts that do not fill a tile, and the
step's shapes at all captured batch sizes on the GPU (within bf16 accumulation bounds)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")


def reference(x, w, bias, silu):
    """fp32-accumulated product rounded once to the dtype, then the epilogue as the unfused path rounds."""
    y = (x.float() @ w.float().t() + (bias.float() if bias is not None else 0)).to(x.dtype)
    if silu:
        g, u = y.chunk(2, dim=-1)
        return (F.silu(g.float()).to(x.dtype).float() * u.float()).to(x.dtype)
    return y


def bound(x, w, dtype):
    """Accumulation-order bound of one output: a few units in the last place of the dtype at the
    size of sum |x||w| (the reference and the kernel add in different orders, both in fp32, then round)."""
    eps = torch.finfo(dtype).eps
    return 2 * eps * (x.float().abs() @ w.float().abs().t()) + 1e-6


def check(device, dtype, m, n, k, bias, silu, config):
    from graphrt.kernels.skinny_gemm import Config, skinny_matmul

    gen = torch.Generator(device=device).manual_seed(m * 7 + n + k)
    x = torch.randn(m, k, device=device, generator=gen).to(dtype)
    w = (torch.randn(n, k, device=device, generator=gen) * k**-0.5).to(dtype)
    b = torch.randn(n, device=device, generator=gen).to(dtype) if bias else None
    for _ in range(2):  # a second call: the split-K counters were reset by the first
        got = skinny_matmul(x, w, b, silu, Config(*config))
        want = reference(x, w, b, silu)
        tol = bound(x, w, dtype)
        if silu:
            g_t, u_t = tol.chunk(2, -1)
            tol = (g_t * 1.2 + u_t) * 2  # silu's slope < 1.1; the product scales each by the other factor (|.| < ~4)
        err = (got.float() - want.float()).abs()
        assert torch.isfinite(got).all()
        assert (err <= tol + torch.finfo(dtype).eps * want.float().abs() * 2).all(), (err.max(), tol.max())


CPU_CASES = [  # (m, n, k, bias, silu, (block_n, block_k, split, warps, stages))
    (12, 48, 64, True, False, (16, 32, 1, 4, 1)),
    (5, 40, 96, False, False, (16, 32, 2, 4, 1)),  # rows and channels past the tile edge, split-K 2
    (12, 32, 100, True, False, (16, 32, 4, 4, 1)),  # K not a multiple of the splits: a short last split
    (24, 64, 64, False, True, (16, 32, 1, 4, 1)),  # SiLU * up epilogue
    (130, 32, 64, True, False, (16, 32, 2, 4, 1)),  # more rows than one tile: two row tiles
]


@pytest.mark.parametrize("case", CPU_CASES)
def test_skinny_gemm_cpu(case):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU case runs in the Triton interpreter")
    check("cpu", torch.float16, *case)  # the interpreter multiplies bf16 tiles wrongly (triton 3.9); GPU: bf16


def quantize_e4m3(w):
    """Per-row symmetric e4m3 weights and their fp32 scales (absmax / 448)."""
    scale = (w.float().abs().amax(dim=1) / 448.0).clamp(min=1e-12)
    return (w.float() / scale[:, None]).to(torch.float8_e4m3fn), scale


def check_fp8(device, dtype, m, n, k, bias, silu, config):
    """Weight-only FP8: the kernel on e4m3 weights + per-row scales against the bf16/fp16 reference
    on the dequantized weights (w8 * scale, formed in fp32, as `reference` multiplies in fp32)."""
    from graphrt.kernels.skinny_gemm import Config, skinny_matmul

    gen = torch.Generator(device=device).manual_seed(m * 5 + n + k)
    x = torch.randn(m, k, device=device, generator=gen).to(dtype)
    w = torch.randn(n, k, device=device, generator=gen) * k**-0.5 * (1 + torch.rand(n, 1, device=device, generator=gen) * 4)
    w8, scale = quantize_e4m3(w)
    w_deq = w8.float() * scale[:, None]  # what the kernel computes with, exactly (fp32)
    b = torch.randn(n, device=device, generator=gen).to(dtype) if bias else None
    for _ in range(2):
        got = skinny_matmul(x, w8, b, silu, Config(*config), scale=scale)
        y = x.float() @ w_deq.t() + (b.float() if b is not None else 0)
        if silu:
            g, u = y.to(dtype).chunk(2, dim=-1)
            want = (F.silu(g.float()).to(dtype).float() * u.float()).to(dtype)
        else:
            want = y.to(dtype)
        tol = bound(x, w_deq, dtype)
        if silu:
            g_t, u_t = tol.chunk(2, -1)
            tol = (g_t * 1.2 + u_t) * 2
        err = (got.float() - want.float()).abs()
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert (err <= tol + torch.finfo(dtype).eps * want.float().abs() * 2).all(), (err.max(), tol.max())
        # and far from the product with the raw (unscaled) e4m3 values: the scale is applied
        assert silu or not torch.allclose(got.float(), (x.float() @ w8.float().t()).to(dtype).float(), atol=1e-2)


@pytest.mark.parametrize("case", CPU_CASES)
def test_skinny_gemm_fp8_weights_cpu(case):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU case runs in the Triton interpreter")
    check_fp8("cpu", torch.float16, *case)


def test_skinny_gemm_fp8_refuses_bad_scales():
    from graphrt.kernels.skinny_gemm import skinny_matmul

    x = torch.randn(4, 64, dtype=torch.float16)
    w8, scale = quantize_e4m3(torch.randn(32, 64))
    with pytest.raises(ValueError, match="scale"):
        skinny_matmul(x, w8)  # fp8 without a scale
    with pytest.raises(ValueError, match="scale"):
        skinny_matmul(x, w8, scale=scale[:16])
    with pytest.raises(ValueError, match="scale"):
        skinny_matmul(x, w8.to(torch.float16), scale=scale)  # a scale for non-fp8 weights
    with pytest.raises(ValueError, match="dtype"):
        skinny_matmul(x, w8.to(torch.bfloat16))


STEP_SHAPES = [(2560, 2048, True, False), (2048, 2048, False, False), (22016, 2048, False, True),
               (2048, 11008, False, False)]  # qkv (bias), o, gate/up (SiLU), down


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", STEP_SHAPES)
def test_skinny_gemm_step_shapes_gpu(batch, shape):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    from graphrt.kernels.skinny_gemm import candidates, shortlist

    n, k, bias, silu = shape
    m = 12 * batch
    out_n = n // 2 if silu else n
    configs = set(shortlist(m, out_n, k, silu)) | set(candidates(m, out_n, k, silu)[::7])
    for cfg in configs:
        check("cuda", torch.bfloat16, m, n, k, bias, silu, cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("shape", STEP_SHAPES)
def test_skinny_gemm_fp8_weights_step_shapes_gpu(batch, shape):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    from graphrt.kernels.skinny_gemm import shortlist

    n, k, bias, silu = shape
    m = 12 * batch
    for cfg in shortlist(m, n // 2 if silu else n, k, silu):
        check_fp8("cuda", torch.bfloat16, m, n, k, bias, silu, cfg)


def test_shortlists_cover_the_step_shapes_and_skip_small_models():
    """Start-up times only the shortlist: every 3B step GEMM has one (1-3 configs, each a valid
    split of K), and a small model's shapes have none (cuBLAS, untimed)."""
    from graphrt.kernels.skinny_gemm import shortlist

    for n, k, _, silu in STEP_SHAPES:
        out_n = n // 2 if silu else n
        for batch in (1, 2, 4, 8, 16, 32):
            picks = shortlist(12 * batch, out_n, k, silu)
            assert 1 <= len(picks) <= 3, (n, k, batch)
            assert all(k // split >= block_k for _, block_k, split, _, _ in picks)
            assert not silu or all(split == 1 for _, _, split, _, _ in picks)
    assert shortlist(12, 64, 64, False) == [] and shortlist(12, 128, 64, True) == []

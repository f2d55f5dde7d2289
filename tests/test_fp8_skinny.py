"""The skinny FP8 GEMM of the decode step (calib/triton_gemm.py): split-K with the last-arriving
reduction, the bf16 input quantized inside the kernel, partial tiles, counters reset between calls.

On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set by conftest without a
GPU). The interpreter rounds some values to e4m3 wrongly (on exponent carries) and truncates
fp32 to bf16, so the CPU tests use small integers times powers of two: every operand is an exact
e4m3 value, every product and fp32 sum is exact, and every result is exact in bf16 (|sum| < 256),
so each split order gives the same bits and the kernel must equal the exact product. tests/test_calib_gpu.py checks the same kernel on the GPU with random data
(in-kernel quantization = the quantizer's bytes; every chosen config = the untuned kernel within
the fp32 summation bound)."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

FP8 = torch.float8_e4m3fn
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def exact_operands(m, n, k, seed, x_scale=0.25):
    """x in {-2..2}, w in {-1, 0, 1}, channel scales powers of two, bias a small multiple of
    x_scale * w_scale: every result is (integer < 256 in magnitude) * power of two, exact in bf16."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (m, k), generator=g).float()
    w = torch.randint(-1, 2, (n, k), generator=g).float()
    w_scale = 2.0 ** torch.randint(-8, -3, (1, n), generator=g).float()
    bias = torch.randint(-8, 9, (n,), generator=g).float() * x_scale * w_scale[0]
    assert (x @ w.t()).abs().max() + 8 < 256
    return x.to(DEVICE), w.to(DEVICE), w_scale.to(DEVICE), bias.to(DEVICE)


def want(x, w, x_scale, w_scale, bias):
    return ((x.double() @ w.double().t()) * x_scale * w_scale.double() + bias.double()).to(torch.bfloat16)


@pytest.mark.parametrize("m,n,k,config", [
    (12, 80, 256, (16, 64, 1, 4, 2)),
    (12, 80, 256, (16, 64, 2, 4, 2)),
    (12, 80, 320, (32, 64, 4, 4, 2)),  # K = 5 blocks in 4 splits: the last split is short
    (33, 48, 192, (32, 32, 3, 4, 2)),  # two row tiles' worth of rows in one BLOCK_M=64, N not a multiple of 32
    (1, 40, 128, (16, 32, 8, 4, 2)),  # N = 2.5 tiles, one row
])
def test_split_k_equals_the_exact_product(m, n, k, config):
    from calib.triton_gemm import skinny_fp8_linear

    x, w, w_scale, bias = exact_operands(m, n, k, seed=m + n + k)
    row_scale = torch.full((m, 1), 0.25, device=DEVICE)
    q, qw, b16 = x.to(FP8), w.to(FP8), bias.to(torch.bfloat16)
    expected = want(x, w, 0.25, w_scale, bias)
    for _ in range(3):  # later calls: the counters were reset by the reducing program
        got = skinny_fp8_linear(q, qw, row_scale, w_scale, b16, config=config)
        assert got.dtype == torch.bfloat16 and got.shape == (m, n)
        assert torch.equal(got, expected)


def test_split_k_workspace_counters_end_at_zero():
    from calib import triton_gemm

    x, w, w_scale, _ = exact_operands(12, 64, 256, seed=3)
    triton_gemm.skinny_fp8_linear(x.to(FP8), w.to(FP8), torch.ones(12, 1, device=DEVICE), w_scale,
                                  config=(16, 64, 4, 4, 2))
    locks = [lock for key, (_, lock) in triton_gemm._scratch.items() if key[2:4] == (64, 4)]
    assert locks and all(int(lock.abs().sum()) == 0 for lock in locks)


@pytest.mark.parametrize("config", [(16, 64, 1, 4, 2), (32, 64, 2, 4, 2)])
def test_bf16_input_is_quantized_in_the_kernel_by_the_static_rule(config):
    """bf16 x with the static scale = the quantizer's e4m3 x with its row scales: values beyond
    +-448 * scale clip to +-448, the rest are exact e4m3 values times the scale (power of two)."""
    from calib.quantize import quantize_input_torch
    from calib.triton_gemm import skinny_fp8_linear

    m, n, k = 12, 48, 256
    x, w, w_scale, bias = exact_operands(m, n, k, seed=11, x_scale=2.0**-5)
    scale = torch.tensor(2.0**-5, device=DEVICE)
    xb = (x * scale).to(torch.bfloat16)
    xb[0, :4] = torch.tensor([500.0, -600.0, 1e4, -1e4], device=DEVICE) * scale  # clipped to +-448
    xb[1, 3] = 0.0
    q, rs = quantize_input_torch(xb, 1.0 / scale, scale)
    qw, b16 = w.to(FP8), bias.to(torch.bfloat16)
    got = skinny_fp8_linear(xb, qw, scale, w_scale, b16, config=config, inv_scale=1.0 / scale)
    assert torch.equal(got, skinny_fp8_linear(q, qw, rs, w_scale, b16, config=config))
    assert torch.equal(got[1:], want(q[1:].float(), w, float(scale), w_scale, bias))  # row 0: clipped, big sums
    with pytest.raises(ValueError, match="e4m3 x with row scales"):
        skinny_fp8_linear(xb, qw, scale, w_scale)


def test_fp8_linear_static_path_takes_one_launch_and_same_bits():
    """FP8Linear.forward (bf16 x, static scale) and forward_fp8 (e4m3 x from a producer) give the same
    bits on the skinny path; on CPU FP8Linear runs _scaled_mm, so this part is GPU only."""
    if DEVICE != "cuda":
        pytest.skip("FP8Linear uses the skinny kernel on CUDA only (CPU: _scaled_mm)")
    from calib import FP8Linear

    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(2560, 2048, device="cuda", generator=g) / 45).to(torch.bfloat16)
    lin = FP8Linear(w, torch.randn(2560, device="cuda", generator=g).to(torch.bfloat16), 4.0 / 448)
    x = torch.randn(12, 2048, device="cuda", generator=g).to(torch.bfloat16)
    q, rs = lin.quantize(x)
    assert torch.equal(lin(x), lin.forward_fp8(q, rs))


def test_chooser_keeps_the_untuned_config_off_cuda_and_on_request(monkeypatch):
    from calib import triton_gemm

    assert triton_gemm.choose_skinny(2048, 11008, torch.device("cpu")) == triton_gemm.untuned(2048, 11008)
    monkeypatch.setenv("GRAPHRT_FP8_SKINNY_TUNE", "off")
    assert triton_gemm.choose_skinny(2048, 11008, torch.device("cuda")) == (16, 512, 1, 4, 3)
    monkeypatch.setenv("GRAPHRT_FP8_SKINNY_TUNE", "fast")
    with pytest.raises(ValueError, match="GRAPHRT_FP8_SKINNY_TUNE"):
        triton_gemm.choose_skinny(2048, 11008, torch.device("cuda"))
    for n, k in [(2560, 2048), (2048, 2048), (22016, 2048), (2048, 11008)]:  # the 3B's shapes
        short = triton_gemm.shortlist(n, k)
        assert short[0] == triton_gemm.untuned(n, k) and len(set(short)) == len(short) > 3
        for bn, bk, split, _, _ in short[1:]:
            assert k // split >= bk and triton.cdiv(n, bn) * split >= 100

"""The mid-rows FP8 GEMM (calib/fp8_mid_gemm.py): e4m3 x e4m3 tensor-core tiles, split-K with the
last-arriving reduction in split order, row x channel scales and bias, partial row / channel tiles.

On CPU the kernel runs under Triton's interpreter with exact operands (small integers, power-of-two
scales: every product, fp32 sum and bf16 result is exact), so every split gives the exact product.
The GPU tests compare with torch._scaled_mm on the 3B's shapes at 384 rows and replay a CUDA graph."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

FP8 = torch.float8_e4m3fn
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def exact_operands(m, n, k, seed):
    """x and w in {-1, 0, 1}, row scales 2^-2 / 2^-3, channel scales powers of two, bias a small multiple of
    2^-3 x the channel scale: every result is (integer < 256 in magnitude) * power of two, exact in bf16
    (the interpreter truncates fp32 to bf16, so the test needs exact results)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (m, k), generator=g).float()
    w = torch.randint(-1, 2, (n, k), generator=g).float()
    rs = 2.0 ** -torch.randint(2, 4, (m, 1), generator=g).float()
    ws = 2.0 ** torch.randint(-8, -3, (1, n), generator=g).float()
    bias = torch.randint(-8, 9, (n,), generator=g).float() * 2.0**-3 * ws[0]
    assert 2 * (x @ w.t()).abs().max() + 8 < 256
    return x.to(DEVICE), w.to(DEVICE), rs.to(DEVICE), ws.to(DEVICE), bias.to(DEVICE)


def reference(x, w, rs, ws, bias):
    """FP8Linear.reference's math: fp32 (here float64) on the dequantized operands, one bf16 rounding."""
    y = (x.double() * rs.double()) @ (w.double() * ws.double().t()).t()
    return (y if bias is None else y + bias.double()).to(torch.bfloat16)


@pytest.mark.parametrize("m,n,k,config,with_bias", [
    (65, 45, 256, (64, 32, 64, 1, 4, 2), True),  # one row past a tile, N = 1.4 tiles
    (96, 80, 256, (64, 32, 64, 2, 4, 2), False),
    (130, 33, 320, (64, 16, 64, 3, 4, 2), True),  # K = 5 blocks in 3 splits: the last split is short
    (100, 47, 192, (32, 32, 64, 2, 4, 2), False),  # K = 3 blocks in 2 splits: masked K tail
])
def test_mid_gemm_equals_the_exact_product_and_is_bit_stable(m, n, k, config, with_bias):
    from calib.fp8_mid_gemm import mid_fp8_linear

    x, w, rs, ws, bias = exact_operands(m, n, k, seed=m + n + k)
    b16 = bias.to(torch.bfloat16) if with_bias else None
    expected = reference(x, w, rs, ws, b16)
    first = mid_fp8_linear(x.to(FP8), w.to(FP8), rs, ws, b16, config)
    assert first.dtype == torch.bfloat16 and first.shape == (m, n)
    assert torch.equal(first, expected)
    again = mid_fp8_linear(x.to(FP8), w.to(FP8), rs, ws, b16, config)  # counters were reset by the reducer
    assert torch.equal(again, first)


def test_split_k_counters_end_at_zero_and_workspace_is_reused():
    from calib import fp8_mid_gemm

    x, w, rs, ws, _ = exact_operands(80, 40, 256, seed=5)
    fp8_mid_gemm.mid_fp8_linear(x.to(FP8), w.to(FP8), rs, ws, None, (64, 32, 64, 2, 4, 2), reserve_rows=128)
    keys = [key for key in fp8_mid_gemm._scratch if key[1:3] == (40, 2)]
    assert keys and all(int(fp8_mid_gemm._scratch[key][1].abs().sum()) == 0 for key in keys)
    before = len(fp8_mid_gemm._scratch)
    fp8_mid_gemm.mid_fp8_linear(x[:70].to(FP8), w.to(FP8), rs[:70], ws, None, (64, 32, 64, 2, 4, 2))
    assert len(fp8_mid_gemm._scratch) == before  # fewer rows fit the bucket's workspace


def test_switch_refuses_a_bad_value_and_off_device_keeps_scaled_mm(monkeypatch):
    from calib import FP8Linear, fp8_mid_gemm
    from graphrt import OptionError

    assert fp8_mid_gemm.choose_mid(384, 2048, 11008, False, torch.device("cpu")) == "cublas"
    assert fp8_mid_gemm.mid_bucket(64) is None and fp8_mid_gemm.mid_bucket(65) == 128
    assert fp8_mid_gemm.mid_bucket(464) == 512 and fp8_mid_gemm.mid_bucket(1025) is None
    monkeypatch.setenv("GRAPHRT_FP8_MID", "triton")
    with pytest.raises(OptionError, match="GRAPHRT_FP8_MID"):
        FP8Linear(torch.randn(16, 32), None, 0.01)
    with pytest.raises(OptionError, match="GRAPHRT_FP8_MID"):
        fp8_mid_gemm.mid_switch()
    monkeypatch.setenv("GRAPHRT_FP8_MID", "off")
    assert fp8_mid_gemm.mid_switch() == "off"


def test_shortlist_fits_the_lm_shapes():
    from calib.fp8_mid_gemm import shortlist

    for m in (96, 384, 512, 1024):
        for n, k in [(2560, 2048), (2048, 2048), (22016, 2048), (2048, 11008)]:
            short = shortlist(m, n, k)
            assert short and len(set(short)) == len(short)
            for bm, bn, bk, split, _, _ in short:
                assert k // split >= 4 * bk


@pytest.mark.gpu
@pytest.mark.parametrize("name,n,k,with_bias", [("qkv", 2560, 2048, True), ("o", 2048, 2048, False),
                                                  ("gate_up", 22016, 2048, False), ("down", 2048, 11008, False)])
def test_gpu_matches_scaled_mm_on_3b_shapes(name, n, k, with_bias):
    if DEVICE != "cuda":
        pytest.skip("needs CUDA")
    from calib.fp8_mid_gemm import mid_fp8_linear, shortlist

    g = torch.Generator(device="cuda").manual_seed(1)
    m = 384
    x = torch.randn(m, k, device="cuda", generator=g).to(FP8)
    w = (torch.randn(n, k, device="cuda", generator=g) * 8).to(FP8)
    rs = torch.rand(m, 1, device="cuda", generator=g) + 0.5
    ws = torch.rand(1, n, device="cuda", generator=g) * 1e-3
    bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16) if with_bias else None
    want = torch._scaled_mm(x, w.t(), scale_a=rs, scale_b=ws, bias=bias, out_dtype=torch.bfloat16,
                            use_fast_accum=True).float()
    exact = (x.double() * rs.double()) @ (w.double() * ws.double().t()).t()
    exact = exact if bias is None else exact + bias.double()

    def rel(y):
        return float((y.double() - exact).norm() / exact.norm())
    # both use Hopper's fast FP8 accumulation (_scaled_mm: use_fast_accum=True, the runtime's default;
    # Triton's default on sm90), whose error (~0.1-0.3% at K=11008) exceeds the bf16 output rounding:
    # the kernel must be as close to the exact product as _scaled_mm is
    bound = 2 * rel(want) + 2**-9
    for cfg in shortlist(m, n, k)[:6] + [(128, 64, 128, 2, 4, 4)]:
        got = mid_fp8_linear(x, w, rs, ws, bias, cfg).float()
        print(name, cfg, f"rel err {rel(got):.2e} (_scaled_mm {rel(want):.2e})")
        assert rel(got) <= bound, (cfg, rel(got), rel(want))
        assert torch.equal(got, mid_fp8_linear(x, w, rs, ws, bias, cfg).float())


@pytest.mark.gpu
def test_gpu_graph_replay_with_new_inputs(monkeypatch):
    if DEVICE != "cuda":
        pytest.skip("needs CUDA")
    from calib.fp8_mid_gemm import mid_fp8_linear

    g = torch.Generator(device="cuda").manual_seed(2)
    m, n, k = 384, 2048, 11008
    x = torch.randn(m, k, device="cuda", generator=g).to(FP8)
    w = (torch.randn(n, k, device="cuda", generator=g) * 8).to(FP8)
    rs = torch.rand(m, 1, device="cuda", generator=g) + 0.5
    ws = torch.rand(1, n, device="cuda", generator=g) * 1e-3
    for cfg in [(128, 64, 128, 2, 4, 4), (64, 128, 128, 4, 4, 4), (128, 128, 128, 1, 8, 4)]:
        mid_fp8_linear(x, w, rs, ws, None, cfg)  # compile + workspace outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = mid_fp8_linear(x, w, rs, ws, None, cfg)
        for seed in range(3):
            gen = torch.Generator(device="cuda").manual_seed(10 + seed)
            x.copy_(torch.randn(m, k, device="cuda", generator=gen).to(FP8))
            rs.copy_(torch.rand(m, 1, device="cuda", generator=gen) + 0.5)
            graph.replay()
            assert torch.equal(y, mid_fp8_linear(x, w, rs, ws, None, cfg)), cfg
    # through FP8Linear: the chooser at warm-up, then the same bits eager and in a graph
    from calib import FP8Linear

    monkeypatch.setenv("GRAPHRT_FP8_MID", "auto")
    lin = FP8Linear((torch.randn(n, k, device="cuda", generator=g) / 100).to(torch.bfloat16), None, 4.0 / 448)
    q, row_scale = lin.quantize(torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16))
    eager = lin.forward_fp8(q, row_scale)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = lin.forward_fp8(q, row_scale)
    graph.replay()
    assert torch.equal(y, eager)
    ref = lin.reference(q.float() * row_scale)  # the dequantized x re-quantizes to itself
    assert float((eager.float() - ref).norm() / ref.norm()) < 0.01

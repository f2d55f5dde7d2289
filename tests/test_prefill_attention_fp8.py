"""The prefill attention kernel writing o_proj's e4m3 input (graphrt/kernels/prefill_attention.py,
`fp8_for`; used by graphrt/kernels/fp8_ops.fp8_layer_forward under GRAPHRT_FP8_O_INPUT=attention):
the bytes must be those o_proj's own quantizer writes from the kernel's bf16 output, so the FP8
prefill is unchanged bit for bit and one pass over the attention output is gone.

On CPU the kernel runs under Triton's interpreter, whose e4m3 conversion is wrong for some values
(tests/test_fp8_vision.py says how), so there the reference is the quantizer kernel run through the
same interpreter; on the GPU it is torch's quantizer rule (calib/quantize.quantize_input_torch)."""

from __future__ import annotations

import os

import pytest
import torch

from calib import FP8Linear
from calib.quantize import FP8_MAX, quantize_input_torch

from test_prefill_attention import case

pytest.importorskip("triton")
INTERPRETED = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"


def _o_proj(width: int, amax: float, device) -> FP8Linear:
    w = torch.randn(8, width, generator=torch.Generator().manual_seed(0)) / width**0.5
    return FP8Linear(w.to(device), None, amax / FP8_MAX, "o_proj", act="static")


def _check(device, dtype, window, reference, **shape):
    from graphrt.kernels.prefill_attention import prefill_attention

    q, k, v, cu_q, cu_k, t, slots, used = case(device, dtype, **shape)
    hq, d = q.shape[1], q.shape[2]
    lin = _o_proj(hq * d, 0.5, device)  # attention outputs of ~0.5 clip in part
    got, rs = prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, True, window=window, fp8_for=lin)
    bf = prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, True, window=window)
    want, want_rs = reference(bf.reshape(q.shape[0], -1), lin.inv_input_scale, lin.input_scale)
    assert got.dtype == torch.float8_e4m3fn and got.shape == bf.shape and rs.shape == (q.shape[0], 1)
    assert torch.equal(got.reshape(q.shape[0], -1).view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(rs, want_rs.expand_as(rs))
    assert (got.float().abs() == FP8_MAX).any() and not got.float().isnan().any()  # some clip, none NaN


@pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (the GPU test covers the compiled kernel)")
@pytest.mark.parametrize("window", [0, 6])
def test_interp_store_writes_the_quantizer_bytes(window):
    from calib.quantize import quantize_input_triton

    _check("cpu", torch.bfloat16, window, quantize_input_triton)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [0, 6])
def test_store_writes_torchs_quantizer_bytes_on_gpu(window):
    """3B shape: 16 query heads, 2 KV heads, 128, a 480-token bucket."""
    _check("cuda", torch.bfloat16, window, quantize_input_torch, t=480, slots=1024, hq=16, hkv=2, d=128, seed=3)


def test_the_switch_decides_who_quantizes(monkeypatch):
    """The attention writes o_proj's input only for a static W8A8 o_proj above the skinny GEMM's
    rows and an attention that offers it; GRAPHRT_FP8_O_INPUT=quantizer keeps the pass, a bad value
    is refused naming the variable."""
    from graphrt.kernels import OptionError
    from graphrt.kernels.fp8_ops import quantizes_in_attention

    class Offers:
        quantizes_output = True

    lin = _o_proj(64, 1.0, "cpu")
    lin.use_skinny = True  # as on CUDA: <= 64 rows quantize inside the skinny GEMM
    monkeypatch.delenv("GRAPHRT_FP8_O_INPUT", raising=False)
    assert quantizes_in_attention(lin, Offers(), 480)
    assert not quantizes_in_attention(lin, Offers(), 12)  # a step row: the skinny GEMM quantizes
    assert not quantizes_in_attention(lin, object(), 480)  # step attention: no e4m3 store
    assert not quantizes_in_attention(torch.nn.Linear(64, 8), Offers(), 480)
    dyn = FP8Linear(torch.randn(8, 64), None, 1.0, "o", act="dynamic")
    assert not quantizes_in_attention(dyn, Offers(), 480)
    monkeypatch.setenv("GRAPHRT_FP8_O_INPUT", "quantizer")
    assert not quantizes_in_attention(lin, Offers(), 480)
    monkeypatch.setenv("GRAPHRT_FP8_O_INPUT", "kernel")
    with pytest.raises(OptionError, match="GRAPHRT_FP8_O_INPUT"):
        quantizes_in_attention(lin, Offers(), 480)

"""FP8 in the fused layer (graphrt/kernels/fp8_ops.py) and the FP8 modes (W8A8 static / per-token,
W8A16 weight-only), on CPU. The producer kernels run under Triton's interpreter
(TRITON_INTERPRET=1, set by conftest without a GPU); tests/test_calib_gpu.py checks the same
kernels on the GPU against the torch rule byte for byte.

The interpreter rounds some values to e4m3 wrongly when the rounding carries into the exponent
(1.99 -> 1 instead of 2), so on CPU the fused producers are compared with the unfused path's own
Triton quantizer run through the same interpreter (identical bytes expected), not with torch.
Random weights: tokens are compared between paths, never for meaning."""

from __future__ import annotations

import os

import pytest
import torch

from calib import FP8Linear, calibrate, quantize_model
from calib.apply import act_mode, mode, select
from calib.quantize import FP8_MAX, dequantize, quantize_input_dynamic_torch
from graphrt.layers import RMSNorm

from conftest import random_image

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
INTERPRETED = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="CPU interpreter test (GPU: tests/test_calib_gpu.py)")

EPS = 2.0**-4  # e4m3 relative rounding bound for normal values


def _weight(k, n, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) / k**0.5


def _linear(k, n, act, scale=0.05, seed=0):
    return FP8Linear(_weight(k, n, seed), None, scale, "lin", act=act)


@needs_interpreter
@pytest.mark.parametrize("act", ["static", "dynamic"])
@pytest.mark.parametrize("with_delta", [True, False])
def test_norm_producer_writes_the_unfused_bytes(act, with_delta):
    from calib.quantize import quantize_input_dynamic_triton, quantize_input_triton
    from graphrt.kernels.fp8_ops import add_rms_norm_fp8
    from graphrt.kernels.layer_ops import add_rms_norm

    g = torch.Generator().manual_seed(1)
    t, d = 5, 96
    x, delta = (torch.randn(t, d, generator=g) * 3).to(torch.bfloat16), torch.randn(t, d, generator=g).to(torch.bfloat16)
    norm = RMSNorm(d, 1e-6, torch.bfloat16)
    norm.weight.data = (torch.rand(d, generator=g) * 2).to(torch.bfloat16)
    lin = _linear(d, 8, act, scale=3.0 / FP8_MAX)
    dl = delta if with_delta else None
    res, q, rs = add_rms_norm_fp8(x, dl, norm.weight, norm.eps, lin)
    want_res, h = add_rms_norm(x, dl, norm.weight, norm.eps)
    assert torch.equal(res, want_res if with_delta else x)
    wq, wrs = quantize_input_dynamic_triton(h) if act == "dynamic" else quantize_input_triton(
        h, lin.inv_input_scale, lin.input_scale)
    assert torch.equal(q.view(torch.uint8), wq.view(torch.uint8))
    assert torch.equal(rs, wrs) and rs.shape == (t, 1)
    if act == "static":
        assert (rs == lin.input_scale).all()
    else:  # the torch rule's scales (the interpreter's e4m3 rounding is not compared, see the docstring)
        assert torch.equal(rs, quantize_input_dynamic_torch(h)[1])


@needs_interpreter
@pytest.mark.parametrize("act", ["static", "dynamic"])
def test_silu_producer_writes_the_unfused_bytes(act):
    from calib.quantize import quantize_input_dynamic_triton, quantize_input_triton
    from graphrt.kernels.fp8_ops import silu_mul_fp8
    from graphrt.kernels.layer_ops import silu_mul

    g = torch.Generator().manual_seed(2)
    t, i = 3, 1500  # two column blocks of the static kernel, one partial
    gate_up = (torch.randn(t, 2 * i, generator=g) * 2).to(torch.bfloat16)
    lin = _linear(i, 8, act, scale=4.0 / FP8_MAX)
    q, rs = silu_mul_fp8(gate_up, lin)
    h = silu_mul(gate_up)
    wq, wrs = quantize_input_dynamic_triton(h) if act == "dynamic" else quantize_input_triton(
        h, lin.inv_input_scale, lin.input_scale)
    assert torch.equal(q.view(torch.uint8), wq.view(torch.uint8))
    assert torch.equal(rs, wrs)


def test_dynamic_rule_and_modes():
    x = torch.tensor([[1.0, -3.0, 0.5], [0.0, 0.0, 0.0], [1e3, 2.0, -1e-3]])
    q, rs = quantize_input_dynamic_torch(x)
    assert rs.shape == (3, 1) and (rs > 0).all() and torch.isfinite(rs).all()
    deq = dequantize(q, rs)
    torch.testing.assert_close(deq.abs().amax(1), x.abs().amax(1), rtol=1e-6, atol=0)  # each row's max exact
    assert torch.equal(deq[1], torch.zeros(3))  # an all-zero row stays zero, no nan
    assert act_mode("lm") == "static" and act_mode("lm+w8a16") == "none" and act_mode("lm,w8a8-dynamic") == "dynamic"
    names = ["llm.layers.0.qkv_proj", "llm.layers.0.down_proj"]
    assert select(names, "lm+w8a16+-down_proj") == names[:1]
    with pytest.raises(ValueError, match="more than one mode"):
        act_mode("lm,w8a16,w8a8")
    with pytest.raises(ValueError, match="names no linears"):
        select(names, "w8a16")
    with pytest.raises(ValueError, match="act must be"):
        _linear(8, 8, "e5m2")
    assert mode("lm+w8a16-int8") == ("none", "int8") and mode("lm") == ("static", "e4m3")
    with pytest.raises(ValueError, match="weight-only"):
        FP8Linear(_weight(8, 8), None, 1.0, act="static", weight_format="int8")


@pytest.mark.parametrize("act", ["none", "dynamic", "int8"])
def test_modes_match_their_reference_within_bound(act):
    g = torch.Generator().manual_seed(3)
    k, n = 64, 48
    lin = FP8Linear(_weight(k, n), None, 0.05, act="none", weight_format="int8") if act == "int8" else _linear(k, n, act)
    x = torch.randn(12, k, generator=g) * torch.linspace(0.1, 10, 12)[:, None]  # rows of very different size
    y = lin(x)
    torch.testing.assert_close(y, lin.reference(x), rtol=1e-5, atol=1e-5)
    w = _weight(k, n)
    exact = x @ w.t()
    if act == "none":  # only the weight is rounded: |err| <= EPS * sum |x| |w|
        bound = EPS * (x.abs() @ w.abs().t())
        assert ((y - exact).abs() <= bound + 1e-6).all()
        with pytest.raises(RuntimeError, match="weight-only"):
            lin.quantize(x)
    if act == "int8":  # round to nearest on a grid of amax/127 per channel: |err| <= step/2 * sum |x|
        step = _weight(k, n).abs().amax(1) / 127
        assert ((y - exact).abs() <= (x.abs().sum(1, keepdim=True) * step[None, :] / 2) * 1.001 + 1e-6).all()
        assert lin.weight_fp8.dtype == torch.int8
    rel = ((y - exact).norm(dim=1) / exact.norm(dim=1))
    assert (rel < (0.01 if act == "int8" else 0.06)).all()  # per-token scales: small rows as accurate as large


@pytest.fixture(scope="module")
def calib_file(tiny_engine, tmp_path_factory):
    pairs = [(random_image(70 + 9 * i, 60, seed=10 + i), q) for i, q in enumerate(["cat", "person</c>car", "dog"])]
    return calibrate(tiny_engine, pairs, steps=2, batch=2, progress=False).save(
        tmp_path_factory.mktemp("calib") / "calib.json")


@needs_interpreter
@pytest.mark.parametrize("scope", ["lm", "lm+w8a8-dynamic", "lm+w8a16", "lm,-down_proj", "lm+w8a16-int8"])
def test_fused_fp8_path_equals_fp8_eager(tiny_engine, calib_file, monkeypatch, scope):
    """The fused stage bodies (producers writing the e4m3 inputs) with FP8 linears give the FP8
    eager loop's tokens. The eager linears quantize with the interpreter's Triton quantizer here,
    so both paths round the same way (see the module docstring)."""
    import calib.fp8_linear as fl
    from calib import quantize as qz
    from capture import GraphRuntime
    from test_static_path import BUCKETS, CASES, GEN, eager_tokens, prepare

    def triton_rule(x2d, inv, scale, use_triton, dynamic=False):
        return qz.quantize_input_dynamic_triton(x2d) if dynamic else qz.quantize_input_triton(x2d, inv, scale)

    monkeypatch.setattr(fl, "quantize_input", triton_rule)
    fp8 = tiny_engine.with_options(fp8=str(calib_file), fp8_scope=scope, graphs="off")
    layer = fp8.model.llm.layers[0]
    want_act = {"lm": "static", "lm,-down_proj": "static", "lm+w8a8-dynamic": "dynamic"}.get(scope, "none")
    assert isinstance(layer.qkv_proj, FP8Linear) and layer.qkv_proj.act == want_act
    batch = prepare(fp8, CASES["same image, two queries"])
    runtime = GraphRuntime(fp8.model, BUCKETS, GEN, attention="emulated", use_graphs=False, kernels="fused")
    calls = []
    import graphrt.kernels.fp8_ops as ops
    orig = ops.fp8_layer_forward
    monkeypatch.setattr(ops, "fp8_layer_forward", lambda *a: calls.append(1) or orig(*a))
    got = [r.tokens for r in runtime.run(batch, GEN)]
    assert bool(calls) == ("w8a16" not in scope)  # weight-only linears take the plain fused layer
    assert got == eager_tokens(fp8, batch)


def test_w8a16_leaves_activations_unrounded(tiny_engine, calib_file):
    """Weight-only FP8 = the bf16 model with rounded weights: equal to a model whose linears carry
    the dequantized weights (up to float32 summation order)."""
    fp8 = quantize_model(tiny_engine.model, calib_file, "lm+w8a16")
    lin = fp8.llm.layers[1].gate_up_proj
    x = torch.randn(7, lin.in_features)
    torch.testing.assert_close(lin(x), x @ lin.dequantized_weight().t(), rtol=1e-5, atol=1e-6)
    assert fp8.fp8_info.summary()["mode"] == "W8A16 weight-only, e4m3 weights"

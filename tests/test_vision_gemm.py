"""The vision tower's Triton GEMM (graphrt/kernels/vision_gemm.py) against torch references: each
epilogue (bias, bias + tanh-GELU, bias + 2D RoPE of q/k) on CPU through Triton's interpreter
(float32, ragged shapes: M and K not multiples of the tile), at the real widths in bf16 on the GPU,
and the fused tower with the Triton GEMM vs the unfused tower."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from random_towers import unfused_and_fused_tower

from graphrt.vision import apply_rope_2d

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernel in the gpu tests")


def reference(x, w, b, epilogue, cos=None, sin=None, head_dim=0):
    """fp32 reference: linear + bias, then the epilogue's op (RoPE as vision.apply_rope_2d)."""
    y = F.linear(x.float(), w.float(), b.float())
    if epilogue == "bias_gelu":
        return F.gelu(y, approximate="tanh")
    if epilogue == "bias_rope":
        n = y.shape[0]
        qkv = y.view(n, 3, -1, head_dim)
        q, k = apply_rope_2d(qkv[:, 0], cos, sin), apply_rope_2d(qkv[:, 1], cos, sin)
        return torch.stack((q, k, qkv[:, 2]), 1).view(n, -1)
    return y


def operands(m, n, k, head_dim, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, device=device, generator=g).to(dtype)
    w = (torch.randn(n, k, device=device, generator=g) / k ** 0.5).to(dtype)
    b = (torch.randn(n, device=device, generator=g) * 0.5).to(dtype)
    ang = torch.rand(m, head_dim // 2, device=device, generator=g) * 6.283
    return x, w, b, ang.cos(), ang.sin()


@interpreted
@pytest.mark.parametrize("epilogue", ["bias", "bias_gelu", "bias_rope"])
def test_interp_vision_linear_matches_reference(epilogue):
    from graphrt.kernels import vision_gemm as vg

    m, n, k, d = 50, 96, 40, 16  # M, K ragged against the 32x32x16 tile; qkv = 3 x 2 heads x 16
    x, w, b, cos, sin = operands(m, n, k, d, "cpu", torch.float32)
    assert vg.usable(x, w, epilogue, vg.INTERPRETER_TILE)
    got = vg.vision_linear(x, w, b, epilogue, cos, sin, d, vg.INTERPRETER_TILE)
    torch.testing.assert_close(got, reference(x, w, b, epilogue, cos, sin, d), rtol=1e-4, atol=1e-4)


@interpreted
def test_interp_rope_epilogue_turns_only_q_and_k():
    """v columns pass through untouched (cos=1, sin=0 would hide a wrong column range: random angles)."""
    from graphrt.kernels import vision_gemm as vg

    m, n, k, d = 33, 96, 32, 16
    x, w, b, cos, sin = operands(m, n, k, d, "cpu", torch.float32, seed=1)
    got = vg.vision_linear(x, w, b, "bias_rope", cos, sin, d, vg.INTERPRETER_TILE)
    plain = vg.vision_linear(x, w, b, "bias", tile=vg.INTERPRETER_TILE)
    torch.testing.assert_close(got[:, 64:], plain[:, 64:], rtol=0, atol=0)
    assert (got[:, :64] - plain[:, :64]).abs().max() > 0.1


@interpreted
@torch.no_grad()
def test_interp_tower_triton_gemm_equals_unfused(tiny_engine):
    ref, got = unfused_and_fused_tower(tiny_engine.model.vision, gemm="triton")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_vision_gemm_switch(monkeypatch):
    from graphrt.config import VisionConfig
    from graphrt.errors import OptionError
    from graphrt.kernels import vision_gemm as vg
    from graphrt.vision import MoonViT

    cfg = VisionConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128)
    monkeypatch.delenv("GRAPHRT_VISION_GEMM", raising=False)
    assert vg.mode() == "cublas" and MoonViT(cfg, torch.float32, "meta").gemm == "cublas"
    monkeypatch.setenv("GRAPHRT_VISION_GEMM", "auto")
    assert MoonViT(cfg, torch.float32, "meta").gemm == "auto"
    monkeypatch.setenv("GRAPHRT_VISION_GEMM", "cutlass")
    with pytest.raises(OptionError, match="GRAPHRT_VISION_GEMM"):
        MoonViT(cfg, torch.float32, "meta")
    with pytest.raises(ValueError, match="epilogue"):
        vg.vision_linear(torch.zeros(4, 8), torch.zeros(8, 8), torch.zeros(8), "bias_silu")


GPU_SHAPES = [("qkv", 3456, 1152, "bias_rope"), ("wo", 1152, 1152, "bias"), ("fc0", 4304, 1152, "bias_gelu"),
              ("fc1", 1152, 4304, "bias")]


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("name,n,k,epilogue", GPU_SHAPES)
def test_vision_linear_real_shapes_bf16(name, n, k, epilogue):
    """Every tile the chooser may pick, at the tower's widths (1,680 rows: a ragged last M tile),
    within bf16 rounding of the fp32 reference, and no worse than the cuBLAS path's own error."""
    from graphrt.kernels import vision_gemm as vg

    x, w, b, cos, sin = operands(1680, n, k, 72, "cuda", torch.bfloat16)
    want = reference(x, w, b, epilogue, cos, sin, 72)
    base = vg.reference_path(x, w, b, epilogue, cos, sin, 72).float()
    base_err = ((base - want).norm() / want.norm()).item()
    ran = 0
    for tile in vg.TILES:
        try:
            got = vg.vision_linear(x, w, b, epilogue, cos, sin, 72, tile).float()
        except Exception as exc:  # noqa: BLE001 - a tile over the shared memory is not a candidate either
            if "resources" in str(exc).lower() or "shared" in str(exc).lower():
                continue
            raise
        ran += 1
        err = ((got - want).norm() / want.norm()).item()
        assert err < max(1.5 * base_err, 3e-3), (tile, err, base_err)
    assert ran >= 4


@pytest.mark.gpu
@torch.no_grad()
def test_tower_triton_gemm_bf16_within_noise_of_unfused():
    """Real widths, 3 layers, two images in graph slots: fused tower on the Triton GEMM (RoPE and
    GELU in its epilogues) vs the unfused tower, and vs the fused tower on cuBLAS."""
    from random_towers import random_moonvit, two_image_slots

    cfg, m = random_moonvit(5)
    b = two_image_slots(cfg, m)
    outs = {}
    for name, fused, gemm in (("unfused", False, "cublas"), ("cublas", True, "cublas"), ("triton", True, "triton")):
        m.fused, m.gemm = fused, gemm
        outs[name] = m(b.pixels, b.pos, b.geo, b.attend).view(b.n, -1).float()[b.keep]
    ref = outs["unfused"]
    err = {k: ((v - ref).norm() / ref.norm()).item() for k, v in outs.items() if k != "unfused"}
    assert 0 < err["triton"] < 2e-2 and err["triton"] < 2 * err["cublas"] + 1e-3, err

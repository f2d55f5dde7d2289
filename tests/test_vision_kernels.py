"""Fused vision kernels against the unfused torch ops: on CPU through Triton's interpreter
(TRITON_INTERPRET=1, small float32 tensors), on the GPU in bf16 (marked gpu)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from random_towers import unfused_and_fused_tower

from graphrt.vision import apply_rope_2d, vision_geometry

pytest.importorskip("triton")


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernels in the gpu tests")


@pytest.fixture
def vk():
    import graphrt.vision_kernels as module

    return module


@interpreted
def test_interp_add_layernorm(vk):
    g = torch.Generator().manual_seed(1)
    x, d = torch.randn(7, 48, generator=g), torch.randn(7, 48, generator=g)
    w, b = torch.randn(48, generator=g), torch.randn(48, generator=g)
    xo, h = vk.add_layernorm(x, d, w, b, 1e-5)
    torch.testing.assert_close(xo, x + d)
    torch.testing.assert_close(h, F.layer_norm(x + d, (48,), w, b, 1e-5), rtol=1e-5, atol=1e-5)
    same, h0 = vk.add_layernorm(x, None, w, b, 1e-5)
    assert same is x
    torch.testing.assert_close(h0, F.layer_norm(x, (48,), w, b, 1e-5), rtol=1e-5, atol=1e-5)


@interpreted
def test_interp_rope_in_place(vk, tiny_engine):
    cfg = tiny_engine.cfg.vision
    geo = vision_geometry([(4, 6), (2, 4)], cfg, "cpu")
    n, heads, d = geo.num_patches, cfg.num_attention_heads, cfg.head_dim
    qkv = torch.randn(n, 3, heads, d, generator=torch.Generator().manual_seed(2))
    want = [apply_rope_2d(qkv[:, 0], geo.cos, geo.sin), apply_rope_2d(qkv[:, 1], geo.cos, geo.sin), qkv[:, 2].clone()]
    vk.rope_2d_(qkv, geo.cos, geo.sin)
    for got, ref in zip(qkv.unbind(1), want):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@interpreted
@torch.no_grad()
def test_interp_fused_tower_equals_unfused(vk, tiny_engine):
    ref, got = unfused_and_fused_tower(tiny_engine.model.vision)
    assert vk.available(ref)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@torch.no_grad()
def test_fused_kernels_bf16_on_gpu():
    import graphrt.vision_kernels as vk

    g = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(300, 1152, device="cuda", generator=g).bfloat16()
    d = torch.randn(300, 1152, device="cuda", generator=g).bfloat16()
    w = (1 + 0.1 * torch.randn(1152, device="cuda", generator=g)).bfloat16()
    b = (0.1 * torch.randn(1152, device="cuda", generator=g)).bfloat16()
    xo, h = vk.add_layernorm(x, d, w, b, 1e-5)
    assert torch.equal(xo, x + d)
    ref = F.layer_norm(x + d, (1152,), w, b, 1e-5)
    assert ((h.float() - ref.float()).norm() / ref.float().norm()) < 4e-3
    fc_w = (torch.randn(4304, 1152, device="cuda", generator=g) / 34).bfloat16()
    fc_b = (0.1 * torch.randn(4304, device="cuda", generator=g)).bfloat16()
    assert vk.epilogue_gelu_is_tanh(h.device, h.dtype)  # the fused epilogue is really in use
    got = vk.linear_gelu(h, fc_w, fc_b)
    ref = F.gelu(F.linear(h, fc_w, fc_b), approximate="tanh")
    assert ((got.float() - ref.float()).norm() / ref.float().norm()) < 8e-3


@pytest.mark.gpu
@torch.no_grad()
def test_fused_tower_bf16_on_gpu_within_bf16_noise():
    """Real widths (1152, head dim 72), 3 layers, two images in varlen slots: fused vs unfused."""
    from random_towers import random_moonvit, two_image_slots

    cfg, m = random_moonvit(5)
    b = two_image_slots(cfg, m)
    n, geo, pos, attend, pixels = b.n, b.geo, b.pos, b.attend, b.pixels
    outs = {}
    for fused in (False, True):
        m.fused = fused
        outs[fused] = m(pixels, pos, geo, attend).view(n, -1).float()
    ref, got = outs[False][b.keep], outs[True][b.keep]
    err = ((got - ref).norm() / ref.norm()).item()
    assert 0 < err < 2e-2, err  # bf16 rounding differs (the GELU epilogue rounds once), nothing else


def test_patch_embed_is_linear_plus_bias_plus_positions():
    """The fused path's one-GEMM patch embedding (bias as a column of ones, K padded 588 -> 592)
    equals the linear, its bias and the position add (fp32 here; bf16 rounds once less)."""
    import torch.nn.functional as F

    import graphrt.vision_kernels as vk

    g = torch.Generator().manual_seed(0)
    px = torch.randn(37, 3, 14, 14, generator=g)
    w = torch.randn(64, 3, 14, 14, generator=g) / 24
    b = torch.randn(64, generator=g)
    pos = torch.randn(37, 64, generator=g)
    want = F.linear(px.flatten(1), w.flatten(1), b) + pos
    torch.testing.assert_close(vk.patch_embed(px, w, b, pos), want, rtol=1e-5, atol=1e-5)

"""The vision tower's slot attention kernel (graphrt/vision_kernels.slot_attention) against plain
torch attention per image: on CPU through Triton's interpreter (float32), on the GPU in bf16
against torch's FA2 varlen call (marked gpu). Head dim 72 (the real one: split 64 + 16 in the
kernel) and a power of two; slots with pad rows, a slot with no keys, RoPE in the kernel."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from graphrt.vision import vision_geometry
from graphrt.config import VisionConfig

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernel in the gpu tests")


def reference(qkv, starts, used):
    """Per image: softmax attention of its real rows over its real rows; other rows zero."""
    q, k, v = qkv.float().unbind(1)
    out = torch.zeros_like(q)
    for s, n in zip(starts, used):
        if n:
            rows = slice(s, s + n)
            out[rows] = F.scaled_dot_product_attention(q[rows].transpose(0, 1), k[rows].transpose(0, 1),
                                                       v[rows].transpose(0, 1)).transpose(0, 1)
    return out


def slots_geometry(grids, slot, head_dim, device):
    cfg = VisionConfig(hidden_size=head_dim * 2, num_attention_heads=2)
    cos = torch.zeros(slot * len(grids), head_dim // 2, device=device)
    sin = torch.zeros_like(cos)
    for i, g in enumerate(grids):
        if not g[0]:
            continue
        geo = vision_geometry([g], cfg, device)
        cos[i * slot : i * slot + geo.num_patches] = geo.cos
        sin[i * slot : i * slot + geo.num_patches] = geo.sin
    return cos, sin


@interpreted
@pytest.mark.parametrize("head_dim", [72, 32])
@pytest.mark.parametrize("mask_every_block", [False, True])
def test_interp_slot_attention_equals_per_image_attention(head_dim, mask_every_block):
    import graphrt.vision_kernels as vk

    grids, slot, heads = [(4, 4), (2, 4), (0, 0)], 20, 2  # 16 (a full key block) and 8 real rows, an empty slot
    used = [h * w for h, w in grids]
    g = torch.Generator().manual_seed(7)
    qkv = torch.randn(slot * len(grids), 3, heads, head_dim, generator=g)
    cu = (torch.arange(len(grids) + 1) * slot).to(torch.int32)
    got = vk.slot_attention(qkv, cu, torch.tensor(used, dtype=torch.int32), slot, tiles=(16, 16, 4, 1),
                            mask_every_block=mask_every_block)
    ref = reference(qkv, [i * slot for i in range(len(grids))], used)
    real = torch.cat([torch.arange(i * slot, i * slot + n) for i, n in enumerate(used)])
    torch.testing.assert_close(got[real], ref[real], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got).all()  # pad rows are written too
    assert not got[slot + 16 :].any()  # a block of pad rows only (and the empty slot): zeros


@interpreted
@pytest.mark.parametrize("head_dim", [72, 32])
def test_interp_packed_images_equal_per_image_attention(head_dim):
    import graphrt.vision_kernels as vk

    used, heads = [24, 8, 40], 2  # back to back; the longest sets the grid
    starts = [0, 24, 32]
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(sum(used) + 5, 3, heads, head_dim, generator=g)  # 5 rows of no image at the end
    cu = torch.tensor(starts + [sum(used)], dtype=torch.int32)
    got = vk.slot_attention(qkv, cu, torch.tensor(used, dtype=torch.int32), max(used), tiles=(16, 16, 4, 1), packed=True)
    ref = reference(qkv, starts, used)
    torch.testing.assert_close(got[: sum(used)], ref[: sum(used)], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@torch.no_grad()
def test_slot_attention_bf16_on_gpu_matches_fa2():
    """Real shape (16 heads x 72), two slots with pad rows: against torch's FA2 varlen call on
    the same q/k/v, within bf16 noise; pad rows finite."""
    import graphrt.vision_kernels as vk
    from capture.varlen import torch_fa2

    grids, slot, heads, d = [(36, 46), (20, 30)], 1680, 16, 72  # 1656 and 600 real rows
    used = torch.tensor([h * w for h, w in grids], dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(8)
    qkv = torch.randn(slot * 2, 3, heads, d, device="cuda", generator=g).bfloat16()
    cu = (torch.arange(3, device="cuda") * slot).to(torch.int32)
    got = vk.slot_attention(qkv, cu, used, slot)
    ref = torch_fa2(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, slot, slot, used, False)
    assert torch.isfinite(got).all()  # pad rows too
    for b, n in enumerate(used.tolist()):
        a, r = got[b * slot : b * slot + n].float(), ref[b * slot : b * slot + n].float()
        assert ((a - r).norm() / r.norm()).item() < 1e-2


@interpreted
@torch.no_grad()
def test_interp_fused_tower_on_slots_equals_unfused(tiny_engine):
    """The fused tower with the slot kernel (images in padded slots, as the graphs lay them out)
    gives the unfused tower's features for every real patch."""
    from capture.ranges import VisionRanges
    from capture.varlen import emulated

    vision = tiny_engine.model.vision
    cfg = vision.cfg
    grids, slot = [(4, 6), (2, 4)], 28
    cos, sin = slots_geometry(grids, slot, cfg.head_dim, "cpu")
    n = slot * len(grids)
    pos = torch.zeros(n, cfg.hidden_size)
    for i, g in enumerate(grids):
        pos[i * slot : i * slot + g[0] * g[1]] = vision.position_embedding(g)

    class Geo:
        pass

    geo = Geo()
    geo.cos, geo.sin, geo.merge_index = cos, sin, torch.arange(n)
    used = torch.tensor([h * w for h, w in grids], dtype=torch.int32)
    attend = VisionRanges(emulated, slot, (torch.arange(len(grids) + 1) * slot).to(torch.int32), used)
    pixels = torch.randn(n, 3, cfg.patch_size, cfg.patch_size, generator=torch.Generator().manual_seed(9))
    fused, attention = vision.fused, vision.attention
    try:
        vision.fused, vision.attention = False, "varlen"
        ref = vision(pixels, pos, geo, attend).view(n, -1)
        vision.fused, vision.attention = True, "slot"
        got = vision(pixels, pos, geo, attend).view(n, -1)
    finally:
        vision.fused, vision.attention = fused, attention
    keep = torch.cat([torch.arange(i * slot, i * slot + g[0] * g[1]) for i, g in enumerate(grids)])
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-4, atol=1e-4)


@interpreted
@torch.no_grad()
def test_interp_packed_tower_equals_per_image_and_unfused(tiny_engine):
    """Images of three sizes packed back to back (PackedImages): the fused tower gives each image
    the features it gets alone, and the unfused per-image tower's."""
    from graphrt.attention.sdpa import vision_attention
    from graphrt.vision import PackedImages

    vision = tiny_engine.model.vision
    grids = [(4, 6), (2, 4), (6, 4)]
    geo = vision_geometry(grids, vision.cfg, "cpu")
    p = vision.cfg.patch_size
    pixels = torch.randn(geo.num_patches, 3, p, p, generator=torch.Generator().manual_seed(12))
    fused = vision.fused
    try:
        vision.fused = False
        ref = vision(pixels, vision.positions(grids), geo, vision_attention)
        vision.fused = True
        got = vision(pixels, vision.positions(grids), geo, PackedImages.of(geo.seqlens, "cpu"))
        alone, start = [], 0
        for g in grids:
            one = vision_geometry([g], vision.cfg, "cpu")
            alone.append(vision(pixels[start : start + one.num_patches], vision.positions([g]), one,
                                PackedImages.of(one.seqlens, "cpu")))
            start += one.num_patches
    finally:
        vision.fused = fused
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, torch.cat(alone), rtol=1e-5, atol=1e-5)

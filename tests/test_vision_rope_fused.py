"""q turned by the 2D RoPE inside the vision attention kernels (GRAPHRT_VISION_ROPE=q) against the
separate pass that turns q and k (=pass): the attention output must be the same bits, since the
kernel computes q's rotation with the pass's fp32 arithmetic and rounds once. On CPU through
Triton's interpreter (float32; also against plain torch apply_rope_2d + attention per image); on
the GPU (marked gpu) in bf16 at the real shapes: one 640x480 image in a 1,680 slot and four images
of different lengths, slots and packed, the Triton and the Gluon kernel, bf16 and e4m3 (wo's input)
outputs, and a 3-layer random tower. Random inputs: agreement is what is tested."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernel in the gpu tests")


def layout(used, slot, packed, device):
    """Row starts (cu, int32) and the width of the attention call: slots of `slot` rows, or packed."""
    if packed:
        cu = torch.tensor([0] + list(torch.tensor(used).cumsum(0)), dtype=torch.int32, device=device)
        return cu, max(used), int(cu[-1])
    return (torch.arange(len(used) + 1, device=device) * slot).to(torch.int32), slot, slot * len(used)


def operands(used, slot, packed, heads, d, seed, device, dtype):
    """Random unturned qkv [N, 3, H, D], random fp32 angles per row (pad rows too), cu, the call's
    slot and the real rows."""
    g = torch.Generator(device=device).manual_seed(seed)
    cu, width, n = layout(used, slot, packed, device)
    qkv = torch.randn(n, 3, heads, d, device=device, generator=g).to(dtype)
    ang = torch.rand(n, d // 2, device=device, generator=g) * 6.283
    real = torch.cat([torch.arange(int(cu[i]), int(cu[i]) + u, device=device) for i, u in enumerate(used)])
    return qkv, ang.cos(), ang.sin(), cu, torch.tensor(used, dtype=torch.int32, device=device), width, real


def both_paths(qkv, cos, sin, cu, used, width, packed, **kw):
    """(today's path: the pass turns q and k, then attention; the new one: the pass turns k, the
    kernel q) and the two qkv buffers after their pass."""
    import graphrt.kernels.vision_attention as va
    import graphrt.vision_kernels as vk

    old, new = qkv.clone(), qkv.clone()
    vk.rope_2d_(old, cos, sin)
    vk.rope_2d_(new, cos, sin, k_only=True)
    a = va.vision_attention(old, cu, used, width, packed=packed, **kw)
    b = va.vision_attention(new, cu, used, width, packed=packed, rope=(cos, sin), **kw)
    return a, b, old, new


@interpreted
@torch.no_grad()
@pytest.mark.parametrize("head_dim", [72, 32])
@pytest.mark.parametrize("packed", [False, True])
def test_interp_q_turned_in_the_kernel_equals_the_pass(head_dim, packed):
    from test_vision_attention import reference

    from graphrt.vision import apply_rope_2d

    used = [40, 7, 0, 33]
    qkv, cos, sin, cu, used_t, width, real = operands(used, 48, packed, 2, head_dim, 3, "cpu", torch.float32)
    a, b, old, new = both_paths(qkv, cos, sin, cu, used_t, width, packed)
    assert torch.equal(new[:, 0], qkv[:, 0]) and torch.equal(new[:, 1], old[:, 1])  # the pass left q alone
    assert torch.equal(a[real], b[real])
    if not packed:
        assert torch.equal(a, b)  # pad rows of a slot too
    # and both against plain torch: apply_rope_2d on q and k, attention per image
    turned = torch.stack((apply_rope_2d(qkv[:, 0], cos, sin), apply_rope_2d(qkv[:, 1], cos, sin), qkv[:, 2]), 1)
    ref = reference(turned, [int(c) for c in cu[:-1]], used)
    torch.testing.assert_close(b[real], ref[real], rtol=1e-4, atol=1e-4)


@interpreted
@torch.no_grad()
def test_interp_fused_tower_rope_q_equals_pass(tiny_engine, monkeypatch):
    """The fused tower on slots with GRAPHRT_VISION_ROPE=q gives the =pass tower's bits."""
    from test_vision_attention import slots_geometry

    from capture.ranges import VisionRanges
    from capture.varlen import emulated
    import graphrt.kernels.vision_attention as va

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
    outs = {}
    try:
        vision.fused, vision.attention = True, "slot"
        for rope in ("pass", "q"):
            monkeypatch.setattr(va, "ROPE", rope)
            outs[rope] = vision(pixels, pos, geo, attend)
    finally:
        vision.fused, vision.attention = fused, attention
    assert torch.equal(outs["q"], outs["pass"])


def test_rope_tables_of_the_wrong_shape_are_refused():
    import graphrt.kernels.vision_attention as va

    assert va.ROPES == ("pass", "q") and va.ROPE in va.ROPES
    qkv = torch.zeros(8, 3, 2, 72)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    used = torch.tensor([8], dtype=torch.int32)
    with pytest.raises(ValueError, match="rope"):
        va.vision_attention(qkv, cu, used, 8, rope=(torch.zeros(8, 72), torch.zeros(8, 72)))
    with pytest.raises(ValueError, match="rope"):
        va.vision_attention(qkv, cu, used, 8, rope=(torch.zeros(8, 36, dtype=torch.float64),) * 2)


# ---------------------------------------------------------------------------------------------- GPU

KERNELS = ["triton", "ws", "auto"]
LENGTHS = [[1656], [1656, 300, 1000, 64]]  # B=1 of 640x480 in its 1,680 slot; four images of other sizes


def kernel_or_skip(kernel):
    if kernel == "ws":
        import graphrt.kernels.vision_attention_ws as ws

        why = ws.usable(torch.zeros(16, 3, 16, 72, device="cuda", dtype=torch.bfloat16))
        if why is not None:
            pytest.skip(why)


class StaticFp8:
    input_scale = None
    inv_input_scale = None

    @classmethod
    def on_gpu(cls):
        cls.input_scale = torch.tensor([0.01], device="cuda")
        cls.inv_input_scale = torch.tensor([100.0], device="cuda")
        return cls


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("used", LENGTHS)
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_q_in_the_kernel_gives_the_pass_bits(kernel, packed, used, fp8):
    kernel_or_skip(kernel)
    kw = {"kernel": kernel, **({"fp8_for": StaticFp8.on_gpu()} if fp8 else {})}
    qkv, cos, sin, cu, used_t, width, real = operands(used, 1680, packed, 16, 72, 11, "cuda", torch.bfloat16)
    a, b, old, new = both_paths(qkv, cos, sin, cu, used_t, width, packed, **kw)
    assert torch.equal(new[:, 1], old[:, 1]) and torch.equal(new[:, 0], qkv[:, 0])
    if fp8:
        (a, ra), (b, rb) = a, b
        assert torch.equal(ra[real], rb[real])
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    assert torch.equal(a[real], b[real])
    if not packed:
        assert torch.equal(a, b)


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("kernel", KERNELS)
def test_gpu_tower_rope_q_equals_pass_bit_for_bit(kernel, monkeypatch):
    """3-layer random tower, three images in 1,680-row slots (cuBLAS wqkv, so the RoPE pass runs)."""
    kernel_or_skip(kernel)
    from random_towers import random_moonvit, two_image_slots

    import graphrt.kernels.vision_attention as va

    cfg, m = random_moonvit(6)
    m.fused, m.attention, m.gemm = True, "slot", "cublas"
    torch.manual_seed(6)
    s = two_image_slots(cfg, m, grids=((36, 46), (16, 24), (8, 12)), slot=1680)
    monkeypatch.setattr(va, "KERNEL", kernel)
    outs = {}
    for rope in ("pass", "q"):
        monkeypatch.setattr(va, "ROPE", rope)
        outs[rope] = m(s.pixels, s.pos, s.geo, s.attend)
    assert torch.equal(outs["q"].view(s.n, -1)[s.keep], outs["pass"].view(s.n, -1)[s.keep])
    assert torch.isfinite(outs["q"].view(s.n, -1)[s.keep]).all()

"""The vision tower's cuDNN attention path (graphrt/vision_kernels: rope_2d_pad + cudnn_slot_attention):
q/k/v padded 72 -> 80 with a mask column instead of a mask tensor. On CPU: the padded layout
(Triton's interpreter against the torch-ops reference) and the mask-column trick itself through
torch's math attention (equal to attention over the real keys only; pad keys get exactly zero
weight). On the GPU (marked gpu): cuDNN's kernel against an fp32 reference and the slot kernel
over random lengths with the edges, pad rows poisoned, CUDA-graph replay after the lengths change,
and the fused tower in cudnn mode against the slot mode."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import graphrt.vision_kernels as vk  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernels in the gpu tests")


def per_image_reference(qkv_roped: torch.Tensor, slot: int, used: list[int]) -> torch.Tensor:
    """fp32 softmax attention of each slot's real rows over its real rows (other rows zero)."""
    q, k, v = qkv_roped.float().unbind(1)
    out = torch.zeros_like(q)
    for b, n in enumerate(used):
        rows = slice(b * slot, b * slot + n)
        out[rows] = F.scaled_dot_product_attention(q[rows].transpose(0, 1), k[rows].transpose(0, 1),
                                                   v[rows].transpose(0, 1)).transpose(0, 1)
    return out


def real_rows(slot: int, used: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(b * slot, b * slot + n) for b, n in enumerate(used)])


def test_cudnn_head_leaves_room_for_the_mask_column():
    assert vk.cudnn_head(72) == 80
    assert vk.cudnn_head(64) == 72
    assert vk.cudnn_head(8) == 16
    for d in range(2, 130, 2):
        assert vk.cudnn_head(d) % 8 == 0 and vk.cudnn_head(d) > d


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_column_attention_equals_attention_over_real_keys(dtype):
    """The trick on torch's math attention (CPU): padded layout, scale 1/sqrt(72) given explicitly,
    output sliced to 72 == attention over each slot's real keys; poisoning the pad rows' k and v
    leaves the real rows bit for bit unchanged (their weight is exactly 0)."""
    g = torch.Generator().manual_seed(11)
    slot, heads, d, used = 24, 2, 72, [24, 17, 4]
    b = len(used)
    qkv = torch.randn(b * slot, 3, heads, d, generator=g).to(dtype)
    cos = torch.ones(b * slot, d // 2)
    sin = torch.zeros(b * slot, d // 2)  # identity rotation: the reference needs no RoPE
    used_t = torch.tensor(used, dtype=torch.int32)

    def attend(x):
        padded = vk.rope_2d_pad_reference(x, cos, sin, used_t, slot)
        dp = padded.shape[-1]
        q, k, v = (padded[i].view(b, slot, heads, dp).transpose(1, 2).float() for i in range(3))
        o = F.scaled_dot_product_attention(q, k, v, scale=d ** -0.5)
        return o.transpose(1, 2).reshape(b * slot, heads, dp)

    out = attend(qkv)
    keep = real_rows(slot, used)
    torch.testing.assert_close(out[..., d:][keep], torch.zeros_like(out[..., d:][keep]))  # V's extra columns are 0
    want = per_image_reference(qkv, slot, used)
    torch.testing.assert_close(out[..., :d][keep], want[keep], rtol=1e-5, atol=1e-5)
    poisoned = qkv.clone()
    pads = torch.tensor([r for r in range(b * slot) if r not in set(keep.tolist())])
    poisoned[pads, 1] *= 50
    poisoned[pads, 2] = 1e4
    assert torch.equal(attend(poisoned)[keep], out[keep])
    assert torch.isfinite(out).all()  # pad queries see the real keys: finite rows everywhere


@interpreted
@pytest.mark.parametrize("d,heads", [(72, 2), (8, 3)])
def test_interp_rope_pad_equals_reference(d, heads):
    g = torch.Generator().manual_seed(12)
    slot, used = 10, [10, 3, 7]
    n = slot * len(used)
    qkv = torch.randn(n, 3, heads, d, generator=g)
    ang = torch.rand(n, d // 2, generator=g) * 6.28
    used_t = torch.tensor(used, dtype=torch.int32)
    got = vk.rope_2d_pad(qkv, ang.cos(), ang.sin(), used_t, slot)
    want = vk.rope_2d_pad_reference(qkv, ang.cos(), ang.sin(), used_t, slot)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got[1, :, :, d].eq(vk.KEY_PAD_LOGIT[torch.float32]).sum() == heads * (n - sum(used))


# ---------------------------------------------------------------------------------------- GPU


def gpu_case(slot: int, used: list[int], seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = slot * len(used)
    raw = torch.randn(n, 3, 16, 72, device="cuda", generator=g).bfloat16()
    ang = torch.rand(n, 36, device="cuda", generator=g) * 6.28
    return raw, ang.cos(), ang.sin(), torch.tensor(used, dtype=torch.int32, device="cuda")


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("slot", [1680, 333])
def test_cudnn_slot_attention_against_fp32_and_slot_kernel(slot):
    gen = torch.Generator().manual_seed(slot)
    used = [slot, slot - 1, 4, 1] + torch.randint(1, slot + 1, (4,), generator=gen).tolist()
    raw, cos, sin, used_t = gpu_case(slot, used, seed=slot)
    n = slot * len(used)
    padded = vk.rope_2d_pad(raw, cos, sin, used_t, slot)
    torch.testing.assert_close(padded, vk.rope_2d_pad_reference(raw, cos, sin, used_t, slot), rtol=0, atol=0.02)
    roped = raw.clone()
    vk.rope_2d_(roped, cos, sin)
    got = vk.cudnn_slot_attention(padded, slot, 72).reshape(n, 16, 72)
    keep = real_rows(slot, used).cuda()
    want = per_image_reference(roped, slot, used)[keep]
    slot_kernel = vk.slot_attention(roped, (torch.arange(len(used) + 1, device="cuda") * slot).to(torch.int32),
                                    used_t, slot).float()[keep]
    err = ((got.float()[keep] - want).norm() / want.norm()).item()
    err_slot = ((slot_kernel - want).norm() / want.norm()).item()
    assert err < 5e-3 and err < 2 * err_slot + 1e-3, (err, err_slot)  # bf16 noise, like the slot kernel's
    assert torch.isfinite(got).all()
    poisoned = raw.clone()
    pads = torch.tensor(sorted(set(range(n)) - set(keep.tolist())), device="cuda")
    poisoned[pads, 1] *= 50
    poisoned[pads, 2] = 1e4
    again = vk.cudnn_slot_attention(vk.rope_2d_pad(poisoned, cos, sin, used_t, slot), slot, 72).reshape(n, 16, 72)
    assert torch.equal(again[keep], got[keep])


@pytest.mark.gpu
@torch.no_grad()
def test_cudnn_slot_attention_replays_in_a_graph_with_new_lengths():
    slot, b = 1680, 6
    raw, cos, sin, used_t = gpu_case(slot, [1656] * b, seed=3)
    n = slot * b

    def body():
        return vk.cudnn_slot_attention(vk.rope_2d_pad(raw, cos, sin, used_t, slot), slot, 72).reshape(n, -1)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()
    used = [slot, 4, 1000, 1, 1679, 77]
    used_t.copy_(torch.tensor(used, dtype=torch.int32))
    graph.replay()
    eager = body()
    keep = real_rows(slot, used).cuda()
    assert torch.equal(out[keep], eager[keep])
    roped = raw.clone()
    vk.rope_2d_(roped, cos, sin)
    want = per_image_reference(roped, slot, used).reshape(n, -1)[keep]
    assert ((out[keep].float() - want).norm() / want.norm()).item() < 5e-3


@pytest.mark.gpu
@torch.no_grad()
def test_fused_tower_cudnn_mode_equals_slot_mode_within_bf16_noise():
    """Real widths, 3 layers, two images in 480-row slots: the cudnn attention mode vs the slot mode."""
    from random_towers import random_moonvit, two_image_slots

    cfg, m = random_moonvit(5)
    b = two_image_slots(cfg, m)
    n, slot, used, geo, pos, attend, pixels = b.n, b.slot, b.used, b.geo, b.pos, b.attend, b.pixels
    outs = {}
    for mode in ("slot", "cudnn", "varlen"):
        m.attention = mode
        outs[mode] = m(pixels, pos, geo, attend).view(n, -1).float()
    keep = real_rows(slot, used).cuda()
    ref = outs["varlen"][keep]
    for mode in ("slot", "cudnn"):
        err = ((outs[mode][keep] - ref).norm() / ref.norm()).item()
        assert err < 2e-2, (mode, err)  # each attention kernel rounds differently in bf16, nothing else
    assert torch.isfinite(outs["cudnn"]).all()


def test_attention_mode_comes_from_the_documented_override(monkeypatch):
    """GRAPHRT_VISION_ATTENTION picks the fused tower's slot attention (A/B); status names the source;
    an unknown value is refused naming the variable."""
    from graphrt.config import VisionConfig
    from graphrt.errors import OptionError
    from graphrt.vision import MoonViT

    cfg = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    monkeypatch.delenv("GRAPHRT_VISION_ATTENTION", raising=False)
    monkeypatch.delenv("GRAPHRT_VISION_ATTENTION_KERNEL", raising=False)
    m = MoonViT(cfg, torch.float32, "meta")
    assert m.attention == "slot" and m.attention_status() == "slot (default)"
    import graphrt.kernels.vision_attention as va

    monkeypatch.setenv("GRAPHRT_VISION_ATTENTION_KERNEL", "ws")  # the slot kernel's A/B shows too: the value
    monkeypatch.setattr(va, "KERNEL", "ws")  # the kernel module read at import
    assert m.attention_status() == "slot (default), kernel ws (GRAPHRT_VISION_ATTENTION_KERNEL)"
    monkeypatch.delenv("GRAPHRT_VISION_ATTENTION_KERNEL")
    monkeypatch.setenv("GRAPHRT_VISION_ATTENTION", "cudnn")
    m = MoonViT(cfg, torch.float32, "meta")
    assert m.attention == "cudnn" and m.attention_status() == "cudnn (GRAPHRT_VISION_ATTENTION)"
    monkeypatch.setenv("GRAPHRT_VISION_ATTENTION", "flash")
    with pytest.raises(OptionError, match="GRAPHRT_VISION_ATTENTION"):
        MoonViT(cfg, torch.float32, "meta")


def test_status_reports_the_vision_attention(tiny_engine):
    assert tiny_engine.status()["vision_attention"] in ("slot (default)", "slot (GRAPHRT_VISION_ATTENTION)")

"""The Gluon Hopper attention kernel (graphrt/kernels/vision_attention_ws.py) against an fp64
attention per image at random lengths (0, below a key block, exact multiples, 1,656, 25,600), in
slots and packed; rows of no image poisoned with NaN must leave real rows bit-equal; a CUDA graph
replayed after the lengths changed equals eager; the tower with it equals the tower on the Triton
kernel within bf16 noise. GPU tests need Hopper and Triton 3.6 (the Gluon API it is written for);
on CPU only the lazy import's fallback is checked. Random inputs: agreement is what is tested."""

from __future__ import annotations

import pytest
import torch
from test_vision_hopper_attention import make, poisoned, reference


def test_import_is_lazy_and_falls_back_with_a_reason():
    import graphrt.kernels.vision_attention as va
    import graphrt.kernels.vision_attention_ws as ws

    assert va.KERNELS == ("auto", "triton", "ws") and va.KERNEL in va.KERNELS
    if not torch.cuda.is_available():
        why = ws.usable(torch.zeros(4, 3, 2, 72))
        assert why is not None and why  # never runs, says why


def gluon_or_skip():
    import graphrt.kernels.vision_attention_ws as ws

    why = ws.usable(torch.zeros(16, 3, 16, 72, device="cuda", dtype=torch.bfloat16))
    if why is not None:
        pytest.skip(why)
    return ws.vision_attention_ws


TILES = [None, (128, 64, 8, 3, 1), (256, 64, 4, 3, 2), (128, 128, 4, 2, 3)]


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("packed", [False, True])
def test_bf16_equals_fp64_attention_over_random_lengths(packed, tiles):
    """16 heads x 72 in bf16; rel. L2 per image < 5e-3 (torch's FA2 and cuDNN measure 2.2e-3);
    rows of no image poisoned with NaN change no real row's bits; slot pad rows finite."""
    run = gluon_or_skip()
    g = torch.Generator(device="cuda").manual_seed(11 + packed)
    cases = [([0, 17, 64, 128, 1656, 1680], 1680), ([1, 63, 129, 640, 1000], 1024),
             ([int(x) for x in torch.randint(0, 1680, (4,), generator=g, device="cuda")], 1680)]
    for used, slot in cases:
        qkv, cu, used_t, starts, real = make(used, slot, packed, 16, 72, g, "cuda", torch.bfloat16)
        longest = max(used) if packed else slot
        got = run(qkv, cu, used_t, longest, packed=packed, tiles=tiles)
        want = reference(qkv, starts, used)
        for s, n in zip(starts, used):
            if n:
                a, r = got[s : s + n].float(), want[s : s + n]
                assert ((a - r).norm() / r.norm()).item() < 5e-3, (used, n)
        if not packed:
            for i, n in enumerate(used):
                if n == 0:
                    assert not got[i * slot : (i + 1) * slot].any()  # no keys: zeros
            assert torch.isfinite(got[: len(used) * slot]).all()
        again = run(poisoned(qkv, real), cu, used_t, longest, packed=packed, tiles=tiles)
        assert torch.equal(again[real], got[real])


@pytest.mark.gpu
@torch.no_grad()
def test_one_25600_patch_image_equals_fp32_on_sampled_rows():
    run = gluon_or_skip()
    g = torch.Generator(device="cuda").manual_seed(4)
    real, slot = 25600, 26676
    qkv = torch.randn(slot, 3, 16, 72, generator=g, device="cuda").bfloat16()
    qkv[real:] = float("nan")  # the slot's pad rows
    cu = torch.tensor([0, slot], dtype=torch.int32, device="cuda")
    used = torch.tensor([real], dtype=torch.int32, device="cuda")
    got = run(qkv, cu, used, slot)
    rows = torch.cat([torch.arange(0, 300), torch.arange(12000, 12100), torch.arange(real - 300, real)]).cuda()
    q = qkv[rows, 0].float().transpose(0, 1)
    k, v = (qkv[:real, i].float().transpose(0, 1) for i in (1, 2))
    want = (torch.softmax(q @ k.transpose(1, 2) * 72 ** -0.5, -1) @ v).transpose(0, 1)
    err = ((got[rows].float() - want).norm() / want.norm()).item()
    assert err < 5e-3, err


@pytest.mark.gpu
@torch.no_grad()
def test_dispatch_and_fp8_output_equal_the_triton_kernel():
    """vision_attention(kernel="ws") is the Gluon kernel; the e4m3 output (wo's input) quantizes
    the same way as the Triton kernel's (within one e4m3 step of bf16 noise)."""
    gluon_or_skip()
    import graphrt.kernels.vision_attention as va

    g = torch.Generator(device="cuda").manual_seed(9)
    qkv, cu, used_t, _, real = make([1656, 300], 1680, False, 16, 72, g, "cuda", torch.bfloat16)
    a = va.vision_attention(qkv, cu, used_t, 1680, kernel="ws")
    b = va.vision_attention(qkv, cu, used_t, 1680, kernel="triton")
    assert ((a[real].float() - b[real].float()).norm() / b[real].float().norm()).item() < 5e-3

    class StaticFp8:
        input_scale = torch.tensor([0.01], device="cuda")
        inv_input_scale = torch.tensor([100.0], device="cuda")

    qa, ra = va.vision_attention(qkv, cu, used_t, 1680, kernel="ws", fp8_for=StaticFp8)
    qb, rb = va.vision_attention(qkv, cu, used_t, 1680, kernel="triton", fp8_for=StaticFp8)
    assert torch.equal(ra[real], rb[real])
    diff = (qa[real].float() - qb[real].float()).abs()
    assert (diff <= qb[real].float().abs() * 0.07 + 0.02).all()


@pytest.mark.gpu
@torch.no_grad()
def test_tower_with_the_gluon_kernel_equals_the_triton_kernel(monkeypatch):
    """3-layer random tower on 1,680-row slots: attention kernel ws vs triton within bf16 noise."""
    gluon_or_skip()
    from random_towers import random_moonvit, two_image_slots

    import graphrt.kernels.vision_attention as va

    cfg, m = random_moonvit(6)
    m.fused = True
    m.attention = "slot"
    torch.manual_seed(6)
    s = two_image_slots(cfg, m, grids=((16, 24), (36, 46), (8, 12)), slot=1680)  # three images, in fact
    outs = {}
    for kernel in ("triton", "ws"):
        monkeypatch.setattr(va, "KERNEL", kernel)
        outs[kernel] = m(s.pixels, s.pos, s.geo, s.attend).view(s.n, -1).float()
    a, b = outs["ws"][s.keep], outs["triton"][s.keep]
    assert ((a - b).norm() / b.norm()).item() < 1e-2
    assert torch.isfinite(outs["ws"]).all()


@pytest.mark.gpu
@torch.no_grad()
def test_auto_runs_ws_only_at_one_wave_grids(monkeypatch):
    """kernel=auto: the Gluon ping-pong kernel where its grid is one wave (one 1,680 slot: 7 x 16 =
    112 programs), the Triton kernel at 32 slots; each output equals that kernel's own, bit for bit."""
    gluon_or_skip()
    import graphrt.kernels.vision_attention as va
    import graphrt.kernels.vision_attention_ws as ws

    calls = []
    real_ws = ws.vision_attention_ws
    monkeypatch.setattr(ws, "vision_attention_ws", lambda *a, **k: calls.append(1) or real_ws(*a, **k))
    g = torch.Generator(device="cuda").manual_seed(21)
    for images, want_ws in ((1, True), (32, False)):
        qkv, cu, used, starts, real = make([1656] * images, 1680, False, 16, 72, g, "cuda", torch.bfloat16)
        assert ws.one_wave(qkv, cu, 1680) == want_ws
        calls.clear()
        got = va.vision_attention(qkv, cu, used, 1680, kernel="auto")
        assert len(calls) == int(want_ws)
        same = va.vision_attention(qkv, cu, used, 1680, kernel="ws" if want_ws else "triton")
        assert torch.equal(got[real], same[real])

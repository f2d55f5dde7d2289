"""The vision tower with its residual adds inside the GEMMs (GRAPHRT_VISION_RESIDUAL=gemm: wo and
fc1 accumulate into the residual in place, their biases deferred to the norms as fp32 offsets)
against the unfused tower and the kernel-add path: on CPU through Triton's interpreter (float32),
on the GPU in bf16 on cuBLAS (marked gpu). Random weights: these compare paths, not answers."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from random_towers import unfused_and_fused_tower

from graphrt.errors import OptionError
from graphrt.vision import MoonViT

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernels in the gpu tests")


@interpreted
def test_interp_offset_layernorm_adds_the_offset_before_the_statistics():
    import graphrt.vision_kernels as vk

    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 48, generator=g)
    off = 3 * torch.randn(48, generator=g)
    w, b = torch.randn(48, generator=g), torch.randn(48, generator=g)
    before = x.clone()
    h = vk.offset_layernorm(x, off, w, b, 1e-5)
    torch.testing.assert_close(h, F.layer_norm(x + off, (48,), w, b, 1e-5), rtol=1e-5, atol=1e-5)
    assert torch.equal(x, before)  # the residual is only read
    torch.testing.assert_close(vk.offset_layernorm(x, None, w, b, 1e-5), F.layer_norm(x, (48,), w, b, 1e-5),
                               rtol=1e-5, atol=1e-5)


def test_deferred_bias_offsets_are_the_running_sums(tiny_engine):
    vision = tiny_engine.model.vision
    offsets = vision.deferred_bias_offsets()
    run = torch.zeros(vision.cfg.hidden_size)
    for i, block in enumerate(vision.blocks):
        run = run + block.wo.bias.float()
        torch.testing.assert_close(offsets[2 * i], run)
        run = run + block.fc1.bias.float()
        torch.testing.assert_close(offsets[2 * i + 1], run)
    assert offsets.dtype == torch.float32 and offsets.shape == (2 * len(vision.blocks), vision.cfg.hidden_size)
    assert run.abs().max() > 0  # the random biases are not zero: dropping them must show


def test_deferred_bias_offsets_follow_new_weights(tiny_engine):
    vision = tiny_engine.model.vision
    kept = vision.deferred_bias_offsets()
    first = kept.clone()
    bias = vision.blocks[0].wo.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.add_(1.0)  # a weight load copies in place: the kept offsets must not be reused
        torch.testing.assert_close(vision.deferred_bias_offsets(), first + 1.0)
        # ... and are updated in place: a graph captured before reads the same tensor
        assert vision.deferred_bias_offsets() is kept and torch.allclose(kept, first + 1.0)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    torch.testing.assert_close(vision.deferred_bias_offsets(), first)


@interpreted
@torch.no_grad()
def test_interp_residual_in_gemm_tower_equals_unfused(tiny_engine):
    vision = tiny_engine.model.vision
    saved = vision.residual
    vision.residual = "gemm"
    try:
        assert vision._residual_in_gemm()  # the in-place path really runs below
    finally:
        vision.residual = saved
    ref, got = unfused_and_fused_tower(vision, residual="gemm")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    _, kernel = unfused_and_fused_tower(vision, residual="kernel")
    torch.testing.assert_close(got, kernel, rtol=1e-4, atol=1e-4)


def test_residual_in_gemm_only_on_the_cublas_bf16_path(tiny_engine):
    vision = tiny_engine.model.vision
    saved = vision.residual, vision.gemm
    try:
        vision.residual, vision.gemm = "gemm", "cublas"
        assert vision._residual_in_gemm()
        vision.gemm = "triton"
        assert not vision._residual_in_gemm()
        vision.residual, vision.gemm = "kernel", "cublas"
        assert not vision._residual_in_gemm()
    finally:
        vision.residual, vision.gemm = saved


def test_residual_switch_is_checked(monkeypatch):
    from graphrt.config import VisionConfig

    monkeypatch.setenv("GRAPHRT_VISION_RESIDUAL", "epilogue")
    with pytest.raises(OptionError, match="GRAPHRT_VISION_RESIDUAL"):
        MoonViT(VisionConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2),
                torch.float32, "meta")
    monkeypatch.setenv("GRAPHRT_VISION_RESIDUAL", "gemm")
    m = MoonViT(VisionConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2),
                torch.float32, "meta")
    assert m.residual == "gemm"


@pytest.mark.gpu
@torch.no_grad()
def test_addmm_accumulates_in_place_without_a_copy():
    """x.addmm_(a, w.t()) is cuBLAS with beta = 1 on x itself: no copy of x, no separate add kernel."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(4096, 1152, device="cuda", generator=g).bfloat16()
    a = torch.randn(4096, 1152, device="cuda", generator=g).bfloat16()
    w = (torch.randn(1152, 1152, device="cuda", generator=g) / 34).bfloat16()
    want = (x.float() + a.float() @ w.float().t())
    ptr = x.data_ptr()
    x.addmm_(a, w.t())  # warm (cuBLAS handle, workspace)
    x.copy_(want.bfloat16()); want = x.float() + a.float() @ w.float().t()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        x.addmm_(a, w.t())
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert x.data_ptr() == ptr
    assert kernels and not any(k for k in kernels if "elementwise" in k.lower() or "copy" in k.lower()), kernels
    assert ((x.float() - want).norm() / want.norm()) < 4e-3


def _fp32_reference(cfg, tower, b):
    """The unfused tower in float32 (a copy of the bf16 weights) on each image's real rows alone
    (per-image SDPA; FA2 takes no fp32): the reference both bf16 paths are measured against, in the
    order of b.keep."""
    import dataclasses

    from graphrt.attention.sdpa import vision_attention

    ref = MoonViT(cfg, torch.float32, "cuda")
    ref.load_state_dict({k: v.float() for k, v in tower.state_dict().items()})
    ref.fused = False
    outs = []
    for i, (one, used) in enumerate(zip(b.per_image, b.used)):
        rows = slice(i * b.slot, i * b.slot + used)
        geo = dataclasses.replace(one, merge_index=torch.arange(used, device="cuda"))
        outs.append(ref(b.pixels[rows], b.pos[rows].float(), geo, vision_attention).view(used, -1))
    return torch.cat(outs)


@pytest.mark.gpu
@torch.no_grad()
def test_residual_in_gemm_tower_bf16_within_bf16_noise_of_fp32():
    """Real widths (1152, head dim 72), 3 layers, two images in graph slots: the in-place residual
    tower and the kernel-add tower both within bf16 noise of the fp32 unfused tower, the in-place
    one no worse than the kernel one beyond noise; and captured in a CUDA graph, bit for bit its
    eager output."""
    from random_towers import random_moonvit, two_image_slots

    cfg, m = random_moonvit(7)
    b = two_image_slots(cfg, m)
    ref = _fp32_reference(cfg, m, b)
    m.fused = True
    errs, outs = {}, {}
    for residual in ("kernel", "gemm"):
        m.residual = residual
        assert m._residual_in_gemm() == (residual == "gemm")
        outs[residual] = m(b.pixels, b.pos, b.geo, b.attend).view(b.n, -1)[b.keep].float()
        errs[residual] = ((outs[residual] - ref).norm() / ref.norm()).item()
    assert 0 < errs["gemm"] < 2e-2 and 0 < errs["kernel"] < 2e-2, errs
    assert errs["gemm"] < 1.5 * errs["kernel"] + 1e-3, errs
    assert not torch.equal(outs["gemm"], outs["kernel"])  # really another path (rounding moves)

    m.residual = "gemm"
    eager = m(b.pixels, b.pos, b.geo, b.attend)
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        m(b.pixels, b.pos, b.geo, b.attend)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(graph):
        out = m(b.pixels, b.pos, b.geo, b.attend)
    b.pixels.copy_(torch.randn_like(b.pixels))
    graph.replay()
    want = m(b.pixels, b.pos, b.geo, b.attend)
    torch.cuda.synchronize()
    assert torch.equal(out, want)
    assert not torch.equal(out, eager)


def test_hooked_linears_keep_the_kernel_add(tiny_engine):
    """A forward hook on wo or fc1 (calib/report.py's taps) must see the call: such a tower keeps
    the kernel add, where addmm_ would run past the module."""
    vision = tiny_engine.model.vision
    saved = vision.residual, vision.gemm
    handle = vision.blocks[-1].fc1.register_forward_hook(lambda *a: None)
    try:
        vision.residual, vision.gemm = "gemm", "cublas"
        assert not vision._residual_in_gemm()
    finally:
        handle.remove()
        vision.residual, vision.gemm = saved
    vision.residual, vision.gemm = "gemm", "cublas"
    try:
        assert vision._residual_in_gemm()
    finally:
        vision.residual, vision.gemm = saved


@interpreted
def test_interp_offset_layernorm_is_layernorm_of_x_plus_offset():
    """offset_layernorm = F.layer_norm(x + offset) (and of x alone without an offset)."""
    import graphrt.vision_kernels as vk

    g = torch.Generator().manual_seed(8)
    x = torch.randn(10, 40, generator=g)
    off = torch.randn(40, generator=g)
    w, b = torch.randn(40, generator=g), torch.randn(40, generator=g)
    torch.testing.assert_close(vk.offset_layernorm(x, off, w, b, 1e-5), F.layer_norm(x + off, (40,), w, b, 1e-5),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vk.offset_layernorm(x, None, w, b, 1e-5), F.layer_norm(x, (40,), w, b, 1e-5),
                               rtol=1e-5, atol=1e-5)

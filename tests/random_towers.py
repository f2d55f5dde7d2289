"""A MoonViT tower at the real widths with random weights scaled to keep activations O(1) through
its layers (norm weights near 1, biases near 0, matrices ~ 1/sqrt(fan-in)): what the GPU tests of
the vision kernels compare paths on. Call it under torch.no_grad()."""

from __future__ import annotations

import torch

from graphrt.config import VisionConfig
from graphrt.vision import MoonViT


def random_moonvit(seed: int, layers: int = 3, device="cuda") -> tuple[VisionConfig, MoonViT]:
    cfg = VisionConfig(num_hidden_layers=layers)
    torch.manual_seed(seed)
    tower = MoonViT(cfg, torch.bfloat16, device)
    for name, prm in tower.named_parameters():
        if prm.dim() == 1:
            prm.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(prm.float()))
        else:
            prm.copy_(torch.randn_like(prm.float()) / prm[0].numel() ** 0.5)
    return cfg, tower


def two_image_slots(cfg: VisionConfig, tower: MoonViT, device="cuda", grids=((20, 24), (12, 16)), slot: int = 480):
    """Two images (grids 20x24 and 12x16) in graph slots of `slot` patches, as the fused tower sees a
    captured batch: cos/sin/positions per slot row (zeros in the pad rows), VisionRanges over the
    slots, random pixels (drawn last, from torch's global generator) and `keep`, the real rows."""
    from types import SimpleNamespace

    from capture.ranges import VisionRanges
    from capture.varlen import torch_fa2
    from graphrt.vision import vision_geometry

    per_image = [vision_geometry([g], cfg, device) for g in grids]
    n = slot * len(grids)
    cos = torch.zeros(n, cfg.head_dim // 2, device=device)
    sin = torch.zeros_like(cos)
    pos = torch.zeros(n, cfg.hidden_size, device=device, dtype=torch.bfloat16)
    for i, (g, one) in enumerate(zip(grids, per_image)):
        cos[i * slot : i * slot + one.num_patches] = one.cos
        sin[i * slot : i * slot + one.num_patches] = one.sin
        pos[i * slot : i * slot + one.num_patches] = tower.position_embedding(g)
    geo = SimpleNamespace(cos=cos, sin=sin, merge_index=torch.arange(n, device=device))
    used = [one.num_patches for one in per_image]
    attend = VisionRanges(torch_fa2, slot, (torch.arange(len(grids) + 1, device=device) * slot).to(torch.int32),
                          torch.tensor(used, dtype=torch.int32, device=device))
    pixels = torch.randn(n, 3, cfg.patch_size, cfg.patch_size, device=device)
    keep = torch.cat([torch.arange(i * slot, i * slot + u, device=device) for i, u in enumerate(used)])
    return SimpleNamespace(n=n, slot=slot, used=used, per_image=per_image, geo=geo, pos=pos, attend=attend,
                           pixels=pixels, keep=keep)


def unfused_and_fused_tower(vision: MoonViT, **fused_settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's output over two small images on CPU (grids 4x6 and 2x2, seeded pixels) through the
    unfused path, then through the fused one with `fused_settings` (e.g. gemm="triton") set on the
    tower; the tower's settings are restored afterwards. Returns (unfused, fused)."""
    from graphrt.attention.sdpa import vision_attention
    from graphrt.vision import vision_geometry

    grids = [(4, 6), (2, 2)]
    geo = vision_geometry(grids, vision.cfg, "cpu")
    p = vision.cfg.patch_size
    pixels = torch.randn(geo.num_patches, 3, p, p, generator=torch.Generator().manual_seed(3))
    pos = vision.positions(grids)
    saved = {name: getattr(vision, name) for name in ("fused", *fused_settings)}
    try:
        vision.fused = False
        ref = vision(pixels, pos, geo, vision_attention)
        vision.fused = True
        for name, value in fused_settings.items():
            setattr(vision, name, value)
        got = vision(pixels, pos, geo, vision_attention)
    finally:
        for name, value in saved.items():
            setattr(vision, name, value)
    return ref, got

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

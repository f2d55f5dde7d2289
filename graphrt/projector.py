"""`mlp1`: maps 2x2-merged MoonViT features (4 x 1152) to the LM width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm, Linear


class Projector(nn.Module):
    """LayerNorm(4C) -> Linear -> GELU (erf) -> Linear."""

    def __init__(self, in_dim: int, out_dim: int, eps: float, dtype, device=None):
        super().__init__()
        self.norm = LayerNorm(in_dim, eps, dtype, device)
        self.fc1 = Linear(in_dim, out_dim, True, dtype, device)
        self.fc2 = Linear(out_dim, out_dim, True, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))

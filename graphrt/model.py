"""LocateAnything = MoonViT -> projector (mlp1) -> Qwen2. Holds parameters only; the stages are
called by the eager generator and, later, by the CUDA-graph runner."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .llm import Qwen2
from .projector import Projector
from .vision import MoonViT, VisionAttention, VisionGeometry


class LocateAnything(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.cfg = cfg
        self.vision = MoonViT(cfg.vision, dtype, device)
        self.projector = Projector(cfg.vision.merged_dim, cfg.text.hidden_size, cfg.vision.layer_norm_eps, dtype, device)
        self.llm = Qwen2(cfg.text, dtype, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.embed_tokens.weight.device

    def encode_images(self, pixels: torch.Tensor, geo: VisionGeometry, attend: VisionAttention) -> torch.Tensor:
        """Packed patches of several images -> LM-width image embeddings [tokens, D], image by image."""
        return self.projector(self.vision(pixels, self.vision.positions(geo.grids), geo, attend))

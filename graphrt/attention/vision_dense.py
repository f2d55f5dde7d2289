"""Vision attention over the fixed slot layout as one dense SDPA call with a key-padding mask.

Image i owns patches [i*P, (i+1)*P) with n_i real ones (as `VisionRanges`). Viewed as
[B, H, P, D] (a stride view, no copy) the batch is one dense attention whose keys past n_i are
masked. This lets SDPA's cuDNN backend, which has its own Hopper kernels for head dimension 72,
take the call instead of FlashAttention-2, which runs head dimension 72 in its 96-wide kernel.
Whether that is faster is measured (benchmarks/vision_stage.py), not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


@dataclass
class DenseVisionRanges:
    patches: int  # P, per image slot
    seqused: torch.Tensor  # [B] int32 real patches per image
    backends: tuple[str, ...] = ("cudnn", "efficient")  # SDPA tries them in this order
    _arange: torch.Tensor | None = field(default=None, repr=False)

    def __call__(self, q, k, v, geo=None):
        b, p = self.seqused.shape[0], self.patches
        n, heads, d = q.shape
        if self._arange is None or self._arange.device != q.device:
            self._arange = torch.arange(p, device=q.device)
        keep = (self._arange[None, :] < self.seqused[:, None])[:, None, None, :]  # [B, 1, 1, P]
        qd, kd, vd = (t.reshape(b, p, heads, d).transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel([BACKENDS[name] for name in self.backends], set_priority=True):
            out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=keep)
        return out.transpose(1, 2).reshape(n, heads, d)

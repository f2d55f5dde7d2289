"""MoonViT over a packed batch of images: patch embed + interpolated 2D position embedding,
2D RoPE attention inside each image (block-diagonal), final LayerNorm, 2x2 patch merge."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import vision_kernels as vk
from .kernels import env_choice, vision_gemm
from .attention.sdpa import vision_attention
from .config import VisionConfig
from .kernels import vision_attention as slot_kernels
from .kernels.vision_attention import vision_attention as vision_attention_kernel
from .layers import LayerNorm, Linear, empty_param
from .lru import LRU

# Interpolated position tables kept (least recently used dropped). A 3B table is ~9.5 MB in bf16 at
# 1024x768; recomputing one costs ~65 ms on one CPU core (a kernel on the GPU), so a few are kept
# for repeated sizes while a run over many sizes stays flat (docs/notes.md).
POSITION_TABLES_KEPT = 8

# attend(q, k, v, geometry) -> [N, H, D]: full attention inside each image of the packed batch.
VisionAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]

@dataclass
class PackedImages:
    """Attention ranges of images packed back to back (each image exactly its own patches, no
    slot padding), so a batch of mixed sizes costs the sum of its images, not B times the largest.
    The fused tower runs vision_kernels.slot_attention over the real lengths; other paths attend
    image by image (geo.seqlens)."""

    cu: torch.Tensor  # [B+1] int32 start row of each image, then the total
    seqused: torch.Tensor  # [B] int32 patches per image
    longest: int  # patches of the largest image (the kernel's grid)
    layout = "packed"

    @classmethod
    def of(cls, seqlens: list[int], device) -> "PackedImages":
        lengths = torch.tensor(seqlens, dtype=torch.int32)
        cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
        cu[1:] = lengths.cumsum(0)
        return cls(cu.to(device), lengths.to(device), max(seqlens))

    def __call__(self, q, k, v, geo):
        return vision_attention(q, k, v, geo)


# Attention of the fused tower over image slots (capture.ranges.VisionRanges, the graph path), after the RoPE pass:
#   "slot"          kernels.vision_attention (head 72 as 64 + 16 columns, K/V tiles by tensor
#                   descriptors: the copy engine)
#   "slot1"         the first slot kernel, vision_kernels.slot_attention (pointer loads); A/B only
#                   (docs/notes.md, 2026-11-24, fourth pass)
#   "cudnn"         cuDNN's fused kernel, no mask tensor: head padded to 80 with a mask column
#                   (vision_kernels.rope_2d_pad writes q/k/v that way in the RoPE pass); A/B only:
#                   slower than "slot" at 1,680 and 26,676-patch slots, 1.8% faster at 10,816
#                   (docs/notes.md, 2026-11-24)
#   "varlen"        the slots' own varlen kernel (torch's FA2: head 72 in its 96-wide kernel)
# GRAPHRT_VISION_ATTENTION overrides the default (A/B). PackedImages takes the slot kernel over the
# real lengths ("packed"; "packed1" under "slot1"); other attend callables always take "varlen".
VISION_ATTENTION_MODES = ("slot", "slot1", "cudnn", "varlen")

# GRAPHRT_VISION_RESIDUAL's values, the default first (MoonViT.residual; docs/notes.md, 2026-11-25).
VISION_RESIDUAL_MODES = ("gemm", "kernel")


@dataclass
class VisionGeometry:
    """Everything about a batch of images that depends only on their patch grids."""

    grids: list[tuple[int, int]]
    seqlens: list[int]  # patches per image
    cos: torch.Tensor  # [N, head_dim/2] fp32, 2D RoPE
    sin: torch.Tensor
    merge_index: torch.Tensor  # [N] gather order that puts each 2x2 group in 4 consecutive rows

    @property
    def num_patches(self) -> int:
        return sum(self.seqlens)


def vision_geometry(grids: list[tuple[int, int]], cfg: VisionConfig, device) -> VisionGeometry:
    kh, kw = cfg.merge_kernel_size
    d = cfg.head_dim
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 4, device=device)[: d // 4].float() / d))
    angles, merge, offset = [], [], 0
    for h, w in grids:
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        # Interleaved pairs: pair 2i turns by x*f_i, pair 2i+1 by y*f_i.
        a = torch.stack((xs.reshape(-1, 1).float() * freqs, ys.reshape(-1, 1).float() * freqs), dim=-1)
        angles.append(a.reshape(h * w, d // 2))
        order = torch.arange(h * w, device=device).view(h // kh, kh, w // kw, kw).permute(0, 2, 1, 3)
        merge.append(order.reshape(-1) + offset)
        offset += h * w
    angles_t = torch.cat(angles)
    return VisionGeometry(
        grids=list(grids),
        seqlens=[h * w for h, w in grids],
        cos=angles_t.cos(),
        sin=angles_t.sin(),
        merge_index=torch.cat(merge),
    )


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D] rotated pairwise (complex multiply in fp32, as the reference does)."""
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).to(x.dtype)


class MoonViTBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, dtype, device=None):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.norm0 = LayerNorm(h, cfg.layer_norm_eps, dtype, device)
        self.wqkv = Linear(h, 3 * h, True, dtype, device)
        self.wo = Linear(h, h, True, dtype, device)
        self.norm1 = LayerNorm(h, cfg.layer_norm_eps, dtype, device)
        self.fc0 = Linear(h, cfg.intermediate_size, True, dtype, device)
        self.fc1 = Linear(cfg.intermediate_size, h, True, dtype, device)

    def forward(self, x: torch.Tensor, geo: VisionGeometry, attend: VisionAttention) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.wqkv(self.norm0(x)).view(n, 3, self.num_heads, self.head_dim)
        q = apply_rope_2d(qkv[:, 0], geo.cos, geo.sin)
        k = apply_rope_2d(qkv[:, 1], geo.cos, geo.sin)
        x = x + self.wo(attend(q, k, qkv[:, 2], geo).reshape(n, -1))
        return x + self.fc1(F.gelu(self.fc0(self.norm1(x)), approximate="tanh"))

    def _gemm(self, linear, x: torch.Tensor, epilogue: str, gemm: str, geo=None):
        """linear(x) with `epilogue` (kernels/vision_gemm.py) on the Triton GEMM where `gemm` (a
        GRAPHRT_VISION_GEMM value) and its chooser pick it for a plain Linear; None otherwise (the
        caller runs its cuBLAS path)."""
        if gemm == "cublas" or type(linear) is not Linear or linear.bias is None:
            return None
        tile = vision_gemm.choose(x, linear.weight, epilogue, gemm, self.head_dim)
        if tile is None:
            return None
        cos, sin = (geo.cos, geo.sin) if epilogue == "bias_rope" else (None, None)
        return vision_gemm.vision_linear(x, linear.weight, linear.bias, epilogue, cos, sin, self.head_dim, tile)

    def _attention_fused(self, h, geo, attend: VisionAttention, mode: str, fp8_wo, gemm: str):
        """qkv = wqkv(h), RoPE and attention on the fused kernels (forward_fused's modes) -> [N, H, D]
        (or wo's (e4m3 input, row scales) where fp8_wo is a static FP8 wo)."""
        n = h[0].shape[0] if isinstance(h, tuple) else h.shape[0]
        roped = None if isinstance(h, tuple) or mode == "cudnn" else self._gemm(self.wqkv, h, "bias_rope", gemm, geo)
        if roped is not None:
            qkv = roped.view(n, 3, self.num_heads, self.head_dim)
        else:
            qkv = (self.wqkv.forward_fp8(*h) if isinstance(h, tuple) else self.wqkv(h)).view(
                n, 3, self.num_heads, self.head_dim)
        if mode == "cudnn":  # RoPE and the padded mask-column layout in one pass
            padded = vk.rope_2d_pad(qkv, geo.cos, geo.sin, attend.seqused, attend.patches)
            att = vk.cudnn_slot_attention(padded, attend.patches, self.head_dim)
        else:
            if roped is None:
                vk.rope_2d_(qkv, geo.cos, geo.sin)
            if mode in ("slot", "packed"):
                slot = attend.patches if mode == "slot" else attend.longest
                att = vision_attention_kernel(qkv, attend.cu, attend.seqused, slot, packed=mode == "packed",
                                              fp8_for=fp8_wo)
            elif mode == "slot1":
                att = vk.slot_attention(qkv, attend.cu, attend.seqused, attend.patches)
            elif mode == "packed1":
                att = vk.slot_attention(qkv, attend.cu, attend.seqused, attend.longest, packed=True)
            else:
                att = attend(qkv[:, 0], qkv[:, 1], qkv[:, 2], geo)
        return att

    def forward_fused(self, x: torch.Tensor, h, geo, attend: VisionAttention, mode: str = "varlen",
                      fp8_producers: bool = True, fc0_epilogue: bool = False, gemm: str = "cublas"):
        """The same block on fused kernels. Takes x and h = norm0(x) (bf16, or (e4m3, row scales)
        when wqkv is a static W8A8 FP8Linear: MoonViT._norm writes it so); returns x after the
        attention branch and the MLP branch output, which the caller adds with the next norm.
        Static FP8 linears take e4m3 inputs written by the kernels that produce them: wo's by the
        attention kernel's store (modes slot / packed), fc0's by the add+LayerNorm, fc1's by one
        GELU + quantize pass over fc0's output (bias in _scaled_mm's epilogue). fp8_producers=False
        (A/B only): every FP8 linear quantizes its own bf16 input (one quantizer pass each).
        fc0_epilogue: fc0 + bias + GELU + fc1's quantization in one Triton FP8 GEMM
        (calib/fp8_gemm_gelu.py) instead of _scaled_mm and the GELU pass.
        gemm: GRAPHRT_VISION_GEMM's value: where it picks the Triton GEMM (kernels/vision_gemm.py),
        wqkv's epilogue also applies the 2D RoPE (no rope pass), fc0's the GELU."""
        n = x.shape[0]
        fp8_wo = self.wo if fp8_producers and vk.takes_static_fp8(self.wo) else None
        att = self._attention_fused(h, geo, attend, mode, fp8_wo, gemm)
        if isinstance(att, tuple):
            out = self.wo.forward_fp8(att[0].view(n, -1), att[1])
        else:
            att = att.reshape(n, -1)
            out = self._gemm(self.wo, att, "bias", gemm)
            if out is None:
                out = self.wo(att)
        if fp8_producers and vk.takes_static_fp8(self.fc0):
            x, q, rs = vk.add_layernorm_fp8(x, out, self.norm1.weight, self.norm1.bias, self.norm1.eps, self.fc0)
            if vk.takes_static_fp8(self.fc1):
                if fc0_epilogue:
                    from calib.fp8_gemm_gelu import fp8_gemm_gelu, usable

                    if usable(q, self.fc0, self.fc1):
                        return x, self.fc1.forward_fp8(*fp8_gemm_gelu(q, rs, self.fc0, self.fc1))
                return x, self.fc1.forward_fp8(*vk.gelu_fp8(self.fc0.forward_fp8(q, rs), self.fc1))
            return x, self.fc1(F.gelu(self.fc0.forward_fp8(q, rs), approximate="tanh"))
        x, h = vk.add_layernorm(x, out, self.norm1.weight, self.norm1.bias, self.norm1.eps)
        if type(self.fc0) is Linear:  # bias + GELU in the GEMM's epilogue
            if fp8_producers and vk.takes_static_fp8(self.fc1):
                return x, self.fc1.forward_fp8(*vk.gelu_fp8(self.fc0(h), self.fc1))
            y = self._gemm(self.fc0, h, "bias_gelu", gemm)
            if y is None:
                y = vk.linear_gelu(h, self.fc0.weight, self.fc0.bias)
            out = self._gemm(self.fc1, y, "bias", gemm)
            return x, self.fc1(y) if out is None else out
        return x, self.fc1(F.gelu(self.fc0(h), approximate="tanh"))  # another replaced linear keeps its own GEMM

    def forward_in_place(self, x: torch.Tensor, h: torch.Tensor, geo, attend: VisionAttention, mode: str,
                         norm1_offset: torch.Tensor) -> None:
        """The block with its residual adds inside the GEMMs (GRAPHRT_VISION_RESIDUAL=gemm; bf16 and
        plain Linears only): wo and fc1 accumulate into x in place (cuBLAS with beta = 1 and C = x,
        no bias), so x leaves without their biases. h = norm0(x + its offset); norm1_offset [C]
        fp32 is the running sum of the deferred biases up to and including wo's, which norm1 adds
        before its statistics. x must be a tensor nobody else reads."""
        n = x.shape[0]
        att = self._attention_fused(h, geo, attend, mode, None, "cublas").reshape(n, -1)
        x.addmm_(att, self.wo.weight.t())
        h = vk.offset_layernorm(x, norm1_offset, self.norm1.weight, self.norm1.bias, self.norm1.eps)
        x.addmm_(vk.linear_gelu(h, self.fc0.weight, self.fc0.bias), self.fc1.weight.t())


class MoonViT(nn.Module):
    def __init__(self, cfg: VisionConfig, dtype, device=None):
        super().__init__()
        self.cfg = cfg
        h, p = cfg.hidden_size, cfg.patch_size
        # The patch conv (kernel = stride = patch) is a linear map of each flattened patch.
        self.patch_weight = empty_param(h, 3, p, p, dtype=dtype, device=device)
        self.patch_bias = empty_param(h, dtype=dtype, device=device)
        self.pos_emb = empty_param(cfg.init_pos_emb_height, cfg.init_pos_emb_width, h, dtype=dtype, device=device)
        self.blocks = nn.ModuleList(MoonViTBlock(cfg, dtype, device) for _ in range(cfg.num_hidden_layers))
        self.final_layernorm = LayerNorm(h, cfg.layer_norm_eps, dtype, device)
        self._pos_cache: LRU[torch.Tensor] = LRU(POSITION_TABLES_KEPT)
        # Fused Triton kernels: None = on CUDA tensors (the CPU path stays the plain-torch reference),
        # True = wherever Triton runs (its CPU interpreter too, for tests), False = never.
        # GRAPHRT_VISION_FUSED=0 turns them off (A/B).
        self.fused: bool | None = None if env_choice("GRAPHRT_VISION_FUSED", ("1", "0")) == "1" else False
        # Fused path: patch linear + bias + position embedding as one aligned GEMM (vk.patch_embed);
        # False (benchmark A/B only) keeps the linear and the add.
        self.fused_patch_embed = True
        # Fused path with static W8A8 FP8 linears (fp8 scope `vision`): the kernels that produce a
        # linear's input write it in e4m3; False (benchmark A/B only) leaves each FP8 linear to
        # quantize its own bf16 input.
        self.fp8_producers = True
        # ... and fc0 with bias, GELU and fc1's quantization in one Triton FP8 GEMM (calib/fp8_gemm_gelu.py)
        # instead of _scaled_mm + one GELU pass (measured 2% faster at B=1, 0.5% at B=32 on the H100,
        # docs/notes.md); GRAPHRT_VISION_FP8_FC0=scaled_mm for the A/B.
        self.fp8_fc0_epilogue = env_choice("GRAPHRT_VISION_FP8_FC0", ("triton", "scaled_mm")) == "triton"
        # The linears of the fused bf16 tower (A/B: GRAPHRT_VISION_GEMM): cublas (default), triton
        # (kernels/vision_gemm.py: RoPE / GELU in its epilogues; slower on the H100, docs/notes.md) or
        # auto (per shape the faster of the two, measured at warm-up).
        self.gemm = vision_gemm.mode()
        self.attention = env_choice("GRAPHRT_VISION_ATTENTION", VISION_ATTENTION_MODES)
        # Where the fused bf16 tower on cuBLAS adds its residual (A/B: GRAPHRT_VISION_RESIDUAL):
        # "gemm" (default): wo and fc1 accumulate into x in place (beta = 1), their biases deferred to
        # the norms as fp32 offsets (forward_in_place): tower 119.2 -> 117.1 ms at B=32, 4.37 -> 4.32
        # ms at B=1 (H100, docs/notes.md 2026-11-25); "kernel": each GEMM writes its output (bias in
        # the epilogue) and add_layernorm adds it to x. FP8 vision and the Triton GEMM keep "kernel".
        self.residual = env_choice("GRAPHRT_VISION_RESIDUAL", VISION_RESIDUAL_MODES)
        self._offsets_key, self._offsets = None, None

    def attention_status(self) -> str:
        """The attention of the fused tower over graph slots (`graphrt status`)."""
        src = "GRAPHRT_VISION_ATTENTION" if "GRAPHRT_VISION_ATTENTION" in os.environ else "default"
        # the slot kernel's A/B: the value kernels/vision_attention.py read at import, i.e. what runs
        kernel = f", kernel {slot_kernels.KERNEL} (GRAPHRT_VISION_ATTENTION_KERNEL)"
        return f"{self.attention} ({src})" + (kernel if "GRAPHRT_VISION_ATTENTION_KERNEL" in os.environ else "")

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """[h*w, C]: the learned 2D table, bicubic-interpolated to the grid (the last few grids kept)."""
        return self._pos_cache.get(tuple(grid), lambda: self._interpolated_table(tuple(grid)))

    def _interpolated_table(self, grid: tuple[int, int]) -> torch.Tensor:
        table = self.pos_emb
        if grid != tuple(table.shape[:2]):
            src = table.permute(2, 0, 1)[None]
            try:
                table = F.interpolate(src, size=grid, mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
            except RuntimeError:  # some CPU builds lack bicubic for bf16
                table = F.interpolate(src.float(), size=grid, mode="bicubic", align_corners=False)[0]
                table = table.permute(1, 2, 0).to(self.pos_emb.dtype)
        return table.reshape(-1, table.shape[-1]).contiguous()

    def _blocks_fused(self, x: torch.Tensor, geo, attend: VisionAttention) -> torch.Tensor:
        """Each residual add is fused with the LayerNorm that follows it (the next block's norm0,
        or the final norm)."""
        first = self.blocks[0].norm0
        mode = "varlen"
        if vk.slot_attention_runs(self.cfg.head_dim, x):
            layout = getattr(attend, "layout", None)  # capture.ranges.VisionRanges: "slots"
            if layout == "slots":
                mode = self.attention
            elif layout == "packed":
                mode = "packed1" if self.attention == "slot1" else "packed"
        if self._residual_in_gemm():
            return self._blocks_in_place(x, geo, attend, mode)
        x, h = self._norm(x, None, first, self.blocks[0].wqkv)
        for i, block in enumerate(self.blocks):
            x, branch = block.forward_fused(x, h, geo, attend, mode, self.fp8_producers, self.fp8_fc0_epilogue,
                                            self.gemm)
            last = i + 1 == len(self.blocks)
            norm = self.final_layernorm if last else self.blocks[i + 1].norm0
            x, h = self._norm(x, branch, norm, None if last else self.blocks[i + 1].wqkv)
        return h

    def _residual_in_gemm(self) -> bool:
        """Whether the tower adds its residual inside the GEMMs: asked for, cuBLAS GEMMs, and every
        linear a plain bf16/fp32 Linear with a bias (the FP8 and Triton-GEMM paths keep the kernel add),
        wo and fc1 without module hooks (addmm_ runs past them; calib/report.py taps linears so)."""
        return self.residual == "gemm" and self.gemm == "cublas" and all(
            type(lin) is Linear and lin.bias is not None for b in self.blocks for lin in (b.wqkv, b.wo, b.fc0, b.fc1)
        ) and not any(lin._forward_hooks or lin._forward_pre_hooks for b in self.blocks for lin in (b.wo, b.fc1))

    def deferred_bias_offsets(self) -> torch.Tensor:
        """[2L, C] fp32: row 2i the sum of the wo and fc1 biases of blocks < i plus wo's of block i
        (what block i's norm1 adds back), row 2i+1 that plus fc1's of block i (the next norm0's; the
        last row is the final norm's). Computed once per set of weights (kept while the biases'
        storage and version stay); during a CUDA-graph capture a stale set is recomputed inside
        the graph, not kept."""
        biases = [lin.bias for b in self.blocks for lin in (b.wo, b.fc1)]
        key = tuple((t.data_ptr(), t._version) for t in biases)
        if key == self._offsets_key:
            return self._offsets
        offsets = torch.stack(biases).float().cumsum(0)
        capturing = offsets.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing:
            if self._offsets is not None and self._offsets.shape == offsets.shape and \
                    self._offsets.device == offsets.device:
                # in place: graphs captured earlier read this tensor, so new biases reach them too
                offsets = self._offsets.copy_(offsets)
            self._offsets_key, self._offsets = key, offsets
        return offsets

    def _blocks_in_place(self, x: torch.Tensor, geo, attend: VisionAttention, mode: str) -> torch.Tensor:
        """_blocks_fused with the residual added inside wo's and fc1's GEMMs (forward_in_place): x
        (the patch embedding's fresh output) is updated in place and carries the deferred biases as
        offsets that each norm adds back."""
        offsets = self.deferred_bias_offsets()
        first = self.blocks[0].norm0
        h = vk.offset_layernorm(x, None, first.weight, first.bias, first.eps)
        for i, block in enumerate(self.blocks):
            block.forward_in_place(x, h, geo, attend, mode, offsets[2 * i])
            last = i + 1 == len(self.blocks)
            norm = self.final_layernorm if last else self.blocks[i + 1].norm0
            h = vk.offset_layernorm(x, offsets[2 * i + 1], norm.weight, norm.bias, norm.eps)
        return h

    def _norm(self, x, delta, norm, feeds):
        """add + LayerNorm; for a static W8A8 FP8Linear `feeds`, h is its (e4m3 input, row scales)."""
        if feeds is not None and self.fp8_producers and vk.takes_static_fp8(feeds):
            x, q, rs = vk.add_layernorm_fp8(x, delta, norm.weight, norm.bias, norm.eps, feeds)
            return x, (q, rs)
        return vk.add_layernorm(x, delta, norm.weight, norm.bias, norm.eps)

    def clear_cache(self) -> None:
        self._pos_cache.clear()

    def positions(self, grids: list[tuple[int, int]]) -> torch.Tensor:
        return torch.cat([self.position_embedding(g) for g in grids])

    def forward(self, pixels: torch.Tensor, pos: torch.Tensor, geo, attend: VisionAttention) -> torch.Tensor:
        """pixels [N, 3, p, p] (all images packed), pos [N, C] -> merged features [N/4, 4*C].
        `geo` carries cos/sin [N, head_dim/2] and merge_index [N] (VisionGeometry or static buffers)."""
        if (pixels.is_cuda if self.fused is None else self.fused) and vk.available(pixels):
            if self.fused_patch_embed:
                x = vk.patch_embed(pixels, self.patch_weight, self.patch_bias, pos)
            else:
                x = F.linear(pixels.flatten(1).to(self.patch_weight.dtype), self.patch_weight.flatten(1),
                             self.patch_bias) + pos
            x = self._blocks_fused(x, geo, attend)
        else:
            x = F.linear(pixels.flatten(1).to(self.patch_weight.dtype), self.patch_weight.flatten(1), self.patch_bias)
            x = x + pos
            for block in self.blocks:
                x = block(x, geo, attend)
            x = self.final_layernorm(x)
        kh, kw = self.cfg.merge_kernel_size
        return x[geo.merge_index].reshape(-1, kh * kw * x.shape[-1])

"""Qwen2 decoder over packed tokens with a static KV cache; logits only for the rows asked for."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .kv_cache import KVCache
from .layers import Linear, RMSNorm

# attend(layer, q, k, v, cache, plan) -> [T, Hq, D]: writes this step's K/V into the cache and
# attends; backends own the write so that each can order it as its kernels need.
LMAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, KVCache, object], torch.Tensor]


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, device=None):
        super().__init__()
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponent), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; cos/sin [T, D] (rotate-half convention of Qwen2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Qwen2Layer(nn.Module):
    def __init__(self, cfg: TextConfig, dtype, device=None):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_size, self.kv_size = self.num_heads * hd, self.num_kv_heads * hd
        self.input_layernorm = RMSNorm(d, cfg.rms_norm_eps, dtype, device)
        self.qkv_proj = Linear(d, self.q_size + 2 * self.kv_size, True, dtype, device)  # q/k/v fused
        self.o_proj = Linear(self.q_size, d, False, dtype, device)
        self.post_attention_layernorm = RMSNorm(d, cfg.rms_norm_eps, dtype, device)
        self.gate_up_proj = Linear(d, 2 * cfg.intermediate_size, False, dtype, device)  # gate/up fused
        self.down_proj = Linear(cfg.intermediate_size, d, False, dtype, device)

    def forward(self, x, cos, sin, layer_idx: int, plan, cache: KVCache, attend: LMAttention):
        t = x.shape[0]
        qkv = self.qkv_proj(self.input_layernorm(x))
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rope(q.view(t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(t, self.num_kv_heads, self.head_dim), cos, sin)
        attn = attend(layer_idx, q, k, v.view(t, self.num_kv_heads, self.head_dim), cache, plan)
        x = x + self.o_proj(attn.reshape(t, self.q_size))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)

    def forward_fused(self, x, delta, cos, sin, layer_idx: int, cache: KVCache, attend):
        """The same layer on the fused Triton kernels (GPU path): returns (residual, delta) with the
        residual add left to the next layer's norm kernel. `attend.fused` ropes q/k, writes the
        cache and attends in its own kernels. GEMMs: the skinny Triton GEMM where it was measured
        faster than cuBLAS for this row count (decode steps), SiLU * up in the gate/up epilogue."""
        # lazy: the fused kernels need triton, which CPU-only installs may lack
        from .kernels.fp8_ops import fp8_layer_forward, has_fp8_inputs
        from .kernels.layer_ops import add_rms_norm
        from .kernels.skinny_gemm import gate_up_silu, linear

        if has_fp8_inputs(self):  # W8A8 FP8 linears (calib/): the norm / SiLU kernels write their e4m3 inputs
            return fp8_layer_forward(self, x, delta, cos, sin, layer_idx, cache, attend)
        t = x.shape[0]
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        x, h = add_rms_norm(x, delta, norm1.weight, norm1.eps)
        attn = attend.fused(layer_idx, linear(h, self.qkv_proj), cos, sin, cache, self.num_heads, self.num_kv_heads)
        x, h = add_rms_norm(x, linear(attn.view(t, self.q_size), self.o_proj), norm2.weight, norm2.eps)
        return x, linear(gate_up_silu(h, self.gate_up_proj), self.down_proj)


# Most LM-head rows for the swap-AB GEMM (Qwen2.logits_step): the chooser times it against F.linear, whose
# unaligned-row kernels are slower than the transposed product used instead, so the row count is capped
# by the step's own A/B (H100, 3B, benchmarks/step_kernels.py, 2026-11-25): B=1 (8 rows) 3.051 -> 3.040 ms,
# B=8 (48) 3.956 -> 3.931 ms, but B=32 (192) 5.651 -> 5.822 ms at c=461.
LMHEAD_SWAB_MAX_ROWS = 48


class Qwen2(nn.Module):
    def __init__(self, cfg: TextConfig, dtype, device=None):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=device)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(Qwen2Layer(cfg, dtype, device) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, device)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, dtype, device)

    def new_cache(self, rows: int, slots: int, device=None) -> KVCache:
        c, w = self.cfg, self.embed_tokens.weight
        return KVCache(c.num_hidden_layers, rows, slots, c.num_key_value_heads, c.head_dim, w.dtype, device or w.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def forward(
        self,
        embeds: torch.Tensor,
        plan,  # AttentionPlan for the dense path, or a graph-path plan; only .positions is read here
        cache: KVCache,
        attend: LMAttention,
        logits_index: torch.Tensor | None = None,
        fused: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        logits_rows: int | None = None,
    ) -> torch.Tensor | None:
        """embeds [T, D] -> logits [len(logits_index), V] (None when no index is given).
        fused: the Triton kernels of graphrt/kernels (CUDA; `attend` must have a `fused` method).
        rope: (cos, sin) [T, head_dim] already made (the fused step's prologue kernel, fused only);
        otherwise the rotary embedding of plan.positions. logits_rows (fused only): logits for the
        first logits_rows entries of logits_index only, the rest being pad rows made once by the
        caller (the fused LM head wants a multiple of 8 rows; else it pads with a cat per call)."""
        if rope is not None and not fused:
            raise ValueError("rope tables are taken on the fused path only; the eager path makes its own")
        cos, sin = rope if rope is not None else self.rotary(plan.positions, embeds.dtype)
        if fused:
            return self._forward_fused(embeds, cos, sin, cache, attend, logits_index, logits_rows)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, plan, cache, attend)
        if logits_index is None:
            return None
        return self.logits(self.norm(x[logits_index]))

    def _forward_fused(self, x, cos, sin, cache, attend, logits_index, logits_rows=None):
        from .kernels.layer_ops import add_rms_norm

        delta = None
        for i, layer in enumerate(self.layers):
            x, delta = layer.forward_fused(x, delta, cos, sin, i, cache, attend)
        if logits_index is None:
            return None
        # final residual add + norm of the rows asked for only
        m = logits_index.shape[0] if logits_rows is None else logits_rows
        pad = -logits_index.shape[0] % 8
        if pad:  # rows to a multiple of 8: the transposed product's output rows stay 16-byte aligned
            logits_index = torch.cat([logits_index, logits_index[-1:].expand(pad)])
        hidden = add_rms_norm(x, delta, self.norm.weight, self.norm.eps, index=logits_index)[1]
        return self.logits_step(hidden, m)

    def logits_step(self, hidden: torch.Tensor, rows: int) -> torch.Tensor:
        """The fused path's LM head on `hidden` [8k, D] -> logits of the first `rows` rows [rows, V].
        GRAPHRT_STEP_LMHEAD (A/B): `swab` (default) runs the swap-AB GEMM where the step GEMMs' chooser
        picks it for this row count (it stores y [M, V] row-major itself, so no transposing copy, and
        it joins the PDL chain of the layer GEMMs at B=1); `transposed` is cuBLAS's head @ hidden^T and
        a transposing copy (the path before; also above LMHEAD_SWAB_MAX_ROWS rows). Either way each
        logit is its fp32 dot product rounded once to the model dtype; the summation order differs, so
        the bits may differ by an ulp (tokens agreed on every row at B=1/8/32 in the A/B run)."""
        from .kernels import env_choice

        swab = env_choice("GRAPHRT_STEP_LMHEAD", ("swab", "transposed")) == "swab"
        if swab and hidden.is_cuda and hidden.shape[0] <= LMHEAD_SWAB_MAX_ROWS:
            from .kernels.skinny_gemm import choose, run_choice
            from .kernels.swap_ab_gemm import SwabConfig

            head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            cfg = choose(hidden.shape[0], head, False, False)
            if isinstance(cfg, SwabConfig):
                return run_choice(hidden, head, None, False, cfg)[:rows]
        return self.logits_transposed(hidden, rows)

    def logits_transposed(self, hidden: torch.Tensor, rows: int) -> torch.Tensor:
        """The LM head as head [V, D] @ hidden^T, then one transposing copy of the first `rows`
        rows: with the odd vocabulary (152681) the plain product's output rows are unaligned and
        cuBLAS falls back to align-1 kernels (H100, 3B head: 1.67 ms at 192 rows, 0.49 ms at 6,
        against 0.26 / 0.23 ms for the transposed product; benchmarks/step_attention_tune.py)."""
        from .kernels.layer_ops import transpose

        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return transpose(torch.mm(head, hidden.t()), rows)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, head)

"""Dense-mask attention through torch SDPA: the CPU path and the reference for the varlen backends."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .plan import AttentionPlan, dense_mask


def lm_attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache, plan: AttentionPlan) -> torch.Tensor:
    """Write this call's K/V at (token_rows, token_slots), then attend under the plan's rule. q [T, Hq, D]."""
    cache.write(layer, plan.token_rows, plan.token_slots, k, v)
    k_cache, v_cache = cache.k[layer], cache.v[layer]
    out = torch.empty_like(q)
    for row, q0, q1, kv_len in plan.segments:
        mask = dense_mask(plan.q_hi[q0:q1], plan.q_blocked[q0:q1], kv_len)
        out[q0:q1] = _attend(q[q0:q1], k_cache[row, :kv_len], v_cache[row, :kv_len], mask)
    return out


def vision_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geo) -> torch.Tensor:
    """Full attention inside each image of a packed batch (block-diagonal). q/k/v [N, H, D]."""
    out = torch.empty_like(q)
    start = 0
    for n in geo.seqlens:
        out[start : start + n] = _attend(q[start : start + n], k[start : start + n], v[start : start + n], None)
        start += n
    return out


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # [L, H, D] -> [1, H, L, D]; GQA by repeating KV heads (exact, and runs on every torch build).
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        attn_mask=None if mask is None else mask[None, None],
    )
    return o[0].transpose(0, 1)

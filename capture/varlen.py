"""Variable-length attention kernels with one contract, so graph code does not care which runs.

    out = kernel(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k, causal)
    out, lse = kernel(..., return_lse=True)   # lse [Hq, total_q] fp32, -inf where no key is seen

q [total_q, Hq, D]; k/v [total_k, Hkv, D] (GQA when Hkv < Hq). Segment b has queries
q[cu_q[b]:cu_q[b+1]] and keys k[cu_k[b] : cu_k[b] + seqused_k[b]]. `causal` aligns the mask to
the bottom right, as FlashAttention does: query i of an nq-query segment sees keys
j <= seqused_k - nq + i. A query that sees no key returns zeros. cu_q/cu_k/seqused_k are int32
device tensors whose values may change between CUDA-graph replays; max_q/max_k are host ints.

Kernels: `flash_attn` (the package, when its varlen function takes `seqused_k`), `torch-fa2`
(torch's built-in FlashAttention-2, `aten._flash_attention_forward`), `emulated` (plain torch,
any device: the CPU path and the reference in tests).
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

VarlenKernel = Callable[..., torch.Tensor]


def emulated(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k, causal, scale=None, return_lse=False):
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    groups = q.shape[1] // k.shape[1]
    bounds = torch.stack([cu_q[:-1], cu_q[1:], cu_k[:-1], seqused_k]).tolist()
    for q0, q1, k0, used in zip(*bounds):
        nq = q1 - q0
        if nq == 0 or used == 0:
            continue
        qs, ks, vs = q[q0:q1], k[k0 : k0 + used], v[k0 : k0 + used]
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        mask = None
        if causal:
            i = torch.arange(nq, device=q.device)[:, None]
            j = torch.arange(used, device=q.device)[None, :]
            mask = j <= used - nq + i
        live = mask.any(-1) if mask is not None else torch.ones(nq, dtype=torch.bool, device=q.device)
        o = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                                           attn_mask=None if mask is None else mask[None, None], scale=scale)
        out[q0:q1] = torch.where(live[:, None, None], o[0].transpose(0, 1), 0.0)
        if return_lse:
            scores = torch.einsum("qhd,khd->hqk", qs.float(), ks.float()) * (scale or qs.shape[-1] ** -0.5)
            if mask is not None:
                scores = scores.masked_fill(~mask[None], float("-inf"))
            lse[:, q0:q1] = torch.logsumexp(scores, dim=-1)
    return (out, lse) if return_lse else out


def torch_fa2(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k, causal, scale=None, return_lse=False):
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale, seqused_k=seqused_k)
    if not return_lse:
        return out[0]
    lse = out[1]
    if lse.dim() == 3:  # [B, H, max_q] in some builds; our layouts give every segment max_q queries
        lse = lse.permute(1, 0, 2).reshape(lse.shape[1], -1)
    return out[0], lse


def _flash_attn_kernel() -> VarlenKernel | None:
    try:
        from flash_attn import flash_attn_varlen_func  # optional package, probed at kernel selection
    except ImportError:
        return None
    if "seqused_k" not in inspect.signature(flash_attn_varlen_func).parameters:
        log.info("flash_attn is installed but its varlen function takes no seqused_k; not used")
        return None

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k, causal, scale=None, return_lse=False):
        if return_lse:
            raise NotImplementedError("the log-sum-exp window plan is built on torch-fa2 only")
        out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k=seqused_k,
                                     softmax_scale=scale, causal=causal)
        return out[0] if isinstance(out, tuple) else out

    return kernel


def select_kernel(name: str = "auto", device: torch.device | str = "cuda", strict: bool = False,
                  dtype: torch.dtype = torch.bfloat16) -> tuple[str, VarlenKernel]:
    """Pick a kernel: auto = flash_attn, then torch-fa2 (CUDA, fp16/bf16 only), then emulated.
    With strict, a requested kernel that cannot run raises instead of falling back."""
    device = torch.device(device)
    order = ["flash_attn", "torch-fa2", "emulated"] if name == "auto" else [name]
    reasons = []
    for candidate in order:
        if candidate == "emulated":
            return candidate, emulated
        if device.type != "cuda":
            reasons.append(f"{candidate}: needs CUDA")
        elif dtype not in (torch.float16, torch.bfloat16):
            reasons.append(f"{candidate}: needs fp16 or bf16, not {dtype}")
        elif candidate == "flash_attn":
            kernel = _flash_attn_kernel()
            if kernel is not None:
                return candidate, kernel
            reasons.append("flash_attn: not importable or without seqused_k")
        elif candidate == "torch-fa2":
            if hasattr(torch.ops.aten, "_flash_attention_forward"):
                return candidate, torch_fa2
            reasons.append("torch-fa2: this torch build has no _flash_attention_forward")
        else:
            raise ValueError(f"unknown attention kernel {candidate!r}")
        if name != "auto" or (strict and candidate == "torch-fa2"):
            break  # strict: never fall back to the emulated kernel
    message = "no attention kernel: " + "; ".join(reasons)
    if strict or name != "auto":
        raise RuntimeError(message)
    log.warning("%s; using emulated attention", message)
    return "emulated", emulated

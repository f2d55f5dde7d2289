"""Element-wise pieces of a decoder layer, one Triton kernel each, for any token count (prefill
and step alike):

    add_rms_norm(x, delta, w)  -> (x + delta, rmsnorm(x + delta) * w)   residual add + norm
    rope_write(qkv, ...)       -> rotated q; rotated k and v written into the KV cache
    silu_mul(gate_up)          -> silu(gate) * up
    transpose(x)               -> x.t().contiguous() (the LM head's transposed product back to rows)

Each rounds where the torch reference rounds to the model dtype (the residual sum, the normalized
activations, silu's output), so the fused path tracks the plain one to the last bit in most
elements; the rotary product is computed in fp32 and rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl_ops import pdl_enter


@triton.jit
def residual_rms_norm_row(x_ptr, d_ptr, w_ptr, res_ptr, src, row, n_cols, eps,
                          HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    """One row: (x + delta) stored to res[row] when there is a delta, then rmsnorm(.) * w in the
    model dtype, rounded where torch rounds. Returns (normalized row, cols, live mask); shared by
    the bf16 kernel below and the FP8 producer in fp8_ops.py."""
    cols = tl.arange(0, BLOCK)
    live = cols < n_cols
    x = tl.load(x_ptr + src * n_cols + cols, mask=live, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + src * n_cols + cols, mask=live, other=0.0)
        x = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)  # the residual stream rounds to the model dtype
        tl.store(res_ptr + row * n_cols + cols, x, mask=live)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    normed = (xf * inv).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=live, other=0.0)
    return (w.to(tl.float32) * normed.to(tl.float32)).to(x.dtype), cols, live


@triton.jit
def _add_rms_norm_kernel(x_ptr, d_ptr, w_ptr, index_ptr, res_ptr, out_ptr, n_cols, eps,
                         HAS_DELTA: tl.constexpr, HAS_INDEX: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    row = tl.program_id(0)
    src = row
    if HAS_INDEX:
        src = tl.load(index_ptr + row)
    h, cols, live = residual_rms_norm_row(x_ptr, d_ptr, w_ptr, res_ptr, src, row, n_cols, eps, HAS_DELTA, BLOCK)
    tl.store(out_ptr + row * n_cols + cols, h, mask=live)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x, delta [T, D] -> (residual x + delta, rmsnorm(residual) * weight). With `index`, only
    rows x[index] (+ delta[index]) are read and both outputs have len(index) rows."""
    n, d = x.shape
    rows = n if index is None else index.shape[0]
    out = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    if delta is None:
        res = x if index is None else None  # nothing new to write
    else:
        res = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(d)
    _add_rms_norm_kernel[(rows,)](
        x, x if delta is None else delta, weight, x if index is None else index, out if delta is None else res, out,
        d, eps, HAS_DELTA=delta is not None, HAS_INDEX=index is not None, BLOCK=block,
        num_warps=max(1, min(16, block // 256)), **pdl.launch(x, rows))
    return res, out


@triton.jit
def _rope_write_kernel(qkv_ptr, cos_ptr, sin_ptr, rows_ptr, slots_ptr, q_ptr, kc_ptr, vc_ptr,
                       qkv_stride, cos_stride, row_stride, slot_stride, rows_step, slots_step,
                       HQ: tl.constexpr, HKV: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr,
                       PDL: tl.constexpr):
    pdl_enter(PDL)
    t = tl.program_id(0)
    half: tl.constexpr = D // 2
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, half)[None, :]
    cos = tl.load(cos_ptr + t * cos_stride + d).to(tl.float32)  # the table repeats its two halves
    sin = tl.load(sin_ptr + t * cos_stride + d).to(tl.float32)
    base = qkv_ptr + t * qkv_stride
    # q heads [0, HQ), then k heads, then v heads, each D wide
    qm = h < HQ
    x1 = tl.load(base + h * D + d, mask=qm, other=0.0)
    x2 = tl.load(base + h * D + half + d, mask=qm, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    dst = q_ptr + t * (HQ * D) + h * D + d
    tl.store(dst, (a * cos - b * sin).to(x1.dtype), mask=qm)
    tl.store(dst + half, (b * cos + a * sin).to(x1.dtype), mask=qm)

    row = tl.load(rows_ptr + t * rows_step)  # rows/slots may be broadcast views (step 0)
    slot = tl.load(slots_ptr + t * slots_step)
    km = h < HKV
    cache_off = row * row_stride + slot * slot_stride + h * D + d
    k1 = tl.load(base + (HQ + h) * D + d, mask=km, other=0.0)
    k2 = tl.load(base + (HQ + h) * D + half + d, mask=km, other=0.0)
    a, b = k1.to(tl.float32), k2.to(tl.float32)
    tl.store(kc_ptr + cache_off, (a * cos - b * sin).to(k1.dtype), mask=km)
    tl.store(kc_ptr + cache_off + half, (b * cos + a * sin).to(k1.dtype), mask=km)
    v1 = tl.load(base + (HQ + HKV + h) * D + d, mask=km, other=0.0)
    v2 = tl.load(base + (HQ + HKV + h) * D + half + d, mask=km, other=0.0)
    tl.store(vc_ptr + cache_off, v1, mask=km)
    tl.store(vc_ptr + cache_off + half, v2, mask=km)


def rope_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """qkv [T, (Hq + 2 Hkv) * D] (the fused projection's output); cos/sin [T, D] (rotate-half
    tables); rows/slots [T] where token t's K/V goes in k_cache/v_cache [rows, slots, Hkv, D]
    (one layer's cache). Returns the rotated queries [T, Hq, D]."""
    t = qkv.shape[0]
    d = k_cache.shape[-1]
    assert qkv.stride(1) == 1 and cos.stride(1) == 1 and sin.stride(1) == 1 and k_cache.is_contiguous()
    q = torch.empty((t, num_heads, d), dtype=qkv.dtype, device=qkv.device)
    _rope_write_kernel[(t,)](
        qkv, cos, sin, rows, slots, q, k_cache, v_cache,
        qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), rows.stride(0), slots.stride(0),
        HQ=num_heads, HKV=num_kv_heads, BLOCK_H=triton.next_power_of_2(max(num_heads, num_kv_heads)), D=d,
        num_warps=4, **pdl.launch(qkv))
    return q


@triton.jit
def silu_mul_block(gu_ptr, n_cols, BLOCK: tl.constexpr):
    """One block of one row of [gate | up]: silu(gate) * up in the model dtype, rounded where torch
    rounds. Returns (values, cols, live mask); shared with the FP8 producer in fp8_ops.py."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < n_cols
    g = tl.load(gu_ptr + row * 2 * n_cols + cols, mask=live, other=0.0)
    u = tl.load(gu_ptr + row * 2 * n_cols + n_cols + cols, mask=live, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # silu rounds to the model dtype, as F.silu does
    return (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), cols, live


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, n_cols, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    h, cols, live = silu_mul_block(gu_ptr, n_cols, BLOCK)
    tl.store(out_ptr + tl.program_id(0) * n_cols + cols, h, mask=live)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate then up) -> silu(gate) * up [T, I]."""
    t, two_i = gate_up.shape
    n = two_i // 2
    assert gate_up.is_contiguous()
    out = torch.empty((t, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(t, triton.cdiv(n, block))](gate_up, out, n, BLOCK=block, num_warps=4, **pdl.launch(gate_up))
    return out


@triton.jit
def _transpose_kernel(src_ptr, dst_ptr, n_rows, n_cols, src_stride, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                      PDL: tl.constexpr):
    pdl_enter(PDL)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live_r = r < n_rows
    for c0 in range(0, n_cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        live = live_r[:, None] & (c < n_cols)[None, :]
        tile = tl.load(src_ptr + r[:, None] * src_stride + c[None, :], mask=live)
        tl.store(dst_ptr + c[None, :] * n_rows + r[:, None], tile, mask=live)


def transpose(x: torch.Tensor, cols: int | None = None) -> torch.Tensor:
    """x [R, C] contiguous -> [cols, R] = x[:, :cols].t() contiguous (cols <= C; default C), in
    tiles read and written along rows (torch's strided copy of this shape runs ~8x slower)."""
    r, c = x.shape
    assert x.is_contiguous()
    cols = c if cols is None else cols
    out = torch.empty((cols, r), dtype=x.dtype, device=x.device)
    block_r = 128
    _transpose_kernel[(triton.cdiv(r, block_r),)](x, out, r, cols, c, BLOCK_R=block_r, BLOCK_C=32, num_warps=4,
                                                      **pdl.launch(x, cols))
    return out

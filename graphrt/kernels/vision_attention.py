"""Attention inside each image of the vision tower, K/V tiles loaded through Hopper's TMA (Triton).

The same function as `vision_kernels.slot_attention` (full attention over each image's real
rows, read in place from the packed [N, 3, H, D] qkv; head 72 computed as a 64- and a 16-column
block), with what the profile showed it wasting:

- K/V tiles of full key blocks come through tensor descriptors (TMA): one bulk copy per tile
  into swizzled shared memory, no per-thread address math or masks in the loop. The 16-column
  block of a head reads 8 columns of the next head (or, for V of the last head, past the row:
  zero-filled by the TMA unit); they meet zero columns of q (QK) or land in output columns
  that are never stored (PV). Only the last, partial key block uses masked pointer loads (the
  rows past an image may be another image, or uninitialized rows of a packed batch).
- the softmax scale is folded into one FMA per logit (s * scale - max), as FA2 does.

Measured on the H100 against the first kernel: 9-11% less time per call at 1,680-patch slots (B=1,
B=32) and at 25,600 patches, as fast as cuDNN's dense kernel on exactly the real rows (which a
graph slot cannot use). `TRITON_INTERPRET=1` runs it on CPU tensors (tests).
"""

from __future__ import annotations

import warnings

import torch

from . import env_choice

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # CPU-only installs: never called there (vision_kernels.available is False)
    triton = None


if triton is not None:

    @triton.jit
    def _scores(q_lo, q_hi, k_ptr, desc_lo, desc_hi, key_row, k_col, n0, n_keys, offs_n, d_lo, d_hi, hi_ok,
                row_stride: tl.constexpr, D_LO: tl.constexpr, MASK_KEYS: tl.constexpr, USE_TMA: tl.constexpr):
        # Raw logits q . k of one block of BLOCK_N keys (scale not applied; -inf past the image).
        cols = n0 + offs_n
        kv_rows = cols.to(tl.int64)[:, None] * row_stride
        col_ok = cols < n_keys
        if MASK_KEYS:  # the last block: rows past used[b] are not this image's keys
            k_lo = tl.load(k_ptr + kv_rows + d_lo[None, :], mask=col_ok[:, None], other=0.0)
            k_hi = tl.load(k_ptr + kv_rows + d_hi[None, :], mask=col_ok[:, None] & hi_ok[None, :], other=0.0)
        elif USE_TMA:
            k_lo = desc_lo.load([key_row + n0, k_col])
            k_hi = desc_hi.load([key_row + n0, k_col + D_LO])
        else:
            k_lo = tl.load(k_ptr + kv_rows + d_lo[None, :])
            k_hi = tl.load(k_ptr + kv_rows + d_hi[None, :], mask=hi_ok[None, :], other=0.0)
        s = tl.dot(q_lo, tl.trans(k_lo))
        s = tl.dot(q_hi, tl.trans(k_hi), s)
        if MASK_KEYS:
            s = tl.where(col_ok[None, :], s, float("-inf"))
        return s

    @triton.jit
    def _softmax_pv(s, acc_lo, acc_hi, m_i, l_i, v_ptr, desc_lo, desc_hi, key_row, v_col, n0, n_keys, qk_scale,
                    offs_n, d_lo, d_hi, hi_ok, row_stride: tl.constexpr, D_LO: tl.constexpr,
                    MASK_KEYS: tl.constexpr, USE_TMA: tl.constexpr):
        # Online softmax of one block of logits, then P @ V into the running output.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # log2 units: exp2 below
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha
        acc_lo = acc_lo * alpha[:, None]
        acc_hi = acc_hi * alpha[:, None]
        p = tl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i + tl.sum(p, 1)
        cols = n0 + offs_n
        kv_rows = cols.to(tl.int64)[:, None] * row_stride
        if MASK_KEYS:
            col_ok = cols < n_keys
            v_lo = tl.load(v_ptr + kv_rows + d_lo[None, :], mask=col_ok[:, None], other=0.0)
            v_hi = tl.load(v_ptr + kv_rows + d_hi[None, :], mask=col_ok[:, None] & hi_ok[None, :], other=0.0)
        elif USE_TMA:
            v_lo = desc_lo.load([key_row + n0, v_col])
            v_hi = desc_hi.load([key_row + n0, v_col + D_LO])
        else:
            v_lo = tl.load(v_ptr + kv_rows + d_lo[None, :])
            v_hi = tl.load(v_ptr + kv_rows + d_hi[None, :], mask=hi_ok[None, :], other=0.0)
        p = p.to(v_lo.dtype)
        acc_lo = tl.dot(p, v_lo, acc_lo)
        acc_hi = tl.dot(p, v_hi, acc_hi)
        return acc_lo, acc_hi, m_new, l_i

    @triton.jit
    def _vision_attention_kernel(qkv_ptr, desc_lo, desc_hi, out_ptr, cu_ptr, used_ptr, slot, qk_scale,
                                 rs_ptr, inv_ptr, scale_ptr,
                                 HEADS: tl.constexpr, D: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACKED: tl.constexpr,
                                 USE_TMA: tl.constexpr, QUANT: tl.constexpr):
        # Program (query block, image * head). Image b starts at row cu[b]; its first used[b] rows
        # are real (keys and queries). Slots (PACKED false): every row of the image's `slot` rows
        # gets an output (pad rows in a block with real rows attend like the others; blocks of pad
        # rows only get zeros, no key loop). Packed: only real rows are written.
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // HEADS
        h = bh % HEADS
        start = tl.load(cu_ptr + b)
        n_keys = tl.load(used_ptr + b)
        row_stride: tl.constexpr = 3 * HEADS * D
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        d_lo = tl.arange(0, D_LO)
        d_hi = D_LO + tl.arange(0, D_HI)
        hi_ok = d_hi < D
        q_ok = offs_m < (n_keys if PACKED else slot)
        q_rows = start.to(tl.int64) + offs_m.to(tl.int64)
        q_ptr = qkv_ptr + q_rows[:, None] * row_stride + h * D
        q_lo = tl.load(q_ptr + d_lo[None, :], mask=q_ok[:, None], other=0.0)
        q_hi = tl.load(q_ptr + d_hi[None, :], mask=q_ok[:, None] & hi_ok[None, :], other=0.0)
        k_ptr = qkv_ptr + start.to(tl.int64) * row_stride + HEADS * D + h * D
        v_ptr = k_ptr + HEADS * D
        k_col = HEADS * D + h * D
        v_col = k_col + HEADS * D
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc_lo = tl.zeros([BLOCK_M, D_LO], tl.float32)
        acc_hi = tl.zeros([BLOCK_M, D_HI], tl.float32)
        keys = tl.where(pid_m * BLOCK_M < n_keys, n_keys, 0)  # a block of pad queries only: no keys, zeros
        full = keys // BLOCK_N * BLOCK_N
        for n0 in range(0, full, BLOCK_N):
            s = _scores(q_lo, q_hi, k_ptr, desc_lo, desc_hi, start, k_col, n0, n_keys, offs_n, d_lo, d_hi, hi_ok,
                        row_stride, D_LO, False, USE_TMA)
            acc_lo, acc_hi, m_i, l_i = _softmax_pv(s, acc_lo, acc_hi, m_i, l_i, v_ptr, desc_lo, desc_hi, start, v_col,
                                                   n0, n_keys, qk_scale, offs_n, d_lo, d_hi, hi_ok, row_stride, D_LO,
                                                   False, USE_TMA)
        for n0 in range(full, keys, BLOCK_N):  # the last, partial block (masked)
            s = _scores(q_lo, q_hi, k_ptr, desc_lo, desc_hi, start, k_col, n0, n_keys, offs_n, d_lo, d_hi, hi_ok,
                        row_stride, D_LO, True, USE_TMA)
            acc_lo, acc_hi, m_i, l_i = _softmax_pv(s, acc_lo, acc_hi, m_i, l_i, v_ptr, desc_lo, desc_hi, start, v_col,
                                                   n0, n_keys, qk_scale, offs_n, d_lo, d_hi, hi_ok, row_stride, D_LO,
                                                   True, USE_TMA)
        inv = 1.0 / tl.where(l_i > 0, l_i, 1.0)  # no key (used = 0): zeros, as the varlen contract says
        o_ptr = out_ptr + q_rows[:, None] * (HEADS * D) + h * D
        o_lo = (acc_lo * inv[:, None]).to(qkv_ptr.dtype.element_ty)
        o_hi = (acc_hi * inv[:, None]).to(qkv_ptr.dtype.element_ty)
        if QUANT:  # wo's e4m3 input: the bf16 output quantized by calib/quantize.py's static rule
            qs = tl.load(inv_ptr)
            o_lo = tl.minimum(tl.maximum(o_lo.to(tl.float32) * qs, -448.0), 448.0)
            o_hi = tl.minimum(tl.maximum(o_hi.to(tl.float32) * qs, -448.0), 448.0)
            if h == 0:
                tl.store(rs_ptr + q_rows, tl.zeros([BLOCK_M], tl.float32) + tl.load(scale_ptr), mask=q_ok)
        tl.store(o_ptr + d_lo[None, :], o_lo.to(out_ptr.dtype.element_ty), mask=q_ok[:, None])
        tl.store(o_ptr + d_hi[None, :], o_hi.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & hi_ok[None, :])


def head_split(d: int) -> tuple[int, int]:
    """Head dim -> the two power-of-two column blocks the kernel computes: the largest power of
    two below d, and the rest padded up to at least 16 (72 -> 64 + 16); a power of two halves."""
    d_lo = 1 << (d.bit_length() - 1)
    if d == d_lo:
        return d // 2, d // 2
    return d_lo, max(16, 1 << (d - d_lo - 1).bit_length())


# (block_m, block_n, num_warps, num_stages): best at all four sizes of the H100 sweep (1 and 32 images
# of 1,680-patch slots, 4 of them, one 26,676-patch slot), out of ten tiles and four loop schedules
# (benchmarks/vision_attention_hopper.py, docs/notes.md 2026-11-24).
TILES = (128, 64, 4, 3)


def tma_usable(qkv: torch.Tensor) -> bool:
    """Tensor descriptors need Hopper or newer (or the interpreter) and 16-byte aligned rows."""
    if not qkv.is_cuda:
        return True
    row_bytes = qkv.stride(0) * qkv.element_size()
    return torch.cuda.get_device_capability(qkv.device)[0] >= 9 and row_bytes % 16 == 0 and qkv.data_ptr() % 16 == 0


def launch_operands(qkv: torch.Tensor, scale: float | None, fp8_for):
    """What both attention kernels (this one and vision_attention_ws) take beside qkv: the checked
    shape (n, heads, d), the output (e4m3 when fp8_for, wo's input), the row scales, wo's input
    scales (dummies: the output, when not quantizing) and the softmax scale in log2 units."""
    n, three, heads, d = qkv.shape
    if three != 3 or not qkv.is_contiguous():
        raise ValueError(f"vision_attention needs a contiguous [N, 3, H, D] qkv, got {tuple(qkv.shape)}")
    quant = fp8_for is not None
    out = torch.empty(n, heads, d, device=qkv.device, dtype=torch.float8_e4m3fn if quant else qkv.dtype)
    rs = torch.empty((n, 1), device=qkv.device, dtype=torch.float32) if quant else out
    inv, s_in = (fp8_for.inv_input_scale, fp8_for.input_scale) if quant else (out, out)
    qk_scale = (scale if scale is not None else d ** -0.5) * 1.4426950408889634  # log2(e)
    return n, heads, d, out, rs, inv, s_in, qk_scale


# Which kernel runs the slot/packed attention, read at load (A/B): "auto" (default): ws where its
# ping-pong grid is one wave of SMs (B=1 of 640x480: tower 4.491 -> 4.416 ms, attention 1.288 -> 1.207
# ms, same output bits; H100, docs/notes.md "Vision GEMM in Triton"), this file's kernel elsewhere and
# wherever ws cannot run (silently); "triton" (this file's kernel always); "ws"
# (kernels/vision_attention_ws.py: Gluon, async wgmma with softmax overlapping the MMAs, Hopper and
# Triton 3.6 only; where it cannot run, this kernel runs instead, with one warning naming the reason).
KERNELS = ("auto", "triton", "ws")  # the first is the default
KERNEL = env_choice("GRAPHRT_VISION_ATTENTION_KERNEL", KERNELS)
_WS_FALLBACK_WARNED = False


def vision_attention(qkv: torch.Tensor, cu: torch.Tensor, used: torch.Tensor, slot: int,
                     scale: float | None = None, tiles=None, packed: bool = False, tma: bool | None = None,
                     fp8_for=None, kernel: str | None = None):
    """Full attention inside each image of a packed, RoPE-turned [N, 3, H, D] qkv -> [N, H, D].

    Image b starts at row cu[b] (cu [B+1] int32 on the device; may change between graph replays)
    and has used[b] real rows. Slots (default): image b owns `slot` rows, every one gets an
    output. packed: images back to back, `slot` is the longest image, only real rows written.
    tma None: tensor descriptors wherever they work (False: pointer loads, the A/B).
    fp8_for: a static-scale W8A8 FP8Linear (the block's wo): the output is its e4m3 input, the
    qkv-dtype result quantized in the store, and the call returns (q [N, H, D], row scales [N, 1]);
    the row scales are written for the rows the output covers.
    kernel: "triton", "ws" or "auto" (None: KERNEL, from GRAPHRT_VISION_ATTENTION_KERNEL)."""
    which = kernel or KERNEL
    if which in ("ws", "auto") and tiles is None and tma is None:
        from . import vision_attention_ws as ws

        why = ws.usable(qkv)
        if why is None and (which == "ws" or ws.one_wave(qkv, cu, slot)):
            return ws.vision_attention_ws(qkv, cu, used, slot, scale, packed=packed, fp8_for=fp8_for)
        global _WS_FALLBACK_WARNED
        if why is not None and which == "ws" and not _WS_FALLBACK_WARNED:
            warnings.warn(f"vision attention kernel ws: {why}; the Triton kernel runs instead", stacklevel=2)
            _WS_FALLBACK_WARNED = True
    n, heads, d, out, rs, inv, s_in, qk_scale = launch_operands(qkv, scale, fp8_for)
    d_lo, d_hi = head_split(d)
    block_m, block_n, warps, stages = tiles or TILES
    use_tma = tma_usable(qkv) if tma is None else tma
    quant = fp8_for is not None
    if use_tma:
        flat = qkv.view(n, 3 * heads * d)
        desc_lo = TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [block_n, d_lo])
        desc_hi = TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [block_n, d_hi])
    else:
        desc_lo = desc_hi = qkv
    grid = (triton.cdiv(slot, block_m), (cu.numel() - 1) * heads)
    _vision_attention_kernel[grid](qkv, desc_lo, desc_hi, out, cu, used, slot, qk_scale, rs, inv, s_in,
                                   HEADS=heads, D=d, D_LO=d_lo, D_HI=d_hi, BLOCK_M=block_m, BLOCK_N=block_n,
                                   PACKED=packed, USE_TMA=use_tma, QUANT=quant, num_warps=warps,
                                   num_stages=stages)
    return (out, rs) if quant else out

"""Fused elementwise kernels of the vision tower (Triton), each one pass over its tensors:

- `add_layernorm`: residual add + LayerNorm in one read of x and the branch output (fp32
  statistics, like F.layer_norm), writing the new residual and the normalized row;
  `offset_layernorm`: the LayerNorm of a residual the GEMMs accumulate into in place, plus the
  fp32 offset of the biases they defer (GRAPHRT_VISION_RESIDUAL=gemm);
- `rope_2d_`: 2D RoPE of q and k in place inside the packed qkv (fp32 complex multiply, as
  `vision.apply_rope_2d`), instead of ~10 elementwise kernels per tensor;
- `patch_embed`: the patch linear, its bias and the position embedding as one aligned GEMM;
- `linear_gelu`: fc0's bias and tanh-GELU in the matmul's epilogue (cuBLASLt through torch's
  `_addmm_activation`), so the 4304-wide activation is written once;
- `slot_attention`: full attention inside each image slot straight from the packed qkv, for
  head dim 72 without padding it in memory: the head is split 64 + 16 (8 masked) in registers, so
  the matmuls compute 80 columns, where torch's FA2 runs head 72 in its 96-wide kernel (now the
  A/B mode "slot1": the default is its successor on tensor descriptors, kernels/vision_attention.py);
- `rope_2d_pad` + `cudnn_slot_attention`: the same attention on cuDNN's fused kernel without a mask
  tensor (its masked kernel is slower): the RoPE pass writes q/k/v with the head padded 72 -> 80,
  and the first extra column is a mask column: 1 in every query, 0 in real keys and KEY_PAD_LOGIT
  in pad keys, so a pad key's logit is KEY_PAD_LOGIT / sqrt(72) and its softmax weight exactly 0;
  the extra V columns are 0 and the output is sliced back to 72.

Unfused and fused agree within bf16 rounding (tests/test_vision_kernels.py; on the GPU,
benchmarks/vision_stage.py). `TRITON_INTERPRET=1` runs the Triton kernels on CPU tensors.
"""

from __future__ import annotations

import torch

from .kernels import triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the fused path is simply unavailable
    triton = None


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernels can run on this tensor's device."""
    return triton is not None and triton_runs_on(x)


if triton is not None:

    @triton.jit
    def _add_layernorm_kernel(x_ptr, d_ptr, w_ptr, b_ptr, xo_ptr, h_ptr, cols, eps, rs_ptr, inv_ptr, scale_ptr,
                              off_ptr, HAS_DELTA: tl.constexpr, QUANT: tl.constexpr, HAS_OFFSET: tl.constexpr,
                              BLOCK: tl.constexpr):
        # QUANT: h_ptr is the e4m3 input of the linear this norm feeds; the row is rounded to the
        # model dtype first and then quantized by calib/quantize.py's static rule, so the bytes
        # are those of the unfused norm followed by the quantizer, and rs_ptr gets the row scale.
        # HAS_OFFSET: the stored residual lacks a per-column constant (the deferred biases of
        # offset_layernorm), added in fp32 before the statistics.
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < cols
        x = tl.load(x_ptr + row * cols + offs, mask=mask, other=0.0)
        if HAS_DELTA:
            # The residual add rounds to the model dtype first, as `x + branch` does unfused.
            x = x + tl.load(d_ptr + row * cols + offs, mask=mask, other=0.0)
            tl.store(xo_ptr + row * cols + offs, x, mask=mask)
        xf = x.to(tl.float32)
        if HAS_OFFSET:
            xf = xf + tl.load(off_ptr + offs, mask=mask, other=0.0)
        mean = tl.sum(xf, axis=0) / cols
        diff = tl.where(mask, xf - mean, 0.0)
        var = tl.sum(diff * diff, axis=0) / cols
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = diff * rstd * w + b
        if QUANT:
            hq = h.to(x_ptr.dtype.element_ty).to(tl.float32) * tl.load(inv_ptr)
            hq = tl.minimum(tl.maximum(hq, -448.0), 448.0)
            tl.store(h_ptr + row * cols + offs, hq.to(tl.float8e4nv), mask=mask)
            tl.store(rs_ptr + row, tl.load(scale_ptr))
        else:
            tl.store(h_ptr + row * cols + offs, h.to(h_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gelu_quant_kernel(y_ptr, q_ptr, rs_ptr, inv_ptr, scale_ptr, total, rows, BLOCK: tl.constexpr,
                           RS_BLOCK: tl.constexpr):
        # tanh-GELU of a contiguous [rows, cols] GEMM output (bias already added) seen as one flat
        # array (elementwise: no row boundaries, no partial blocks at row ends), rounded to the model
        # dtype as F.gelu's output is, then quantized by the static rule; program i also writes the
        # row scales of rows [i * RS_BLOCK, (i + 1) * RS_BLOCK).
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < total
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        # tanh(u) = 1 - 2 / (exp(2u) + 1): saturates to +-1 without inf/inf at large |u|
        t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        g = (0.5 * y * (1.0 + t)).to(y_ptr.dtype.element_ty).to(tl.float32)
        q = tl.minimum(tl.maximum(g * tl.load(inv_ptr), -448.0), 448.0)
        tl.store(q_ptr + offs, q.to(tl.float8e4nv), mask=mask)
        r = pid * RS_BLOCK + tl.arange(0, RS_BLOCK)
        tl.store(rs_ptr + r, tl.zeros([RS_BLOCK], tl.float32) + tl.load(scale_ptr), mask=r < rows)

    @triton.jit
    def _rope_2d_kernel(qkv_ptr, cos_ptr, sin_ptr, row_stride, WIDTH: tl.constexpr, HALF: tl.constexpr,
                        BLOCK: tl.constexpr):
        # One token per program. q (then k) is one contiguous row of H*D values: loaded whole
        # (wide, coalesced), split into (even, odd) pairs in registers; pair j of the row is pair
        # j % HALF of its head, turned by that angle.
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        pair = tl.arange(0, BLOCK // 2)
        c = tl.load(cos_ptr + row * HALF + pair % HALF)
        s = tl.load(sin_ptr + row * HALF + pair % HALF)
        for part in range(2):  # q, then k
            base = qkv_ptr + row * row_stride + part * WIDTH
            x = tl.load(base + offs, mask=offs < WIDTH, other=0.0).to(tl.float32)
            a, b = tl.split(tl.reshape(x, (BLOCK // 2, 2)))
            y = tl.reshape(tl.join(a * c - b * s, a * s + b * c), (BLOCK,))
            tl.store(base + offs, y.to(qkv_ptr.dtype.element_ty), mask=offs < WIDTH)


    @triton.jit
    def _rope_pad_kernel(qkv_ptr, cos_ptr, sin_ptr, used_ptr, out_ptr, plane, slot, key_pad,
                         HEADS: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr,
                         XBLOCK: tl.constexpr):
        # One token per program: q and k turned as in _rope_2d_kernel, q/k/v written to planes
        # 0/1/2 of out [3, N, HEADS, DP] (head padded D -> DP), then the extra columns: column D
        # is the mask column (q: 1; k: 0 for a real key, key_pad for a pad key), the rest 0.
        row = tl.program_id(0).to(tl.int64)
        WIDTH: tl.constexpr = HEADS * D
        HALF: tl.constexpr = D // 2
        EXTRA: tl.constexpr = DP - D
        offs = tl.arange(0, BLOCK)
        ok = offs < WIDTH
        dst = (offs // D) * DP + offs % D
        pair = tl.arange(0, BLOCK // 2)
        c = tl.load(cos_ptr + row * HALF + pair % HALF)
        s = tl.load(sin_ptr + row * HALF + pair % HALF)
        src = qkv_ptr + row * 3 * WIDTH
        dst_row = out_ptr + row * (HEADS * DP)
        for part in range(2):  # q, then k
            x = tl.load(src + part * WIDTH + offs, mask=ok, other=0.0).to(tl.float32)
            a, b = tl.split(tl.reshape(x, (BLOCK // 2, 2)))
            y = tl.reshape(tl.join(a * c - b * s, a * s + b * c), (BLOCK,))
            tl.store(dst_row + part * plane + dst, y.to(out_ptr.dtype.element_ty), mask=ok)
        tl.store(dst_row + 2 * plane + dst, tl.load(src + 2 * WIDTH + offs, mask=ok, other=0.0), mask=ok)
        e = tl.arange(0, XBLOCK)
        xok = e < HEADS * EXTRA
        xdst = (e // EXTRA) * DP + D + e % EXTRA
        first = (e % EXTRA) == 0
        img = row // slot
        pad = (row - img * slot) >= tl.load(used_ptr + img)
        zero = tl.zeros([XBLOCK], tl.float32)
        tl.store(dst_row + xdst, tl.where(first, 1.0, zero).to(out_ptr.dtype.element_ty), mask=xok)
        kcol = tl.where(first & pad, key_pad, zero)
        tl.store(dst_row + plane + xdst, kcol.to(out_ptr.dtype.element_ty), mask=xok)
        tl.store(dst_row + 2 * plane + xdst, zero.to(out_ptr.dtype.element_ty), mask=xok)

    @triton.jit
    def _slot_attention_block(acc_lo, acc_hi, m_i, l_i, q_lo, q_hi, k_ptr, v_ptr, n0, n_keys, qk_scale,
                              offs_n, d_lo, d_hi, hi_ok, row_stride: tl.constexpr, MASK_KEYS: tl.constexpr):
        # One block of BLOCK_N keys into the running (max, sum, output) of the query block.
        cols = n0 + offs_n
        kv_rows = cols.to(tl.int64)[:, None] * row_stride
        if MASK_KEYS:  # the last block: keys past used[b] are pads
            col_ok = cols < n_keys
            k_lo = tl.load(k_ptr + kv_rows + d_lo[None, :], mask=col_ok[:, None], other=0.0)
            k_hi = tl.load(k_ptr + kv_rows + d_hi[None, :], mask=col_ok[:, None] & hi_ok[None, :], other=0.0)
        else:
            k_lo = tl.load(k_ptr + kv_rows + d_lo[None, :])
            k_hi = tl.load(k_ptr + kv_rows + d_hi[None, :], mask=hi_ok[None, :], other=0.0)
        s = tl.dot(q_lo, tl.trans(k_lo))
        s = tl.dot(q_hi, tl.trans(k_hi), s) * qk_scale  # log2 units: exp2 below
        if MASK_KEYS:
            s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK_KEYS:
            v_lo = tl.load(v_ptr + kv_rows + d_lo[None, :], mask=col_ok[:, None], other=0.0)
            v_hi = tl.load(v_ptr + kv_rows + d_hi[None, :], mask=col_ok[:, None] & hi_ok[None, :], other=0.0)
        else:
            v_lo = tl.load(v_ptr + kv_rows + d_lo[None, :])
            v_hi = tl.load(v_ptr + kv_rows + d_hi[None, :], mask=hi_ok[None, :], other=0.0)
        p = p.to(v_lo.dtype)
        acc_lo = tl.dot(p, v_lo, acc_lo * alpha[:, None])
        acc_hi = tl.dot(p, v_hi, acc_hi * alpha[:, None])
        return acc_lo, acc_hi, m_new, l_i

    @triton.jit
    def _slot_attention_kernel(qkv_ptr, out_ptr, cu_ptr, used_ptr, slot, qk_scale,
                               HEADS: tl.constexpr, D: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_EVERY_BLOCK: tl.constexpr,
                               PACKED: tl.constexpr):
        # Program (query block, image * head). Image b starts at row cu[b] of the packed qkv
        # [N, 3, HEADS, D]; its first used[b] rows are real (keys and queries). Slots (PACKED
        # false): the image owns `slot` rows and every one gets an output, so none is left
        # uninitialized: pad rows in a block with real rows attend as FA2 would, blocks of pad
        # rows only get zeros (no key loop). Packed: images back to back, only real rows written.
        # Full key blocks run unmasked, the last one masked.
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // HEADS
        h = bh % HEADS
        start = tl.load(cu_ptr + b).to(tl.int64)
        n_keys = tl.load(used_ptr + b)
        row_stride: tl.constexpr = 3 * HEADS * D
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        d_lo = tl.arange(0, D_LO)
        d_hi = D_LO + tl.arange(0, D_HI)
        hi_ok = d_hi < D
        q_ok = offs_m < (n_keys if PACKED else slot)
        q_rows = start + offs_m.to(tl.int64)
        q_ptr = qkv_ptr + q_rows[:, None] * row_stride + h * D
        q_lo = tl.load(q_ptr + d_lo[None, :], mask=q_ok[:, None], other=0.0)
        q_hi = tl.load(q_ptr + d_hi[None, :], mask=q_ok[:, None] & hi_ok[None, :], other=0.0)
        k_ptr = qkv_ptr + start * row_stride + HEADS * D + h * D
        v_ptr = k_ptr + HEADS * D
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc_lo = tl.zeros([BLOCK_M, D_LO], tl.float32)
        acc_hi = tl.zeros([BLOCK_M, D_HI], tl.float32)
        keys = tl.where(pid_m * BLOCK_M < n_keys, n_keys, 0)  # a block of pad queries only: no keys, zeros
        full = keys // BLOCK_N * BLOCK_N
        if MASK_EVERY_BLOCK:
            full = full * 0
        for n0 in range(0, full, BLOCK_N):
            acc_lo, acc_hi, m_i, l_i = _slot_attention_block(acc_lo, acc_hi, m_i, l_i, q_lo, q_hi, k_ptr, v_ptr, n0,
                                                             n_keys, qk_scale, offs_n, d_lo, d_hi, hi_ok, row_stride,
                                                             False)
        for n0 in range(full, keys, BLOCK_N):
            acc_lo, acc_hi, m_i, l_i = _slot_attention_block(acc_lo, acc_hi, m_i, l_i, q_lo, q_hi, k_ptr, v_ptr, n0,
                                                             n_keys, qk_scale, offs_n, d_lo, d_hi, hi_ok, row_stride,
                                                             True)
        inv = 1.0 / tl.where(l_i > 0, l_i, 1.0)  # no key (used = 0): zeros, as the varlen contract says
        o_ptr = out_ptr + q_rows[:, None] * (HEADS * D) + h * D
        tl.store(o_ptr + d_lo[None, :], (acc_lo * inv[:, None]).to(out_ptr.dtype.element_ty), mask=q_ok[:, None])
        tl.store(o_ptr + d_hi[None, :], (acc_hi * inv[:, None]).to(out_ptr.dtype.element_ty),
                 mask=q_ok[:, None] & hi_ok[None, :])


def add_layernorm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, LayerNorm(x + delta)) for [N, C] rows; delta None: (x, LayerNorm(x))."""
    n, cols = x.shape
    h = torch.empty_like(x)
    xo = torch.empty_like(x) if delta is not None else x
    block = triton.next_power_of_2(cols)
    _add_layernorm_kernel[(n,)](x, delta if delta is not None else x, weight, bias, xo, h, cols, eps, x, x, x, x,
                                HAS_DELTA=delta is not None, QUANT=False, HAS_OFFSET=False, BLOCK=block,
                                num_warps=4 if block <= 2048 else 8)
    return xo, h


def offset_layernorm(x: torch.Tensor, offset: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """LayerNorm(x + offset) for [N, C] rows, offset [C] fp32 (None: LayerNorm(x)), added in fp32
    before the statistics; x is only read (one read, one write: the in-place residual's norm,
    MoonViT._blocks_in_place)."""
    n, cols = x.shape
    h = torch.empty_like(x)
    block = triton.next_power_of_2(cols)
    # one row a program, add_layernorm's warps (several rows a program measured slower on the H100:
    # 149-192 vs 139 us at B=32, docs/notes.md 2026-11-25)
    _add_layernorm_kernel[(n,)](x, x, weight, bias, x, h, cols, eps, x, x, x, offset if offset is not None else x,
                                HAS_DELTA=False, QUANT=False, HAS_OFFSET=offset is not None, BLOCK=block,
                                num_warps=4 if block <= 2048 else 8)
    return h


def add_layernorm_fp8(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float, linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x + delta, q, row scales): q [N, C] e4m3 is `linear`'s (a static-scale W8A8 FP8Linear)
    quantized input LayerNorm(x + delta), row scales [N, 1] float32 its static scale; the bf16
    normalized row is never written. Same statistics, warps and rounding as add_layernorm, so q
    holds the bytes the quantizer writes from add_layernorm's output."""
    n, cols = x.shape
    q = torch.empty((n, cols), dtype=torch.float8_e4m3fn, device=x.device)
    rs = torch.empty((n, 1), dtype=torch.float32, device=x.device)
    xo = torch.empty_like(x) if delta is not None else x
    block = triton.next_power_of_2(cols)
    _add_layernorm_kernel[(n,)](x, delta if delta is not None else x, weight, bias, xo, q, cols, eps, rs,
                                linear.inv_input_scale, linear.input_scale, x, HAS_DELTA=delta is not None,
                                QUANT=True, HAS_OFFSET=False, BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return xo, q, rs


def gelu_fp8(y: torch.Tensor, linear) -> tuple[torch.Tensor, torch.Tensor]:
    """y [N, C] (fc0's output, bias included) -> (q, row scales): q [N, C] e4m3 is `linear`'s (fc1,
    static W8A8) quantized input tanh-GELU(y), in one pass (read 2 bytes, write 1 per element)."""
    n, cols = y.shape
    if not y.is_contiguous():
        y = y.contiguous()
    q = torch.empty((n, cols), dtype=torch.float8_e4m3fn, device=y.device)
    rs = torch.empty((n, 1), dtype=torch.float32, device=y.device)
    block, rs_block = GELU_FP8_TILE
    grid = (max(triton.cdiv(n * cols, block), triton.cdiv(n, rs_block)),)
    _gelu_quant_kernel[grid](y, q, rs, linear.inv_input_scale, linear.input_scale, n * cols, n, BLOCK=block,
                             RS_BLOCK=rs_block, num_warps=GELU_FP8_WARPS)
    return q, rs


# gelu_fp8's elements per program and row scales per program; warps: best of four at the B=32 shape
# (53,760 x 4,304: 233 us, 2.98 TB/s; 4096/8 warps 243, 8192/16 246, 1024/4 274; the first form, a
# program per row and 1,024 columns, 351 us = 1.98 TB/s; H100, 2026-11-24, benchmarks/fp8_vision.py).
GELU_FP8_TILE = (2048, 32)
GELU_FP8_WARPS = 4


def takes_static_fp8(linear) -> bool:
    """Whether `linear` is a W8A8 FP8Linear with a static input scale, whose input the fused tower's
    kernels write in e4m3 (per-token and weight-only modes take the bf16 value)."""
    return getattr(linear, "act", None) == "static"


def rope_2d_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q and k of a contiguous [N, 3, H, D] qkv in place; cos/sin [N, D/2] fp32."""
    n, three, heads, d = qkv.shape
    if three != 3 or not qkv.is_contiguous():
        raise ValueError(f"rope_2d_ needs a contiguous [N, 3, H, D] tensor, got {tuple(qkv.shape)}")
    _rope_2d_kernel[(n,)](qkv, cos.contiguous(), sin.contiguous(), qkv.stride(0), WIDTH=heads * d, HALF=d // 2,
                          BLOCK=triton.next_power_of_2(heads * d), num_warps=4)
    return qkv


def patch_embed(pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """pixels [N, 3, p, p] -> pos + pixels @ weight.T + bias [N, C] in one GEMM (addmm with pos as
    its input): the bias rides as an extra input column of ones, and the 3*p*p = 588 columns are
    padded to a multiple of 8 (16-byte rows), where 588 ran in an Ampere align-2 cuBLAS kernel at
    76-143 TFLOP/s (H100 profile, docs/notes.md). Sums in fp32 and rounds once (the unfused path
    rounds the linear, then the add)."""
    n, c = pixels.shape[0], weight.shape[0]
    k = weight[0].numel()
    kp = (k + 1 + 7) // 8 * 8
    a = torch.empty(n, kp, device=pixels.device, dtype=weight.dtype)
    a[:, :k].copy_(pixels.flatten(1))
    a[:, k:].copy_(torch.eye(1, kp - k, device=pixels.device, dtype=weight.dtype).expand(n, -1))  # 1, 0, 0, ..
    w = torch.cat([weight.flatten(1), bias[:, None], weight.new_zeros(c, kp - k - 1)], 1)
    return torch.addmm(pos, a, w.t())


_EPILOGUE_IS_TANH: dict[tuple[str, torch.dtype], bool] = {}


def epilogue_gelu_is_tanh(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `_addmm_activation`'s GELU is the tanh form here (the CPU kernel uses erf; the
    cuBLASLt epilogue tanh). Probed once per device and dtype on exact inputs (multiples of
    1/8 times the identity): the form whose rounded values match more often wins."""
    key = (str(device), dtype)
    if key not in _EPILOGUE_IS_TANH:
        x = (torch.arange(-32, 32, device=device, dtype=torch.float32) / 8).repeat(64, 1).to(dtype)
        eye = torch.eye(64, device=device, dtype=dtype)
        got = torch._addmm_activation(torch.zeros(64, device=device, dtype=dtype), x, eye, use_gelu=True)
        tanh = torch.nn.functional.gelu(x.float(), approximate="tanh").to(dtype)
        erf = torch.nn.functional.gelu(x.float()).to(dtype)
        _EPILOGUE_IS_TANH[key] = bool((got == tanh).sum() > (got == erf).sum())
    return _EPILOGUE_IS_TANH[key]


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias), with bias and GELU in the GEMM epilogue where that
    epilogue computes the tanh form; otherwise the two plain ops."""
    if epilogue_gelu_is_tanh(x.device, x.dtype):
        return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)
    return torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias), approximate="tanh")


# Tile sizes of `slot_attention` (block_m, block_n, num_warps, num_stages): best or within 1.3% of
# the best of the H100 sweep at B=1 and B=32 (benchmarks/vision_stage.py, docs/notes.md).
SLOT_ATTENTION_TILES = (128, 64, 4, 3)


def head_split(d: int) -> tuple[int, int]:
    """Head dim -> the two power-of-two column blocks the slot kernel computes: the largest power
    of two below d, and the rest padded up to at least 16 (72 -> 64 + 16); a power of two halves."""
    d_lo = 1 << (d.bit_length() - 1)
    if d == d_lo:
        return d // 2, d // 2
    return d_lo, triton.next_power_of_2(max(d - d_lo, 16))


def slot_attention_runs(head_dim: int, x: torch.Tensor) -> bool:
    """Whether `slot_attention` runs for this head dim here: compiled tensor-core dots need blocks
    of at least 16 columns (the interpreter takes any)."""
    return available(x) and (not x.is_cuda or min(head_split(head_dim)) >= 16)


def slot_attention(qkv: torch.Tensor, cu: torch.Tensor, used: torch.Tensor, slot: int, scale: float | None = None,
                   tiles=None, mask_every_block: bool = False, packed: bool = False) -> torch.Tensor:
    """Full attention inside each image of a packed, RoPE-turned [N, 3, H, D] qkv -> [N, H, D].

    Image b starts at row cu[b] (cu [B+1] int32 on the device; may change between graph replays)
    and has used[b] real rows. Slots (default): image b owns `slot` rows and every row of the slot
    gets an output (pad rows: finite values or zeros). packed: images back to back (cu[b+1] =
    cu[b] + used[b]), `slot` is the longest image, and only the real rows are written (rows of no
    image stay uninitialized). `mask_every_block` (A/B only) masks every key block, not just the last."""
    n, three, heads, d = qkv.shape
    if three != 3 or not qkv.is_contiguous():
        raise ValueError(f"slot_attention needs a contiguous [N, 3, H, D] qkv, got {tuple(qkv.shape)}")
    d_lo, d_hi = head_split(d)
    block_m, block_n, warps, stages = tiles or SLOT_ATTENTION_TILES
    out = torch.empty(n, heads, d, device=qkv.device, dtype=qkv.dtype)
    qk_scale = (scale if scale is not None else d ** -0.5) * 1.4426950408889634  # log2(e)
    grid = (triton.cdiv(slot, block_m), (cu.numel() - 1) * heads)
    _slot_attention_kernel[grid](qkv, out, cu, used, slot, qk_scale, HEADS=heads, D=d, D_LO=d_lo, D_HI=d_hi,
                                 BLOCK_M=block_m, BLOCK_N=block_n, MASK_EVERY_BLOCK=mask_every_block,
                                 PACKED=packed, num_warps=warps, num_stages=stages)
    return out


# The logit a pad key gets through the mask column, before the softmax scale: exp of it (x 1/sqrt(72))
# underflows to exactly 0 against any real logit, while a slot of pad keys only (the runtime never
# makes one: an unused slot has 4 "real" rows) still gets finite weights, not the NaN of -inf. fp16
# cannot hold -1e30: -65504 (x 1/sqrt(72) = -7720) is still exactly 0 after exp.
KEY_PAD_LOGIT = {torch.bfloat16: -1e30, torch.float32: -1e30, torch.float16: -65504.0}


def cudnn_head(d: int) -> int:
    """Padded head dim for the mask-column layout: d + 1 rounded up to a multiple of 8 (72 -> 80)."""
    return (d + 1 + 7) // 8 * 8


def rope_2d_pad(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, used: torch.Tensor, slot: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """2D RoPE of q and k of a contiguous [N, 3, H, D] qkv (N = B slots of `slot` rows, used [B]
    int32 real rows per slot), written with v to a new [3, N, H, DP] tensor in the mask-column
    layout (module docstring); qkv is not modified."""
    n, three, heads, d = qkv.shape
    if three != 3 or not qkv.is_contiguous():
        raise ValueError(f"rope_2d_pad needs a contiguous [N, 3, H, D] tensor, got {tuple(qkv.shape)}")
    if d % 2:
        raise ValueError(f"rope_2d_pad needs an even head dim, got {d}")
    dp = cudnn_head(d)
    if out is None:
        out = torch.empty(3, n, heads, dp, device=qkv.device, dtype=qkv.dtype)
    _rope_pad_kernel[(n,)](qkv, cos.contiguous(), sin.contiguous(), used, out, n * heads * dp, slot,
                           KEY_PAD_LOGIT[qkv.dtype], HEADS=heads, D=d, DP=dp,
                           BLOCK=triton.next_power_of_2(heads * d),
                           XBLOCK=triton.next_power_of_2(heads * (dp - d)), num_warps=4)
    return out


def rope_2d_pad_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, used: torch.Tensor,
                          slot: int) -> torch.Tensor:
    """rope_2d_pad in torch ops (the CPU reference of the tests)."""
    from .vision import apply_rope_2d

    n, _, heads, d = qkv.shape
    dp = cudnn_head(d)
    out = torch.zeros(3, n, heads, dp, device=qkv.device, dtype=qkv.dtype)
    out[0, :, :, :d] = apply_rope_2d(qkv[:, 0], cos, sin)
    out[1, :, :, :d] = apply_rope_2d(qkv[:, 1], cos, sin)
    out[2, :, :, :d] = qkv[:, 2]
    pos = torch.arange(n, device=qkv.device) % slot
    pad = pos >= used.to(qkv.device).long().repeat_interleave(slot)[:n]
    out[0, :, :, d] = 1
    out[1, :, :, d] = torch.where(pad, KEY_PAD_LOGIT[qkv.dtype], 0.0)[:, None].to(qkv.dtype)
    return out


def cudnn_slot_attention(padded: torch.Tensor, slot: int, d: int, scale: float | None = None) -> torch.Tensor:
    """Attention inside each slot from rope_2d_pad's [3, N, H, DP] tensor, on cuDNN's fused kernel
    with no mask tensor (the mask column does it) -> [N, H, d] (a strided view of the padded output).
    The scale is that of the real head dim (1/sqrt(d)), passed explicitly."""
    _, n, heads, dp = padded.shape
    b = n // slot
    q, k, v = (padded[i].view(b, slot, heads, dp).transpose(1, 2) for i in range(3))
    o = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, 0.0, False, False,
                                                           scale=scale if scale is not None else d ** -0.5)[0]
    return o.transpose(1, 2).reshape(n, heads, dp)[:, :, :d]

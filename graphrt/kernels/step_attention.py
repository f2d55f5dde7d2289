"""Attention of one MTP step, made for its shape: per cache row, 2*W query tokens (W accepted
slots, right-aligned, then the W-slot window) against a key range that grows with the row.

Layout (see graphrt/attention/plan.py for the rule): row b has cache length c and k real
accepted tokens (pending_count). Accepted token j (j >= W - k) sits at slot c + j - (W - k) and is
causal; pad accepted slots see key 0 only (their output is never used). The window's W tokens sit
at their own slots w0 = c + k .. w0 + W - 1 and see every key in [0, w0 + W) except w0 - 1, the last
accepted token, which window slot 0 repeats. Their K/V is already in the cache (rope_write).

Two kernels (flash-decoding, with the key split sized from the row's length on the device):
  attend grid (rows * kv_heads, n_split, query tiles): one program takes `split_m` query rows of a
         KV head's GQA group (2W tokens x group heads, packed) against keys
         [s*chunk, (s+1)*chunk) of the row, chunk = ceil(kv_len / n_split) rounded up to the key
         block and never below `min_chunk`. A row that needs one split (kv_len <= chunk) has its
         output written directly, in the model dtype; otherwise each split leaves a partial
         output and log-sum-exp in fp32, and splits past the row's length exit at once.
  merge  grid (rows * kv_heads, query tiles): weights the used splits by their log-sum-exp; exits
         for rows written directly. Not launched at all when n_split is 1.
The query tiles are what spreads a step over the SMs (every tile re-reads its row's K/V, from L2);
the key split only adds programs where rows x kv heads x tiles cannot fill them, and `min_chunk`
keeps the partial results' traffic below the K/V read (at a short cache, 16 splits of one 32-key
block each wrote 4x the cache's bytes in partials and read them back).
n_split, min_chunk, the tile and key block are fixed per captured batch size (`CONFIGS`, measured);
the per-row lengths are read on the device, so the pair is capturable in a CUDA graph and allocates
nothing at replay. GRAPHRT_STEP_ATTENTION=split (A/B only) keeps the previous shape choice: the
key range split to cover the SMs, one whole GQA tile per program, every row through the merge.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import env_choice, pdl
from .pdl_ops import pdl_enter

_LOG2E = 1.4426950408889634

# Per step batch size (rows at or above the key; below 8 takes 1): (split_m query rows per program,
# key block, splits, least keys per split, warps). The sweep of benchmarks/step_attention_tune.py
# (H100, 2026-11-25, c = 461 and 2000, least summed time): B=1 keeps the previous shape (64 splits,
# 8 warps: 7.4 / 8.7 us a layer, nothing else under 8.7 at c=461); B=8 11.6 / 19.1 us (previous
# 17.7 / 23.2); B=32 17.5 / 43.7 us (previous 20.6 / 46.7). A least-keys-per-split floor never won.
CONFIGS = {1: (64, 64, 64, 0, 8), 8: (64, 64, 4, 0, 4), 32: (64, 64, 2, 0, 4)}


def step_attention_mode() -> str:
    return env_choice("GRAPHRT_STEP_ATTENTION", ("tiles", "split"))


def step_rope_mode() -> str:
    """Where a step layer's RoPE and K/V cache write run (GRAPHRT_STEP_ROPE): "separate" =
    layer_ops.rope_write before the split kernel (default); "attention" = inside the split kernel
    (StepAttention.with_rope, one kernel a layer fewer, bit-equal). H100, 3B, 2026-11-25: the fold
    saved nothing at B=1 (3.082 vs 3.074 ms: with PDL the RoPE kernel hides under its neighbours)
    and lost at B=8 / 32 (c=2000: 4.441 vs 4.315, 6.955 vs 6.506 ms: the mixed cache/projection key
    loads slow every key block), so it stays opt-in."""
    return env_choice("GRAPHRT_STEP_ROPE", ("separate", "attention"))


@triton.jit
def _row_lengths(clen_ptr, count_ptr, b, n_split, min_chunk, W: tl.constexpr, BLOCK_N: tl.constexpr):
    c = tl.load(clen_ptr + b).to(tl.int32)
    k = tl.load(count_ptr + b).to(tl.int32)
    kv_len = c + k + W
    per_split = tl.cdiv(kv_len, n_split)
    chunk = tl.maximum(tl.cdiv(per_split, BLOCK_N) * BLOCK_N, min_chunk)
    return c, k, kv_len, chunk, tl.cdiv(kv_len, chunk)


@triton.jit
def _rotate(x_ptr, off, d, mask, cos_ptr, sin_ptr, cos_off, D: tl.constexpr):
    """Rotate-half RoPE of rows of D values at x_ptr + off (off [R, D] with d along columns): the
    same fp32 products as layer_ops' _rope_write_kernel, rounded once to the model dtype."""
    half: tl.constexpr = D // 2
    first = (d < half)[None, :]
    x = tl.load(x_ptr + off, mask=mask, other=0.0)
    xp = tl.load(x_ptr + off + tl.where(first, half, -half), mask=mask, other=0.0)
    cos = tl.load(cos_ptr + cos_off, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + cos_off, mask=mask, other=0.0).to(tl.float32)
    a, b = x.to(tl.float32), xp.to(tl.float32)
    return tl.where(first, a * cos - b * sin, a * cos + b * sin).to(x.dtype)


@triton.jit
def _step_split_kernel(q_ptr, k_ptr, v_ptr, clen_ptr, count_ptr, po_ptr, plse_ptr, out_ptr,
                       qk_scale, row_stride, slot_stride, n_split, min_chunk,
                       cos_ptr, sin_ptr, wrow_ptr, wslot_ptr, qkv_stride, cos_stride, wrow_step, wslot_step,
                       HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
                       GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       SPLIT_M: tl.constexpr, ROPE: tl.constexpr, TOKENS: tl.constexpr, PDL: tl.constexpr):
    """ROPE: q_ptr is the QKV projection [T, (HQ + 2 HKV) * D] (not yet rotated): the program
    rotates its queries, takes this step's keys (slots [c, kv_len)) from the projection, rotated,
    instead of the cache, and program (split 0, tile 0) of each (row, KV head) writes the step's
    rotated K and V to the cache at (wrow, wslot), as rope_write would; no other program of the
    grid reads those slots from the cache, so the write needs no ordering inside the kernel."""
    pdl_enter(PDL)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // HKV
    g = pid % HKV
    m = tl.program_id(2) * SPLIT_M + tl.arange(0, SPLIT_M)  # this program's query rows of the tile
    tok = m // GROUP
    head = g * GROUP + m % GROUP
    live_m = tok < 2 * W
    d = tl.arange(0, D)
    q_off = ((b * 2 * W + tok) * HQ + head)[:, None] * D + d[None, :]
    # issued before the lengths are known: the query load overlaps theirs (one round trip fewer)
    if ROPE:
        q = _rotate(q_ptr, ((b * 2 * W + tok) * qkv_stride + head * D)[:, None] + d[None, :], d, live_m[:, None],
                    cos_ptr, sin_ptr, (b * 2 * W + tok)[:, None] * cos_stride + d[None, :], D)
    else:
        q = tl.load(q_ptr + q_off, mask=live_m[:, None], other=0.0)
    c, k, kv_len, chunk, used = _row_lengths(clen_ptr, count_ptr, b, n_split, min_chunk, W, BLOCK_N)
    if ROPE:
        if (split == 0) & (tl.program_id(2) == 0):  # the step's K/V into the cache, once per (row, KV head)
            t = tl.arange(0, TOKENS)
            live_t = (t < 2 * W)[:, None]
            tt = b * 2 * W + t
            src = (tt * qkv_stride + (HQ + g) * D)[:, None] + d[None, :]
            kr = _rotate(q_ptr, src, d, live_t, cos_ptr, sin_ptr, tt[:, None] * cos_stride + d[None, :], D)
            vr = tl.load(q_ptr + src + HKV * D, mask=live_t, other=0.0)
            wrow = tl.load(wrow_ptr + tt * wrow_step, mask=t < 2 * W, other=0)
            wslot = tl.load(wslot_ptr + tt * wslot_step, mask=t < 2 * W, other=0)
            dst = (wrow * row_stride + wslot * slot_stride + g * D)[:, None] + d[None, :]
            tl.store(k_ptr + dst, kr, mask=live_t)
            tl.store(v_ptr + dst, vr, mask=live_t)
    start = split * chunk
    if (start < kv_len) & (tl.program_id(2) * SPLIT_M < 2 * W * GROUP):
        end = tl.minimum(start + chunk, kv_len)
        w0 = c + k
        first_real = W - k
        # The rule, per query row of the tile: visible keys j <= hi and j != blocked.
        acc_hi = tl.where(tok >= first_real, c + tok - first_real, 0)
        hi = tl.where(tok < W, acc_hi, w0 + W - 1)
        hi = tl.where(live_m, hi, 0)
        blocked = tl.where((tok >= W) & live_m, w0 - 1, -1)

        kv_base = b * row_stride + g * D
        m_i = tl.full([SPLIT_M], float("-inf"), tl.float32)
        l_i = tl.zeros([SPLIT_M], tl.float32)
        acc = tl.zeros([SPLIT_M, D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            keys = n0 + tl.arange(0, BLOCK_N)
            live_n = keys < end
            off = kv_base + keys[:, None] * slot_stride + d[None, :]
            if ROPE:
                old = ((keys < c) & live_n)[:, None]
                kt = tl.load(k_ptr + off, mask=old, other=0.0)
                vt = tl.load(v_ptr + off, mask=old, other=0.0)
                if n0 + BLOCK_N > c:  # this step's keys: accepted at [c, w0), the window at [w0, kv_len)
                    new = (keys >= c) & live_n
                    kt_tok = b * 2 * W + tl.where(keys < w0, keys - c + first_real, keys - w0 + W)
                    src = (kt_tok * qkv_stride + (HQ + g) * D)[:, None] + d[None, :]
                    kn = _rotate(q_ptr, src, d, new[:, None], cos_ptr, sin_ptr,
                                 kt_tok[:, None] * cos_stride + d[None, :], D)
                    kt = tl.where(new[:, None], kn, kt)
                    vt = tl.where(new[:, None], tl.load(q_ptr + src + HKV * D, mask=new[:, None], other=0.0), vt)
            else:
                kt = tl.load(k_ptr + off, mask=live_n[:, None], other=0.0)
            s = tl.dot(q, tl.trans(kt)) * qk_scale  # log2 domain
            seen = (keys[None, :] <= hi[:, None]) & (keys[None, :] != blocked[:, None]) & live_n[None, :]
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if not ROPE:
                vt = tl.load(v_ptr + off, mask=live_n[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            m_i = m_new
        has = l_i > 0.0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        if used == 1:  # the whole row in this program: no partials, no merge
            tl.store(out_ptr + q_off, out.to(out_ptr.dtype.element_ty), mask=live_m[:, None])
        else:
            lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
            part = pid * n_split + split
            tl.store(po_ptr + (part * BLOCK_M + m)[:, None] * D + d[None, :], out, mask=live_m[:, None])
            tl.store(plse_ptr + part * BLOCK_M + m, lse, mask=live_m)


@triton.jit
def _step_merge_kernel(po_ptr, plse_ptr, clen_ptr, count_ptr, out_ptr, n_split, min_chunk,
                       HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
                       GROUP: tl.constexpr, BLOCK_M: tl.constexpr, TILE_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       SPLITS: tl.constexpr, ALL_AT_ONCE: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    pid = tl.program_id(0)
    b = pid // HKV
    g = pid % HKV
    m = tl.program_id(1) * TILE_M + tl.arange(0, TILE_M)
    tok = m // GROUP
    live_m = tok < 2 * W
    c, k, kv_len, chunk, used = _row_lengths(clen_ptr, count_ptr, b, n_split, min_chunk, W, BLOCK_N)
    if (tl.min(tok, axis=0) < 2 * W) & (used > 1):
        d = tl.arange(0, D)
        s_all = tl.arange(0, SPLITS)
        live_s = s_all < used
        rows = (pid * n_split + s_all)[:, None] * BLOCK_M + m[None, :]  # [SPLITS, TILE_M]
        lse = tl.load(plse_ptr + rows, mask=live_s[:, None] & live_m[None, :], other=float("-inf"))
        top = tl.max(lse, axis=0)
        top_safe = tl.where(top == float("-inf"), 0.0, top)
        wgt = tl.exp2(lse - top_safe[None, :])
        total = tl.sum(wgt, axis=0)
        if ALL_AT_ONCE:
            # many splits (few rows): every split's output in one round of loads, [SPLITS, TILE_M, D]
            parts = tl.load(po_ptr + rows[:, :, None] * D + d[None, None, :],
                            mask=(live_s[:, None] & live_m[None, :])[:, :, None], other=0.0)
            acc = tl.sum(parts * wgt[:, :, None], axis=0)
        else:
            # few splits (many rows, programs enough): a loop over them is cheaper on registers
            acc = tl.zeros([TILE_M, D], tl.float32)
            for s in range(0, used):
                part = pid * n_split + s
                w_s = tl.exp2(tl.load(plse_ptr + part * BLOCK_M + m, mask=live_m, other=float("-inf")) - top_safe)
                acc += w_s[:, None] * tl.load(po_ptr + (part * BLOCK_M + m)[:, None] * D + d[None, :],
                                              mask=live_m[:, None], other=0.0)
        out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
        head = g * GROUP + m % GROUP
        dst = out_ptr + ((b * 2 * W + tok) * HQ + head)[:, None] * D + d[None, :]
        tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=live_m[:, None])


class StepAttention:
    """The attend/merge pair for one batch size, with its partial-result buffers allocated once.
    Unset arguments take `CONFIGS` (nearest batch size at or below `rows`), or with
    GRAPHRT_STEP_ATTENTION=split (or mode="split") the previous choice."""

    def __init__(self, rows: int, window: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 device: torch.device | str, n_split: int | None = None, block_n: int | None = None,
                 scale: float | None = None, num_warps: int | None = None, merge_rows: int = 64,
                 programs_per_sm: int = 1, split_m: int | None = None, min_chunk: int | None = None,
                 mode: str | None = None, rope: str | None = None):
        self.rows, self.window, self.hq, self.hkv, self.d = rows, window, num_heads, num_kv_heads, head_dim
        self.group = num_heads // num_kv_heads
        self.block_m = max(16, triton.next_power_of_2(2 * window * self.group))
        self.mode = mode or step_attention_mode()
        self.rope = rope or step_rope_mode()  # read by StepKernelRanges.fused
        if self.mode == "split":
            # the previous choice: H100 tuning of 2026-11-24, many rows favour small key blocks
            cfg_bn = 32 if rows >= 8 else 64
            cfg_warps = 4 if rows >= 8 or self.block_m < 128 else 8
            cfg_m = 64 if rows == 1 else self.block_m
            on_gpu = torch.device(device).type == "cuda"
            sms = torch.cuda.get_device_properties(device).multi_processor_count if on_gpu else 8
            cfg_split = max(1, min(64, triton.next_power_of_2(triton.cdiv(programs_per_sm * sms, rows * num_kv_heads))))
            cfg_min = 0
        else:
            cfg_m, cfg_bn, cfg_split, cfg_min, cfg_warps = CONFIGS[max([r for r in CONFIGS if r <= rows] or [min(CONFIGS)])]
        self.block_n = block_n or cfg_bn
        self.split_m = min(split_m or cfg_m, self.block_m)
        self.num_warps = num_warps or cfg_warps
        self.n_split = n_split or cfg_split
        self.min_chunk = triton.cdiv(cfg_min if min_chunk is None else min_chunk, self.block_n) * self.block_n
        self.splits_pow2 = max(2, triton.next_power_of_2(self.n_split))
        # H100: loading every split at once wins at 16+ splits (B=1: 6.3 -> ~3 us per merge) and
        # loses at 4 (B=32: 5.7 -> 19 us); then the merge loops with 16-row tiles.
        self.merge_all = self.n_split >= 16
        # all at once, the merge holds [splits, tile, D] partials in registers: splits * tile = `merge_rows`
        self.tile_m = max(1, min(self.block_m, merge_rows // self.splits_pow2 if self.merge_all else 16))
        self.qk_scale = (scale if scale is not None else head_dim**-0.5) * _LOG2E
        parts = rows * num_kv_heads * self.n_split if self.n_split > 1 else 0
        self.partial_out = torch.empty((max(parts * self.block_m, 1), head_dim), dtype=torch.float32, device=device)
        self.partial_lse = torch.empty((max(parts * self.block_m, 1),), dtype=torch.float32, device=device)

    def describe(self) -> str:
        return (f"{self.mode}, rope {self.rope}: split_m {self.split_m}, block_n {self.block_n}, n_split {self.n_split}, "
                f"min_chunk {self.min_chunk}, warps {self.num_warps}")

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 cache_len: torch.Tensor, pending_count: torch.Tensor) -> torch.Tensor:
        """q [rows*2W, Hq, D] (rotated); k/v_cache [all rows, S, Hkv, D] of one layer, this step's
        K/V already written; cache_len/pending_count [rows] (c and k of each row) -> [rows*2W, Hq, D]."""
        assert q.shape == (self.rows * 2 * self.window, self.hq, self.d) and q.is_contiguous()
        return self._launch(q, k_cache, v_cache, cache_len, pending_count, None)

    def with_rope(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, write_rows: torch.Tensor,
                  write_slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  cache_len: torch.Tensor, pending_count: torch.Tensor) -> torch.Tensor:
        """rope_write + __call__ in the attention's own kernels: qkv [rows*2W, (Hq + 2 Hkv) * D] (the
        projection's output, not rotated), cos/sin [rows*2W, D], write_rows/slots [rows*2W] (where
        each token's K/V goes, as rope_write takes them) -> [rows*2W, Hq, D]; the cache ends up
        holding what rope_write writes."""
        t = self.rows * 2 * self.window
        assert qkv.shape == (t, (self.hq + 2 * self.hkv) * self.d) and qkv.stride(1) == 1
        assert cos.shape == sin.shape == (t, self.d) and cos.stride(1) == 1 and sin.stride() == cos.stride()
        return self._launch(qkv, k_cache, v_cache, cache_len, pending_count, (cos, sin, write_rows, write_slots))

    def _launch(self, q, k_cache, v_cache, cache_len, pending_count, rope):
        b = cache_len.shape[0]
        assert b == self.rows and k_cache.is_contiguous() and v_cache.is_contiguous()
        out = torch.empty((b * 2 * self.window, self.hq, self.d), dtype=q.dtype, device=q.device)
        meta = dict(**pdl.launch(q), HQ=self.hq, HKV=self.hkv, D=self.d, W=self.window, GROUP=self.group, BLOCK_M=self.block_m,
                    BLOCK_N=self.block_n)
        if rope is None:
            rope_args = (q, q, cache_len, cache_len, 0, 0, 0, 0)
        else:
            cos, sin, rows, slots = rope
            rope_args = (cos, sin, rows, slots, q.stride(0), cos.stride(0), rows.stride(0), slots.stride(0))
        _step_split_kernel[(b * self.hkv, self.n_split, self.block_m // self.split_m)](
            q, k_cache, v_cache, cache_len, pending_count, self.partial_out, self.partial_lse, out,
            self.qk_scale, k_cache.stride(0), k_cache.stride(1), self.n_split, self.min_chunk, *rope_args,
            SPLIT_M=self.split_m, ROPE=rope is not None, TOKENS=triton.next_power_of_2(2 * self.window),
            num_warps=self.num_warps, num_stages=2, **meta)
        if self.n_split > 1:
            _step_merge_kernel[(b * self.hkv, self.block_m // self.tile_m)](
                self.partial_out, self.partial_lse, cache_len, pending_count, out, self.n_split, self.min_chunk,
                TILE_M=self.tile_m, SPLITS=self.splits_pow2, ALL_AT_ONCE=self.merge_all, num_warps=4, **meta)
        return out

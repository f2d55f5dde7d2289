"""Prefill attention as a Triton kernel with the varlen contract of capture/varlen.py
(non-causal or causal aligned bottom right, GQA, keys read in place from the flattened KV cache).

Why: at B=1 the 3B prefill (480-token bucket, 16 query heads of 128) spent 1.30 of its 7.08 ms in
torch's FA2 (36 us a layer, ~26 TFLOP/s: 128-row query tiles give 4 x 16 = 64 programs on 132
SMs). Here a program is a 64-row tile of the query heads that share one KV head (GQA packing:
each K/V block is loaded once for the group), key blocks below the causal diagonal run unmasked,
and rows that see no key return zeros, as the contract says. Used by PrefillRanges.fused (the
fused kernel set); GRAPHRT_PREFILL_ATTENTION=varlen keeps the selected varlen kernel (A/B).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import env_choice, triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the varlen kernel is used
    triton = None

# "triton": this kernel where it runs; "varlen": the runtime's varlen kernel (A/B).
MODE = env_choice("GRAPHRT_PREFILL_ATTENTION", ("triton", "varlen"))


class Tiles(NamedTuple):
    """One launch configuration; benchmarks/prefill_attention_tiles.py sweeps them."""
    block_m: int  # query positions per tile (per head)
    block_n: int  # keys per block
    warps: int
    stages: int
    pack: int = 1  # query heads of one KV head per program (divides the GQA group)
    heavy_first: bool = False  # the tiles with the most causal keys launched first


# 64-row tiles of 8 positions x the 3B's GQA group of 8 heads, 32-key blocks, heaviest tiles first: per call
# at B=1 / 8 / 32 (480-query bucket, 457 keys) 10.8 / 32.9 / 114.7 us against 11.4 / 47.1 / 158-163 for
# 64 positions of one head and 64-key blocks, the twelfth pass's tiles (benchmarks/prefill_attention_tiles.py;
# docs/notes.md "Prefill attention: the GQA group in one tile").
TILES = Tiles(8, 32, 4, 3, 8, True)
HEAD_TILES = Tiles(64, 64, 4, 3)  # GRAPHRT_PREFILL_ATTENTION_TILES=head: one head a tile, the tiles before (A/B)


def tiles_for(group: int, tiles=None) -> Tiles:
    """`tiles` as given, else TILES with the pack cut to the largest power of two up to 8 that divides
    the GQA group, positions per tile widened so a tile keeps 64 rows (tl.arange takes powers of two)."""
    if tiles:
        return Tiles(*tiles)
    # read per call (not at import): benchmarks set it around one configuration's graph capture
    if env_choice("GRAPHRT_PREFILL_ATTENTION_TILES", ("group", "head")) == "head":
        return HEAD_TILES
    pack = max(p for p in (1, 2, 4, 8) if p <= TILES.pack and group % p == 0)
    return TILES._replace(pack=pack, block_m=TILES.block_m * TILES.pack // pack)

if triton is not None:

    @triton.jit
    def _key_block(acc, m_i, l_i, q, k_ptr, v_ptr, n0, offs_m, offs_n, d, shift, n_keys, k_stride_t, qk_scale,
                   MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
        cols = n0 + offs_n
        kv = cols.to(tl.int64)[:, None] * k_stride_t + d[None, :]
        if MASK:
            col_ok = cols < n_keys
            k = tl.load(k_ptr + kv, mask=col_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptr + kv)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # log2 units: exp2 below
        if MASK:
            ok = col_ok[None, :]
            if CAUSAL:
                seen = cols[None, :] <= shift + offs_m[:, None]
                if WINDOW:  # the segment's last WINDOW rows: every key but the last prompt token
                    in_window = offs_m[:, None] >= n_keys - shift - WINDOW  # row >= nq - WINDOW
                    seen = tl.where(in_window, cols[None, :] != n_keys - WINDOW - 1, seen)
                ok = ok & seen
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet stay at zero weight
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK:
            v = tl.load(v_ptr + kv, mask=col_ok[:, None], other=0.0)
        else:
            v = tl.load(v_ptr + kv)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, m_new, l_i

    @triton.jit
    def _prefill_kernel(q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, cu_k_ptr, used_ptr, qk_scale,
                        q_stride_t, q_stride_h, k_stride_t, k_stride_h, o_stride_t, o_stride_h,
                        HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr,
                        WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACK: tl.constexpr,
                        HEAVY_FIRST: tl.constexpr):
        # Program (query tile, segment * head pack). Segment b: queries cu_q[b] .. cu_q[b+1],
        # keys cu_k[b] .. cu_k[b] + used[b]; causal: query i sees keys j <= used - nq + i.
        # WINDOW > 0 (causal, a merged first round): the last WINDOW queries of each segment are
        # its MTP window, whose K/V are the last WINDOW keys: they see every key but
        # j = used - WINDOW - 1 (the last prompt token, which the window's first query repeats).
        # PACK query heads of one KV head share a program (GQA packing): its tile stacks the same
        # BLOCK_M positions of PACK heads, so each K/V block is loaded once for all of them.
        # HEAVY_FIRST: grid axis 0 walks the heads and axis 1 the query tiles from the last (the
        # most causal keys) to the first, so the longest programs start in the first wave.
        if HEAVY_FIRST:
            bh = tl.program_id(0)
            pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
        else:
            pid_m = tl.program_id(0)
            bh = tl.program_id(1)
        b = bh // (HQ // PACK)
        h0 = bh % (HQ // PACK) * PACK
        q0 = tl.load(cu_q_ptr + b).to(tl.int64)
        nq = tl.load(cu_q_ptr + b + 1).to(tl.int64) - q0
        k0 = tl.load(cu_k_ptr + b).to(tl.int64)
        n_keys = tl.load(used_ptr + b).to(tl.int64)
        first = pid_m * BLOCK_M
        r = tl.arange(0, PACK * BLOCK_M)
        offs_m = first + r % BLOCK_M  # each tile row's query position; its head is h0 + r // BLOCK_M
        heads = h0 + r // BLOCK_M
        offs_n = tl.arange(0, BLOCK_N)
        d = tl.arange(0, D)
        m_ok = offs_m < nq
        shift = n_keys - nq
        if CAUSAL:
            hi = tl.minimum(n_keys, shift + first + BLOCK_M)  # past the tile's last row: unseen
            full = shift + first + 1  # keys below it are seen by every row of the tile
            if WINDOW:  # a tile with window rows reads every key; the hidden one is in a masked block
                hi = tl.where(first + BLOCK_M > nq - WINDOW, n_keys, hi)
                full = tl.minimum(full, n_keys - WINDOW - 1)
        else:
            hi = n_keys
            full = n_keys
        # Both bounds clamped to 0 before rounding: a negative bound (pad rows that see no key)
        # must not round down to a negative block start.
        hi = tl.where(first < nq, tl.maximum(hi, 0), 0)  # a tile past the segment: no keys, no writes
        full = tl.minimum(tl.maximum(full, 0), hi) // BLOCK_N * BLOCK_N
        q = tl.load(q_ptr + (q0 + offs_m)[:, None] * q_stride_t + heads[:, None] * q_stride_h + d[None, :],
                    mask=m_ok[:, None], other=0.0)
        k_ptr = k_ptr + k0 * k_stride_t + (h0 // GROUP) * k_stride_h
        v_ptr = v_ptr + k0 * k_stride_t + (h0 // GROUP) * k_stride_h
        m_i = tl.full([PACK * BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([PACK * BLOCK_M], tl.float32)
        acc = tl.zeros([PACK * BLOCK_M, D], tl.float32)
        for n0 in range(0, full, BLOCK_N):
            acc, m_i, l_i = _key_block(acc, m_i, l_i, q, k_ptr, v_ptr, n0, offs_m, offs_n, d, shift, n_keys,
                                       k_stride_t, qk_scale, False, CAUSAL, WINDOW)
        for n0 in range(full, hi, BLOCK_N):
            acc, m_i, l_i = _key_block(acc, m_i, l_i, q, k_ptr, v_ptr, n0, offs_m, offs_n, d, shift, n_keys,
                                       k_stride_t, qk_scale, True, CAUSAL, WINDOW)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # no key seen: zeros
        tl.store(o_ptr + (q0 + offs_m)[:, None] * o_stride_t + heads[:, None] * o_stride_h + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])


def runs(q: torch.Tensor) -> bool:
    """Whether the kernel runs for these queries here: Triton on their device, a power-of-two head
    dim of at least 16 (tensor-core dots; the interpreter takes any power of two)."""
    d = q.shape[-1]
    return (triton is not None and triton_runs_on(q) and d & (d - 1) == 0
            and (d >= 16 or not q.is_cuda))


def prefill_attention(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k, causal, scale=None, return_lse=False, tiles=None,
                      window: int = 0):
    """The varlen contract (capture/varlen.py) without the log-sum-exp output. `window` > 0 (with
    causal): the first MTP round inside a prefill, the last `window` queries and keys of each
    segment are its window; those queries see every key of the segment but key used - window - 1
    (the last prompt token, which the window's first query repeats), the others are causal."""
    if return_lse:
        raise NotImplementedError("prefill_attention returns no log-sum-exp")
    if window and not causal:
        raise ValueError("the window rows follow a causal prompt")
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or k.stride() != v.stride():
        raise ValueError("prefill_attention needs unit-stride head dims and K/V of the same layout")
    t = tiles_for(hq // hkv, tiles)
    if (hq // hkv) % t.pack:
        raise ValueError(f"a pack of {t.pack} query heads does not divide the GQA group of {hq // hkv}")
    out = torch.empty(total_q, hq, d, device=q.device, dtype=q.dtype)
    qk_scale = (scale if scale is not None else d ** -0.5) * 1.4426950408889634  # log2(e)
    grid = (triton.cdiv(max_q, t.block_m), (cu_q.numel() - 1) * hq // t.pack)
    if t.heavy_first:
        grid = grid[::-1]
    _prefill_kernel[grid](q, k, v, out, cu_q, cu_k, seqused_k, qk_scale, q.stride(0), q.stride(1), k.stride(0),
                          k.stride(1), out.stride(0), out.stride(1), HQ=hq, GROUP=hq // hkv, D=d, CAUSAL=causal,
                          WINDOW=window, BLOCK_M=t.block_m, BLOCK_N=t.block_n, PACK=t.pack,
                          HEAVY_FIRST=t.heavy_first, num_warps=t.warps, num_stages=t.stages)
    return out


def kernel_for(q: torch.Tensor, fallback):
    """This kernel where it runs and MODE asks for it, else `fallback` (the runtime's varlen kernel)."""
    return prefill_attention if MODE == "triton" and runs(q) else fallback

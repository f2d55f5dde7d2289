"""The vision tower's attention as Hopper Gluon kernels: async wgmma, TMA rings, warp specialization.

Same contract as `vision_attention.vision_attention` (full attention inside each image of the packed,
RoPE-turned [N, 3, H, D] qkv; image b at rows cu[b] with used[b] real rows; slot or packed outputs;
a fixed grid, so CUDA graphs replay it while the lengths change; blocks of pad queries write zeros).
Three schedules of what plain Triton 3.6 does not generate (tiles[4], "consumers"):

- 0, one partition: K/V of full key blocks through TMA into a ring of STAGES slots (a K and a V
  mbarrier each); q.k of block j+1 issued (async) before the softmax of block j; P.V of block j in
  flight across the softmax of block j+1 (FA3's intra-warpgroup overlap).
- 1 or 2, warp-specialized: one TMA warp fills the ring (released through `kv_empty` mbarriers),
  one or two consumer partitions run the schedule above, registers moved to them (setmaxnreg).
- 3, ping-pong (FA3's inter-warpgroup schedule): two consumer warpgroups take turns (two mbarriers)
  to issue their q.k of block j+1 together with their P.V of block j, so one warpgroup's softmax
  runs while the other's MMAs do.

All: online softmax in exp2 with the scale folded into one FMA per logit. Head 72 is computed as a
64- and a 16-column block (QK: K = 64 + 16; PV: N = 64 + 16): wgmma's K step for bf16 is 16, so QK
needs 80 columns either way, and a 16-column tile keeps every shared tile on a clean swizzle (one
72- or 80-column tile is 144/160 bytes a row: no 128-byte swizzle, bank conflicts on every wgmma
read; TMA boxes of 128-byte swizzle are at most 128 bytes wide). The 8 extra columns read the next
head (or, past the row end, TMA's zero fill); they meet zero columns of q (QK) or land in output
columns never stored (PV). The last, partial key block is read with masked pointer loads (rows past
used[b] may be another image or poisoned pad rows: a NaN in V would survive P = 0).

Measured on the H100 (docs/notes.md, gattn section): correct everywhere; faster than the Triton
kernel only at one-wave grids (B=1 of 1,680 rows, ping-pong 2 x 128 rows: 5.6%), 6-13% slower at
B=32 and at 25,600 patches. So GRAPHRT_VISION_ATTENTION_KERNEL=auto (the default) runs it only where
`one_wave` holds (tower B=1 4.491 -> 4.416 ms, docs/notes.md vgemm section); =ws everywhere.

Gluon's API changes between Triton releases: this module imports it lazily (`load()`), written
against Triton 3.6 (the device's); elsewhere `load()` returns None with the reason in `UNAVAILABLE`.
"""

from __future__ import annotations

import torch

UNAVAILABLE: str | None = None
_KERNEL = None
LAST_COMPILED: dict = {}

# (block_m, block_n, num_warps, stages, consumers). consumers 0: one partition of num_warps warps does
# everything (TMA issue included); 1 or 2: warp-specialized, block_m rows split over that many consumer
# partitions of num_warps warps each, plus one TMA warp; 3: two consumers taking turns at the tensor
# cores (FA3's ping-pong; the P.V of block j issued with the q.k of block j+1).
# Measured on the H100 (docs/notes.md, gattn): ping-pong with 2 x 128 rows wins where the grid is one
# wave (B=1 of 1,680 rows: 5.6% faster than the Triton kernel), 2 x 64 rows elsewhere (still 6-13% slower).
TILES = (128, 64, 4, 3, 3)
TILES_ONE_WAVE = (256, 64, 4, 2, 3)
CONSUMER_REGS = 240  # setmaxnreg of the consumer warpgroups (the TMA warp gets 24)


def _build():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_init,
        warpgroup_mma_wait,
    )

    # the JIT resolves names (annotations, helpers) in this module's globals: bind them here, lazily
    globals().update(gluon=gluon, gl=gl, fence_async_shared=fence_async_shared, mbarrier=mbarrier, tma=tma,
                     warpgroup_mma=warpgroup_mma, warpgroup_mma_init=warpgroup_mma_init,
                     warpgroup_mma_wait=warpgroup_mma_wait)

    @gluon.jit
    def _request_kv(desc_lo, desc_hi, k_lo, k_hi, v_lo, v_hi, k_bar, v_bar, blk, n_full, row0, k_col, v_col,
                    BLOCK_N: gl.constexpr, D_LO: gl.constexpr, D_HI: gl.constexpr, STAGES: gl.constexpr):
        # TMA copies of key block `blk` (if it is a full block) into ring slot blk % STAGES.
        s = blk % STAGES
        ok = blk < n_full
        row = row0 + blk * BLOCK_N
        nbytes: gl.constexpr = BLOCK_N * (D_LO + D_HI) * 2
        mbarrier.expect(k_bar.index(s), nbytes, pred=ok)
        tma.async_copy_global_to_shared(desc_lo, [row, k_col], k_bar.index(s), k_lo.index(s), pred=ok)
        tma.async_copy_global_to_shared(desc_hi, [row, k_col + D_LO], k_bar.index(s), k_hi.index(s), pred=ok)
        mbarrier.expect(v_bar.index(s), nbytes, pred=ok)
        tma.async_copy_global_to_shared(desc_lo, [row, v_col], v_bar.index(s), v_lo.index(s), pred=ok)
        tma.async_copy_global_to_shared(desc_hi, [row, v_col + D_LO], v_bar.index(s), v_hi.index(s), pred=ok)

    @gluon.jit
    def _softmax_block(s, m_i, l_i, qk_scale):
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * qk_scale - m_new[:, None])
        return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)

    @gluon.jit
    def _partial_block(ql, qh, kt_lo, kt_hi, vt_lo, vt_hi, s_zero, acc_lo, acc_hi, m_i, l_i, n0, keys, qk_scale,
                       BLOCK_N: gl.constexpr):
        """One online-softmax step over the last, partial key block (columns past `keys` at -inf);
        its K/V tiles were loaded masked, so pad or poisoned rows never reach the MMA."""
        s_layout: gl.constexpr = s_zero.type.layout
        lo_layout: gl.constexpr = acc_lo.type.layout
        hi_layout: gl.constexpr = acc_hi.type.layout
        s_tok = warpgroup_mma(ql, kt_lo.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_tok = warpgroup_mma(qh, kt_hi.permute((1, 0)), s_tok, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s_tok, ))
        cols = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        s = gl.where((cols < keys)[None, :], s, float("-inf"))
        p, alpha, m_i, l_i = _softmax_block(s, m_i, l_i, qk_scale)
        acc_lo = acc_lo * gl.convert_layout(alpha, gl.SliceLayout(1, lo_layout))[:, None]
        acc_hi = acc_hi * gl.convert_layout(alpha, gl.SliceLayout(1, hi_layout))[:, None]
        pb = p.to(ql.dtype)
        p_lo = gl.convert_layout(pb, gl.DotOperandLayout(operand_index=0, parent=lo_layout, k_width=2))
        p_hi = gl.convert_layout(pb, gl.DotOperandLayout(operand_index=0, parent=hi_layout, k_width=2))
        a_lo = warpgroup_mma(p_lo, vt_lo, acc_lo, is_async=True)
        a_hi = warpgroup_mma(p_hi, vt_hi, acc_hi, is_async=True)
        acc_lo, acc_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))
        return acc_lo, acc_hi, l_i

    @gluon.jit
    def _store_out(acc_lo, acc_hi, l_i, row_base, start, q_lim, h, out_ptr, rs_ptr, inv_ptr, scale_ptr,
                   HEADS: gl.constexpr, D: gl.constexpr, D_LO: gl.constexpr, D_HI: gl.constexpr,
                   ROWS: gl.constexpr, QUANT: gl.constexpr, DTYPE: gl.constexpr):
        """Normalize the ROWS query rows from row_base and store them (no key, used = 0: zeros, as
        the varlen contract says); QUANT: wo's e4m3 input by calib/quantize.py's static rule, and
        head 0 writes the rows' scales."""
        lo_layout: gl.constexpr = acc_lo.type.layout
        hi_layout: gl.constexpr = acc_hi.type.layout
        inv = 1.0 / gl.where(l_i > 0, l_i, 1.0)
        o_lo = acc_lo * gl.convert_layout(inv, gl.SliceLayout(1, lo_layout))[:, None]
        o_hi = acc_hi * gl.convert_layout(inv, gl.SliceLayout(1, hi_layout))[:, None]
        om_lo = row_base + gl.arange(0, ROWS, layout=gl.SliceLayout(1, lo_layout))
        om_hi = row_base + gl.arange(0, ROWS, layout=gl.SliceLayout(1, hi_layout))
        od_lo = gl.arange(0, D_LO, layout=gl.SliceLayout(0, lo_layout))
        od_hi = D_LO + gl.arange(0, D_HI, layout=gl.SliceLayout(0, hi_layout))
        o_row_lo = (start.to(gl.int64) + om_lo.to(gl.int64)) * (HEADS * D) + h * D
        o_row_hi = (start.to(gl.int64) + om_hi.to(gl.int64)) * (HEADS * D) + h * D
        ok_lo = (om_lo < q_lim)[:, None]
        ok_hi = (om_hi < q_lim)[:, None] & (od_hi < D)[None, :]
        o_lo = o_lo.to(DTYPE)  # rounded to qkv's dtype first, as the bf16 path stores it
        o_hi = o_hi.to(DTYPE)
        if QUANT:
            qs = gl.load(inv_ptr)
            o_lo = gl.minimum(gl.maximum(o_lo.to(gl.float32) * qs, -448.0), 448.0)
            o_hi = gl.minimum(gl.maximum(o_hi.to(gl.float32) * qs, -448.0), 448.0)
            if h == 0:
                gl.store(rs_ptr + start.to(gl.int64) + om_lo.to(gl.int64),
                         gl.zeros([ROWS], gl.float32, layout=gl.SliceLayout(1, lo_layout)) + gl.load(scale_ptr),
                         mask=om_lo < q_lim)
        gl.store(out_ptr + o_row_lo[:, None] + od_lo[None, :], o_lo.to(out_ptr.dtype.element_ty), mask=ok_lo)
        gl.store(out_ptr + o_row_hi[:, None] + od_hi[None, :], o_hi.to(out_ptr.dtype.element_ty), mask=ok_hi)

    @gluon.jit
    def _attention_kernel(qkv_ptr, desc_lo, desc_hi, out_ptr, cu_ptr, used_ptr, slot, qk_scale,
                          rs_ptr, inv_ptr, scale_ptr,
                          HEADS: gl.constexpr, D: gl.constexpr, D_LO: gl.constexpr, D_HI: gl.constexpr,
                          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                          PACKED: gl.constexpr, QUANT: gl.constexpr, num_warps: gl.constexpr):
        # Program (query block, image * head), as the Triton kernel: blocks of pad queries only get
        # zeros (no key loop); slots write every row of the slot, packed only real rows.
        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // HEADS
        h = bh % HEADS
        start = gl.load(cu_ptr + b)
        n_keys = gl.load(used_ptr + b)
        ROW: gl.constexpr = 3 * HEADS * D
        k_col = HEADS * D + h * D
        v_col = k_col + HEADS * D
        dtype: gl.constexpr = qkv_ptr.dtype.element_ty

        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        lo_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                            instr_shape=[16, D_LO, 16])
        hi_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                            instr_shape=[16, D_HI, 16])
        p_lo_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=lo_layout, k_width=2)
        p_hi_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=hi_layout, k_width=2)
        ld_lo: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (D_LO // 8), D_LO // 8], [num_warps, 1], [1, 0])
        ld_hi: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (D_HI // 8), D_HI // 8], [num_warps, 1], [1, 0])

        # q tile -> shared (zero past the image / the slot, zero in the 8 pad columns of the head)
        q_lim = n_keys if PACKED else slot
        qm_lo = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld_lo))
        qd_lo = gl.arange(0, D_LO, layout=gl.SliceLayout(0, ld_lo))
        qm_hi = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld_hi))
        qd_hi = D_LO + gl.arange(0, D_HI, layout=gl.SliceLayout(0, ld_hi))
        q_row_lo = (start.to(gl.int64) + qm_lo.to(gl.int64)) * ROW + h * D
        q_row_hi = (start.to(gl.int64) + qm_hi.to(gl.int64)) * ROW + h * D
        q_lo = gl.load(qkv_ptr + q_row_lo[:, None] + qd_lo[None, :], mask=(qm_lo < q_lim)[:, None], other=0.0)
        q_hi = gl.load(qkv_ptr + q_row_hi[:, None] + qd_hi[None, :],
                       mask=(qm_hi < q_lim)[:, None] & (qd_hi < D)[None, :], other=0.0)
        q_lo_s = gl.allocate_shared_memory(dtype, [BLOCK_M, D_LO], desc_lo.layout, q_lo)
        q_hi_s = gl.allocate_shared_memory(dtype, [BLOCK_M, D_HI], desc_hi.layout, q_hi)

        k_lo = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_LO], desc_lo.layout)
        k_hi = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_HI], desc_hi.layout)
        v_lo = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_LO], desc_lo.layout)
        v_hi = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_HI], desc_hi.layout)
        k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(k_bar.index(i), count=1)
            mbarrier.init(v_bar.index(i), count=1)
        fence_async_shared()

        keys = gl.where(pid_m * BLOCK_M < n_keys, n_keys, 0)  # a block of pad queries only: no keys
        n_full = keys // BLOCK_N
        for i in gl.static_range(STAGES - 1):
            _request_kv(desc_lo, desc_hi, k_lo, k_hi, v_lo, v_hi, k_bar, v_bar, i, n_full, start, k_col, v_col,
                        BLOCK_N, D_LO, D_HI, STAGES)

        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc_lo = gl.zeros([BLOCK_M, D_LO], gl.float32, layout=lo_layout)
        acc_hi = gl.zeros([BLOCK_M, D_HI], gl.float32, layout=hi_layout)
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)

        if n_full > 0:
            mbarrier.wait(k_bar.index(0), 0)
            s_tok = warpgroup_mma(q_lo_s, k_lo.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s_tok = warpgroup_mma(q_hi_s, k_hi.index(0).permute((1, 0)), s_tok, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s_tok, ))
            a_lo = warpgroup_mma_init(acc_lo)
            a_hi = warpgroup_mma_init(acc_hi)
            for j in range(n_full - 1):
                # q.k of block j+1 goes to the tensor cores before the softmax of block j
                nxt = (j + 1) % STAGES
                mbarrier.wait(k_bar.index(nxt), ((j + 1) // STAGES) & 1)
                s_next = warpgroup_mma(q_lo_s, k_lo.index(nxt).permute((1, 0)), s_zero, use_acc=False,
                                       is_async=True)
                s_next = warpgroup_mma(q_hi_s, k_hi.index(nxt).permute((1, 0)), s_next, is_async=True)
                m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
                alpha = gl.exp2(m_i - m_new)
                p = gl.exp2(s * qk_scale - m_new[:, None])
                l_i = l_i * alpha + gl.sum(p, 1)
                m_i = m_new
                # P.V of block j-1 retired (the two q.k groups may still run): its ring slot is free
                r_lo, r_hi = warpgroup_mma_wait(2, deps=(a_lo, a_hi))
                _request_kv(desc_lo, desc_hi, k_lo, k_hi, v_lo, v_hi, k_bar, v_bar, j + STAGES - 1, n_full, start,
                            k_col, v_col, BLOCK_N, D_LO, D_HI, STAGES)
                r_lo = r_lo * gl.convert_layout(alpha, gl.SliceLayout(1, lo_layout))[:, None]
                r_hi = r_hi * gl.convert_layout(alpha, gl.SliceLayout(1, hi_layout))[:, None]
                pb = p.to(dtype)
                cur = j % STAGES
                mbarrier.wait(v_bar.index(cur), (j // STAGES) & 1)
                a_lo = warpgroup_mma(gl.convert_layout(pb, p_lo_layout), v_lo.index(cur), r_lo, is_async=True)
                a_hi = warpgroup_mma(gl.convert_layout(pb, p_hi_layout), v_hi.index(cur), r_hi, is_async=True)
                s = warpgroup_mma_wait(2, deps=(s_next, ))  # q.k of block j+1 done; P.V of block j runs on
            last = n_full - 1
            m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(s * qk_scale - m_new[:, None])
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new
            r_lo, r_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))
            r_lo = r_lo * gl.convert_layout(alpha, gl.SliceLayout(1, lo_layout))[:, None]
            r_hi = r_hi * gl.convert_layout(alpha, gl.SliceLayout(1, hi_layout))[:, None]
            pb = p.to(dtype)
            cur = last % STAGES
            mbarrier.wait(v_bar.index(cur), (last // STAGES) & 1)
            a_lo = warpgroup_mma(gl.convert_layout(pb, p_lo_layout), v_lo.index(cur), r_lo, is_async=True)
            a_hi = warpgroup_mma(gl.convert_layout(pb, p_hi_layout), v_hi.index(cur), r_hi, is_async=True)
            acc_lo, acc_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))

        n0 = n_full * BLOCK_N
        if n0 < keys:  # the last, partial block: masked pointer loads into ring slot 0 (idle by now)
            km_lo = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld_lo))
            km_hi = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld_hi))
            kr_lo = (start.to(gl.int64) + km_lo.to(gl.int64)) * ROW
            kr_hi = (start.to(gl.int64) + km_hi.to(gl.int64)) * ROW
            ok_lo = (km_lo < keys)[:, None]
            ok_hi = (km_hi < keys)[:, None] & (qd_hi < D)[None, :]
            k_lo.index(0).store(gl.load(qkv_ptr + kr_lo[:, None] + k_col + qd_lo[None, :], mask=ok_lo, other=0.0))
            k_hi.index(0).store(gl.load(qkv_ptr + kr_hi[:, None] + k_col + qd_hi[None, :], mask=ok_hi, other=0.0))
            v_lo.index(0).store(gl.load(qkv_ptr + kr_lo[:, None] + v_col + qd_lo[None, :], mask=ok_lo, other=0.0))
            v_hi.index(0).store(gl.load(qkv_ptr + kr_hi[:, None] + v_col + qd_hi[None, :], mask=ok_hi, other=0.0))
            fence_async_shared()
            gl.thread_barrier()
            s_tok = warpgroup_mma(q_lo_s, k_lo.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s_tok = warpgroup_mma(q_hi_s, k_hi.index(0).permute((1, 0)), s_tok, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s_tok, ))
            cols = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            s = gl.where((cols < keys)[None, :], s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(s * qk_scale - m_new[:, None])
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new
            acc_lo = acc_lo * gl.convert_layout(alpha, gl.SliceLayout(1, lo_layout))[:, None]
            acc_hi = acc_hi * gl.convert_layout(alpha, gl.SliceLayout(1, hi_layout))[:, None]
            pb = p.to(dtype)
            a_lo = warpgroup_mma(gl.convert_layout(pb, p_lo_layout), v_lo.index(0), acc_lo, is_async=True)
            a_hi = warpgroup_mma(gl.convert_layout(pb, p_hi_layout), v_hi.index(0), acc_hi, is_async=True)
            acc_lo, acc_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))

        for i in gl.static_range(STAGES):
            mbarrier.invalidate(k_bar.index(i))
            mbarrier.invalidate(v_bar.index(i))

        # normalize and store (no key, used = 0: zeros, as the varlen contract says)
        _store_out(acc_lo, acc_hi, l_i, pid_m * BLOCK_M, start, q_lim, h, out_ptr, rs_ptr, inv_ptr, scale_ptr,
                   HEADS, D, D_LO, D_HI, BLOCK_M, QUANT, dtype)


    # ---- warp-specialized (FA3's structure): one TMA warp, two consumer warpgroups ----

    @gluon.jit
    def _ws_loader(desc_lo, desc_hi, k_lo, k_hi, v_lo, v_hi, k_ready, v_ready, kv_empty, n_full, start, k_col,
                   v_col, BLOCK_N: gl.constexpr, D_LO: gl.constexpr, D_HI: gl.constexpr, STAGES: gl.constexpr):
        # Fills the ring: block blk into slot blk % STAGES once both consumers released it.
        nbytes: gl.constexpr = BLOCK_N * (D_LO + D_HI) * 2
        for blk in range(n_full):
            s = blk % STAGES
            mbarrier.wait(kv_empty.index(s), ((blk // STAGES) & 1) ^ 1)  # fresh barrier: passes at once
            row = start + blk * BLOCK_N
            mbarrier.expect(k_ready.index(s), nbytes)
            tma.async_copy_global_to_shared(desc_lo, [row, k_col], k_ready.index(s), k_lo.index(s))
            tma.async_copy_global_to_shared(desc_hi, [row, k_col + D_LO], k_ready.index(s), k_hi.index(s))
            mbarrier.expect(v_ready.index(s), nbytes)
            tma.async_copy_global_to_shared(desc_lo, [row, v_col], v_ready.index(s), v_lo.index(s))
            tma.async_copy_global_to_shared(desc_hi, [row, v_col + D_LO], v_ready.index(s), v_hi.index(s))

    @gluon.jit
    def _ws_consumer(half, q_lo_s, q_hi_s, k_lo, k_hi, v_lo, v_hi, kt_lo, kt_hi, vt_lo, vt_hi, k_ready, v_ready,
                     kv_empty, out_ptr, start, keys, q_lim, row0, h, qk_scale, rs_ptr, inv_ptr, scale_ptr,
                     HEADS: gl.constexpr, D: gl.constexpr, D_LO: gl.constexpr, D_HI: gl.constexpr,
                     QM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, QUANT: gl.constexpr,
                     WARPS: gl.constexpr):
        # One warpgroup's QM query rows (row0 + half * QM ...) over all key blocks: q.k of block j+1
        # issued before the softmax of block j, P.V of block j in flight across the softmax of j+1.
        dtype: gl.constexpr = q_lo_s.dtype
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        lo_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                            instr_shape=[16, D_LO, 16])
        hi_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                            instr_shape=[16, D_HI, 16])
        p_lo_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=lo_layout, k_width=2)
        p_hi_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=hi_layout, k_width=2)
        ql = q_lo_s.index(half)
        qh = q_hi_s.index(half)
        n_full = keys // BLOCK_N
        m_i = gl.full([QM], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([QM], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc_lo = gl.zeros([QM, D_LO], gl.float32, layout=lo_layout)
        acc_hi = gl.zeros([QM, D_HI], gl.float32, layout=hi_layout)
        s_zero = gl.zeros([QM, BLOCK_N], gl.float32, layout=s_layout)
        if n_full > 0:
            mbarrier.wait(k_ready.index(0), 0)
            s_tok = warpgroup_mma(ql, k_lo.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s_tok = warpgroup_mma(qh, k_hi.index(0).permute((1, 0)), s_tok, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s_tok, ))
            a_lo = warpgroup_mma_init(acc_lo)
            a_hi = warpgroup_mma_init(acc_hi)
            for j in range(n_full - 1):
                nxt = (j + 1) % STAGES
                mbarrier.wait(k_ready.index(nxt), ((j + 1) // STAGES) & 1)
                s_next = warpgroup_mma(ql, k_lo.index(nxt).permute((1, 0)), s_zero, use_acc=False, is_async=True)
                s_next = warpgroup_mma(qh, k_hi.index(nxt).permute((1, 0)), s_next, is_async=True)
                m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
                alpha = gl.exp2(m_i - m_new)
                p = gl.exp2(s * qk_scale - m_new[:, None])
                l_i = l_i * alpha + gl.sum(p, 1)
                m_i = m_new
                r_lo, r_hi = warpgroup_mma_wait(2, deps=(a_lo, a_hi))  # P.V of block j-1 retired
                mbarrier.arrive(kv_empty.index((j + STAGES - 1) % STAGES), pred=j > 0)
                r_lo = r_lo * gl.convert_layout(alpha, gl.SliceLayout(1, lo_layout))[:, None]
                r_hi = r_hi * gl.convert_layout(alpha, gl.SliceLayout(1, hi_layout))[:, None]
                pb = p.to(dtype)
                cur = j % STAGES
                mbarrier.wait(v_ready.index(cur), (j // STAGES) & 1)
                a_lo = warpgroup_mma(gl.convert_layout(pb, p_lo_layout), v_lo.index(cur), r_lo, is_async=True)
                a_hi = warpgroup_mma(gl.convert_layout(pb, p_hi_layout), v_hi.index(cur), r_hi, is_async=True)
                s = warpgroup_mma_wait(2, deps=(s_next, ))
            last = n_full - 1
            m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(s * qk_scale - m_new[:, None])
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new
            r_lo, r_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))
            r_lo = r_lo * gl.convert_layout(alpha, gl.SliceLayout(1, lo_layout))[:, None]
            r_hi = r_hi * gl.convert_layout(alpha, gl.SliceLayout(1, hi_layout))[:, None]
            pb = p.to(dtype)
            cur = last % STAGES
            mbarrier.wait(v_ready.index(cur), (last // STAGES) & 1)
            a_lo = warpgroup_mma(gl.convert_layout(pb, p_lo_layout), v_lo.index(cur), r_lo, is_async=True)
            a_hi = warpgroup_mma(gl.convert_layout(pb, p_hi_layout), v_hi.index(cur), r_hi, is_async=True)
            acc_lo, acc_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))
        n0 = n_full * BLOCK_N
        if n0 < keys:  # the partial block, loaded (masked) before the partitions split
            acc_lo, acc_hi, l_i = _partial_block(ql, qh, kt_lo, kt_hi, vt_lo, vt_hi, s_zero, acc_lo, acc_hi, m_i, l_i,
                                                 n0, keys, qk_scale, BLOCK_N)
        _store_out(acc_lo, acc_hi, l_i, row0 + half * QM, start, q_lim, h, out_ptr, rs_ptr, inv_ptr, scale_ptr,
                   HEADS, D, D_LO, D_HI, QM, QUANT, dtype)

    @gluon.jit
    def _pp_consumer(half, q_lo_s, q_hi_s, k_lo, k_hi, v_lo, v_hi, kt_lo, kt_hi, vt_lo, vt_hi, k_ready, v_ready,
                     kv_empty, turn, out_ptr, start, keys, q_lim, row0, h, qk_scale, rs_ptr, inv_ptr, scale_ptr,
                     HEADS: gl.constexpr, D: gl.constexpr, D_LO: gl.constexpr, D_HI: gl.constexpr,
                     QM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, QUANT: gl.constexpr,
                     WARPS: gl.constexpr):
        # FA3's ping-pong: the two warpgroups take turns (mbarriers `turn`) to issue their q.k of block
        # j+1 and P.V of block j, so one warpgroup's softmax runs while the other's MMAs run.
        dtype: gl.constexpr = q_lo_s.dtype
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        lo_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                            instr_shape=[16, D_LO, 16])
        hi_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                            instr_shape=[16, D_HI, 16])
        p_lo_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=lo_layout, k_width=2)
        p_hi_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=hi_layout, k_width=2)
        ql = q_lo_s.index(half)
        qh = q_hi_s.index(half)
        mine = turn.index(half)
        other = turn.index(1 - half)
        n_full = keys // BLOCK_N
        m_i = gl.full([QM], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([QM], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc_lo = gl.zeros([QM, D_LO], gl.float32, layout=lo_layout)
        acc_hi = gl.zeros([QM, D_HI], gl.float32, layout=hi_layout)
        s_zero = gl.zeros([QM, BLOCK_N], gl.float32, layout=s_layout)
        if n_full > 0:
            mbarrier.wait(k_ready.index(0), 0)
            mbarrier.wait(mine, half ^ 1)  # turn 0: warpgroup 0 first
            s_tok = warpgroup_mma(ql, k_lo.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s_tok = warpgroup_mma(qh, k_hi.index(0).permute((1, 0)), s_tok, is_async=True)
            mbarrier.arrive(other)
            s = warpgroup_mma_wait(0, deps=(s_tok, ))
            p, alpha, m_i, l_i = _softmax_block(s, m_i, l_i, qk_scale)
            for j in range(n_full - 1):
                nxt = (j + 1) % STAGES
                cur = j % STAGES
                mbarrier.wait(k_ready.index(nxt), ((j + 1) // STAGES) & 1)
                mbarrier.wait(v_ready.index(cur), (j // STAGES) & 1)
                pb = p.to(dtype)
                p_lo = gl.convert_layout(pb, p_lo_layout)
                p_hi = gl.convert_layout(pb, p_hi_layout)
                mbarrier.wait(mine, ((j + 1) & 1) ^ half ^ 1)
                s_next = warpgroup_mma(ql, k_lo.index(nxt).permute((1, 0)), s_zero, use_acc=False, is_async=True)
                s_next = warpgroup_mma(qh, k_hi.index(nxt).permute((1, 0)), s_next, is_async=True)
                a_lo = warpgroup_mma(p_lo, v_lo.index(cur), acc_lo, is_async=True)
                a_hi = warpgroup_mma(p_hi, v_hi.index(cur), acc_hi, is_async=True)
                mbarrier.arrive(other)
                s = warpgroup_mma_wait(2, deps=(s_next, ))
                p, alpha, m_i, l_i = _softmax_block(s, m_i, l_i, qk_scale)
                acc_lo, acc_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))
                mbarrier.arrive(kv_empty.index(cur))
                acc_lo = acc_lo * gl.convert_layout(alpha, gl.SliceLayout(1, lo_layout))[:, None]
                acc_hi = acc_hi * gl.convert_layout(alpha, gl.SliceLayout(1, hi_layout))[:, None]
            last = n_full - 1
            cur = last % STAGES
            mbarrier.wait(v_ready.index(cur), (last // STAGES) & 1)
            pb = p.to(dtype)
            p_lo = gl.convert_layout(pb, p_lo_layout)
            p_hi = gl.convert_layout(pb, p_hi_layout)
            mbarrier.wait(mine, ((last + 1) & 1) ^ half ^ 1)
            a_lo = warpgroup_mma(p_lo, v_lo.index(cur), acc_lo, is_async=True)
            a_hi = warpgroup_mma(p_hi, v_hi.index(cur), acc_hi, is_async=True)
            mbarrier.arrive(other)
            acc_lo, acc_hi = warpgroup_mma_wait(0, deps=(a_lo, a_hi))
        n0 = n_full * BLOCK_N
        if n0 < keys:  # the partial block, loaded (masked) before the partitions split
            acc_lo, acc_hi, l_i = _partial_block(ql, qh, kt_lo, kt_hi, vt_lo, vt_hi, s_zero, acc_lo, acc_hi, m_i, l_i,
                                                 n0, keys, qk_scale, BLOCK_N)
        _store_out(acc_lo, acc_hi, l_i, row0 + half * QM, start, q_lim, h, out_ptr, rs_ptr, inv_ptr, scale_ptr,
                   HEADS, D, D_LO, D_HI, QM, QUANT, dtype)

    @gluon.jit
    def _ws_attention_kernel(qkv_ptr, desc_lo, desc_hi, out_ptr, cu_ptr, used_ptr, slot, qk_scale,
                             rs_ptr, inv_ptr, scale_ptr,
                             HEADS: gl.constexpr, D: gl.constexpr, D_LO: gl.constexpr, D_HI: gl.constexpr,
                             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                             PACKED: gl.constexpr, QUANT: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                             CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr, num_warps: gl.constexpr):
        # Program (query block of BLOCK_M = 2 x QM rows, image * head). All warps load q and the last,
        # partial key block (masked) into shared memory; then one warp streams the full key blocks
        # through TMA while two warpgroups (this program's num_warps = 4 and one more) each attend QM rows.
        pid_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // HEADS
        h = bh % HEADS
        start = gl.load(cu_ptr + b)
        n_keys = gl.load(used_ptr + b)
        ROW: gl.constexpr = 3 * HEADS * D
        QM: gl.constexpr = BLOCK_M // CONSUMERS
        k_col = HEADS * D + h * D
        v_col = k_col + HEADS * D
        dtype: gl.constexpr = qkv_ptr.dtype.element_ty
        ld_lo: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (D_LO // 8), D_LO // 8], [num_warps, 1], [1, 0])
        ld_hi: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (D_HI // 8), D_HI // 8], [num_warps, 1], [1, 0])
        q_lim = n_keys if PACKED else slot
        keys = gl.where(pid_m * BLOCK_M < n_keys, n_keys, 0)  # a block of pad queries only: no keys
        n_full = keys // BLOCK_N
        row0 = pid_m * BLOCK_M

        q_lo_s = gl.allocate_shared_memory(dtype, [CONSUMERS, QM, D_LO], desc_lo.layout)
        q_hi_s = gl.allocate_shared_memory(dtype, [CONSUMERS, QM, D_HI], desc_hi.layout)
        d_lo = gl.arange(0, D_LO, layout=gl.SliceLayout(0, ld_lo))
        d_hi = D_LO + gl.arange(0, D_HI, layout=gl.SliceLayout(0, ld_hi))
        for half in gl.static_range(CONSUMERS):
            m_lo = row0 + half * QM + gl.arange(0, QM, layout=gl.SliceLayout(1, ld_lo))
            m_hi = row0 + half * QM + gl.arange(0, QM, layout=gl.SliceLayout(1, ld_hi))
            r_lo = (start.to(gl.int64) + m_lo.to(gl.int64)) * ROW + h * D
            r_hi = (start.to(gl.int64) + m_hi.to(gl.int64)) * ROW + h * D
            q_lo_s.index(half).store(gl.load(qkv_ptr + r_lo[:, None] + d_lo[None, :], mask=(m_lo < q_lim)[:, None],
                                             other=0.0))
            q_hi_s.index(half).store(gl.load(qkv_ptr + r_hi[:, None] + d_hi[None, :],
                                             mask=(m_hi < q_lim)[:, None] & (d_hi < D)[None, :], other=0.0))
        kt_lo = gl.allocate_shared_memory(dtype, [BLOCK_N, D_LO], desc_lo.layout)
        kt_hi = gl.allocate_shared_memory(dtype, [BLOCK_N, D_HI], desc_hi.layout)
        vt_lo = gl.allocate_shared_memory(dtype, [BLOCK_N, D_LO], desc_lo.layout)
        vt_hi = gl.allocate_shared_memory(dtype, [BLOCK_N, D_HI], desc_hi.layout)
        n0 = n_full * BLOCK_N
        if n0 < keys:  # rows past used[b] may be another image or poisoned: zeros, never their values
            km_lo = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld_lo))
            km_hi = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld_hi))
            kr_lo = (start.to(gl.int64) + km_lo.to(gl.int64)) * ROW
            kr_hi = (start.to(gl.int64) + km_hi.to(gl.int64)) * ROW
            ok_lo = (km_lo < keys)[:, None]
            ok_hi = (km_hi < keys)[:, None] & (d_hi < D)[None, :]
            kt_lo.store(gl.load(qkv_ptr + kr_lo[:, None] + k_col + d_lo[None, :], mask=ok_lo, other=0.0))
            kt_hi.store(gl.load(qkv_ptr + kr_hi[:, None] + k_col + d_hi[None, :], mask=ok_hi, other=0.0))
            vt_lo.store(gl.load(qkv_ptr + kr_lo[:, None] + v_col + d_lo[None, :], mask=ok_lo, other=0.0))
            vt_hi.store(gl.load(qkv_ptr + kr_hi[:, None] + v_col + d_hi[None, :], mask=ok_hi, other=0.0))

        k_lo = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_LO], desc_lo.layout)
        k_hi = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_HI], desc_hi.layout)
        v_lo = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_LO], desc_lo.layout)
        v_hi = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_HI], desc_hi.layout)
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(kv_empty.index(i), count=CONSUMERS)  # every consumer releases a slot
        fence_async_shared()
        gl.thread_barrier()

        if PINGPONG:
            turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
            mbarrier.init(turn.index(0), count=1)
            mbarrier.init(turn.index(1), count=1)
            fence_async_shared()
            gl.thread_barrier()
            gl.warp_specialize([
                (_pp_consumer, (0, q_lo_s, q_hi_s, k_lo, k_hi, v_lo, v_hi, kt_lo, kt_hi, vt_lo, vt_hi, k_ready,
                                v_ready, kv_empty, turn, out_ptr, start, keys, q_lim, row0, h, qk_scale, rs_ptr,
                                inv_ptr, scale_ptr, HEADS, D, D_LO, D_HI, QM, BLOCK_N, STAGES, QUANT, num_warps)),
                (_pp_consumer, (1, q_lo_s, q_hi_s, k_lo, k_hi, v_lo, v_hi, kt_lo, kt_hi, vt_lo, vt_hi, k_ready,
                                v_ready, kv_empty, turn, out_ptr, start, keys, q_lim, row0, h, qk_scale, rs_ptr,
                                inv_ptr, scale_ptr, HEADS, D, D_LO, D_HI, QM, BLOCK_N, STAGES, QUANT, num_warps)),
                (_ws_loader, (desc_lo, desc_hi, k_lo, k_hi, v_lo, v_hi, k_ready, v_ready, kv_empty, n_full, start,
                              k_col, v_col, BLOCK_N, D_LO, D_HI, STAGES)),
            ], [num_warps, 1], [CONSUMER_REGS, 24])
        elif CONSUMERS == 2:
            gl.warp_specialize([
                (_ws_consumer, (0, q_lo_s, q_hi_s, k_lo, k_hi, v_lo, v_hi, kt_lo, kt_hi, vt_lo, vt_hi, k_ready,
                                v_ready, kv_empty, out_ptr, start, keys, q_lim, row0, h, qk_scale, rs_ptr, inv_ptr,
                                scale_ptr, HEADS, D, D_LO, D_HI, QM, BLOCK_N, STAGES, QUANT, num_warps)),
                (_ws_consumer, (1, q_lo_s, q_hi_s, k_lo, k_hi, v_lo, v_hi, kt_lo, kt_hi, vt_lo, vt_hi, k_ready,
                                v_ready, kv_empty, out_ptr, start, keys, q_lim, row0, h, qk_scale, rs_ptr, inv_ptr,
                                scale_ptr, HEADS, D, D_LO, D_HI, QM, BLOCK_N, STAGES, QUANT, num_warps)),
                (_ws_loader, (desc_lo, desc_hi, k_lo, k_hi, v_lo, v_hi, k_ready, v_ready, kv_empty, n_full, start,
                              k_col, v_col, BLOCK_N, D_LO, D_HI, STAGES)),
            ], [num_warps, 1], [CONSUMER_REGS, 24])
        else:  # one consumer of num_warps warps for all BLOCK_M rows
            gl.warp_specialize([
                (_ws_consumer, (0, q_lo_s, q_hi_s, k_lo, k_hi, v_lo, v_hi, kt_lo, kt_hi, vt_lo, vt_hi, k_ready,
                                v_ready, kv_empty, out_ptr, start, keys, q_lim, row0, h, qk_scale, rs_ptr, inv_ptr,
                                scale_ptr, HEADS, D, D_LO, D_HI, QM, BLOCK_N, STAGES, QUANT, num_warps)),
                (_ws_loader, (desc_lo, desc_hi, k_lo, k_hi, v_lo, v_hi, k_ready, v_ready, kv_empty, n_full, start,
                              k_col, v_col, BLOCK_N, D_LO, D_HI, STAGES)),
            ], [1], [24])

    return _attention_kernel, _ws_attention_kernel


def load():
    """The compiled-on-demand Gluon kernel, or None (reason in UNAVAILABLE). Imports Gluon only here."""
    global _KERNEL, UNAVAILABLE
    if _KERNEL is not None or UNAVAILABLE is not None:
        return _KERNEL
    try:
        import triton
        if not triton.__version__.startswith("3.6"):
            raise ImportError(f"written against Triton 3.6's Gluon API, found triton {triton.__version__}")
        _KERNEL = _build()
    except Exception as exc:  # noqa: BLE001 - the reason is reported, the caller falls back
        UNAVAILABLE = f"{type(exc).__name__}: {exc}"
    return _KERNEL


def usable(qkv: torch.Tensor) -> str | None:
    """None if the Gluon kernel can run on this qkv, else the reason it cannot."""
    if load() is None:
        return f"Gluon kernel unavailable ({UNAVAILABLE})"
    if not qkv.is_cuda or torch.cuda.get_device_capability(qkv.device)[0] != 9:
        return "the Gluon kernel is written for Hopper (sm_90) only"
    if qkv.dtype not in (torch.bfloat16, torch.float16):
        return f"the Gluon kernel takes bf16/fp16 qkv, got {qkv.dtype}"
    if (qkv.stride(0) * qkv.element_size()) % 16 or qkv.data_ptr() % 16:
        return "TMA needs 16-byte aligned rows"
    return None


def one_wave(qkv: torch.Tensor, cu: torch.Tensor, slot: int) -> bool:
    """Whether the ping-pong tiles' grid (row blocks of TILES_ONE_WAVE x images x heads) fits one
    wave of the device's SMs: where this kernel beats the Triton kernel (shapes are static per graph)."""
    sms = torch.cuda.get_device_properties(qkv.device).multi_processor_count
    return (slot + TILES_ONE_WAVE[0] - 1) // TILES_ONE_WAVE[0] * (cu.numel() - 1) * qkv.shape[2] <= sms


def vision_attention_ws(qkv: torch.Tensor, cu: torch.Tensor, used: torch.Tensor, slot: int,
                        scale: float | None = None, tiles=None, packed: bool = False, fp8_for=None):
    """`vision_attention.vision_attention`'s contract on the Gluon kernel (call `usable` first)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .vision_attention import head_split, launch_operands

    kernel = load()
    n, heads, d, out, rs, inv, s_in, qk_scale = launch_operands(qkv, scale, fp8_for)
    d_lo, d_hi = head_split(d)
    if tiles is None:
        tiles = TILES_ONE_WAVE if one_wave(qkv, cu, slot) else TILES
    block_m, block_n, warps, stages, consumers = tiles
    pingpong = consumers == 3
    consumers = 2 if pingpong else consumers
    if stages < (2 if pingpong else 3) or block_m // max(consumers, 1) < 16 * warps:  # block j+1's K comes before j-1's slot frees
        raise ValueError(f"Gluon attention tiles need stages >= 3 and rows >= 16 * warps per warpgroup, got {tiles}")
    quant = fp8_for is not None
    gdt = gl.bfloat16 if qkv.dtype == torch.bfloat16 else gl.float16
    flat = qkv.view(n, 3 * heads * d)
    descs = [TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [block_n, w],
                              gl.NVMMASharedLayout.get_default_for([block_n, w], gdt)) for w in (d_lo, d_hi)]
    grid = ((slot + block_m - 1) // block_m, (cu.numel() - 1) * heads)
    args = (qkv, descs[0], descs[1], out, cu, used, slot, qk_scale, rs, inv, s_in)
    meta = {"HEADS": heads, "D": d, "D_LO": d_lo, "D_HI": d_hi, "BLOCK_M": block_m, "BLOCK_N": block_n,
            "STAGES": stages, "PACKED": packed, "QUANT": quant, "num_warps": warps}
    if consumers:  # the consumers' warps + a TMA warp's warpgroup share the register file
        compiled = kernel[1][grid](*args, **meta, CONSUMER_REGS=CONSUMER_REGS, CONSUMERS=consumers,
                                   PINGPONG=pingpong,
                                   maxnreg=65536 // (32 * (consumers * warps + 4)) // 8 * 8)  # ptxas: a multiple of 8
    else:
        compiled = kernel[0][grid](*args, **meta)
    LAST_COMPILED[tiles] = compiled  # registers / spills for the benchmark
    return (out, rs) if quant else out

"""Swap-AB skinny GEMM of the MTP step: y = x @ w^T computed as y^T = w @ x^T, so the weight rows
(output features, BLOCK_W = 64 or 128 per program) are the tensor-core MMA's M side and the few
token rows (12 per batch row, padded to BLOCK_T = 16..256) its N side.

Why: at decode sizes (M = 12..384 token rows) a tile with x's rows on the MMA's M side
(skinny_gemm.py) needs M >= 64 for Hopper's wgmma, so at M = 96 it pads to 128 rows on mma.sync
and starves for compute; here the M side is always 64/128 weight rows (wgmma) and the token rows
cost only N-side width, which wgmma takes in steps of 8 (Triton: powers of two >= 16).

    grid = (T tiles, N / BLOCK_W, SPLIT_K)     (T tiles fastest: tiles sharing weights run together)

Weights (and x) stream through TMA tensor descriptors (host `TensorDescriptor`, passed by value
into the launch, so capturable in CUDA graphs) with a num_stages-deep pipeline; `TMA=False`
configs use plain pointer loads instead (same tiles, cp.async pipeline), a fallback where the
descriptors do not compile. Out-of-range rows / K are zero-filled by the copy engine or masked.

Split-K: as skinny_gemm.py, each split writes its fp32 partial, bumps a per-tile counter, and the
split that arrives last sums the partials in split order (same bits every replay), applies the
epilogue and resets the counter: one kernel. Unlike skinny_gemm.py the SiLU epilogue may split
too (gate and up partials both go to the workspace).

Epilogues and rounding exactly as skinny_gemm.py: bias added to the fp32 sum before the one
rounding; SiLU(gate) * up rounds gate and up products to the model dtype, rounds the SiLU, then
the product (what the unfused F.linear + silu_mul path rounds).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import env_choice, pdl
from .pdl_ops import gdc_launch_dependents, gdc_wait, prefetch_l2

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older triton: only TMA=False configs
    TensorDescriptor = None


@triton.jit
def _swab_kernel(w_ptr, x_ptr, w_desc, x_desc, b_ptr, y_ptr, part_ptr, lock_ptr, M, N, K, up_off, stride_x, stride_y,
                 HAS_BIAS: tl.constexpr, SILU: tl.constexpr, SPLIT_K: tl.constexpr, TMA: tl.constexpr,
                 BLOCK_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
                 PRE: tl.constexpr = 0, PF: tl.constexpr = 0, PF_CHUNKS: tl.constexpr = 1):
    pid_t = tl.program_id(0)
    pid_w = tl.program_id(1)
    pid_k = tl.program_id(2)
    rn = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)  # output features (MMA M side)
    rt = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # token rows (MMA N side)
    live_n = rn < N
    live_t = rt < M
    # splits start on BLOCK_K boundaries, so only the K edge of the last split is partial
    k_per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_lo = pid_k * k_per
    k_hi = tl.minimum(k_lo + k_per, K)
    if PDL:
        gdc_launch_dependents()
    if PF > 0:  # hint: the first PF BLOCK_K tiles of this program's weight rows into L2 (weights: no kernel writes them)
        piece = PF * BLOCK_K // PF_CHUNKS  # [BLOCK_W rows, PF_CHUNKS pieces]: one prefetch per thread, none twice
        at = k_lo + tl.arange(0, PF_CHUNKS)[None, :] * piece
        size = tl.minimum(piece, k_hi - at)
        at = tl.where(size > 0, at, k_lo)
        size = tl.where(size > 0, size, 8) * 2  # bytes (bf16/fp16); the host keeps K and k_lo 16-byte aligned
        rows = tl.minimum(rn, N - 1).to(tl.int64)[:, None]
        prefetch_l2(w_ptr + rows * K + at, size)
        if SILU:
            prefetch_l2(w_ptr + (rows + up_off) * K + at, size)
    # PRE > 0: this program's first PRE weight tiles (gate and up with SiLU) are read before the wait, so
    # their DRAM latency overlaps the previous kernel's tail; the host keeps PRE <= every split's tile count
    if PRE >= 1:
        w0 = _w_tile(w_ptr, rn, live_n, k_lo, K, 0, BLOCK_K)
        u0 = _w_tile(w_ptr, rn, live_n, k_lo, K, up_off, BLOCK_K) if SILU else w0
    if PRE >= 2:
        w1 = _w_tile(w_ptr, rn, live_n, k_lo + BLOCK_K, K, 0, BLOCK_K)
        u1 = _w_tile(w_ptr, rn, live_n, k_lo + BLOCK_K, K, up_off, BLOCK_K) if SILU else w1
    if PRE >= 3:
        w2 = _w_tile(w_ptr, rn, live_n, k_lo + 2 * BLOCK_K, K, 0, BLOCK_K)
        u2 = _w_tile(w_ptr, rn, live_n, k_lo + 2 * BLOCK_K, K, up_off, BLOCK_K) if SILU else w2
    if PRE >= 4:
        w3 = _w_tile(w_ptr, rn, live_n, k_lo + 3 * BLOCK_K, K, 0, BLOCK_K)
        u3 = _w_tile(w_ptr, rn, live_n, k_lo + 3 * BLOCK_K, K, up_off, BLOCK_K) if SILU else w3
    if PDL:
        gdc_wait()  # x, workspace and counters only after the previous kernel completed
    acc = tl.zeros((BLOCK_W, BLOCK_T), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_W, BLOCK_T), dtype=tl.float32)
    # the peeled tiles are the range's first, accumulated in order: the same sums as PRE = 0
    if PRE >= 1:
        x = _x_tile(x_ptr, x_desc, rt, live_t, pid_t, k_lo, K, stride_x, TMA, BLOCK_T, BLOCK_K)
        acc = tl.dot(w0, tl.trans(x), acc)
        if SILU:
            acc_up = tl.dot(u0, tl.trans(x), acc_up)
    if PRE >= 2:
        x = _x_tile(x_ptr, x_desc, rt, live_t, pid_t, k_lo + BLOCK_K, K, stride_x, TMA, BLOCK_T, BLOCK_K)
        acc = tl.dot(w1, tl.trans(x), acc)
        if SILU:
            acc_up = tl.dot(u1, tl.trans(x), acc_up)
    if PRE >= 3:
        x = _x_tile(x_ptr, x_desc, rt, live_t, pid_t, k_lo + 2 * BLOCK_K, K, stride_x, TMA, BLOCK_T, BLOCK_K)
        acc = tl.dot(w2, tl.trans(x), acc)
        if SILU:
            acc_up = tl.dot(u2, tl.trans(x), acc_up)
    if PRE >= 4:
        x = _x_tile(x_ptr, x_desc, rt, live_t, pid_t, k_lo + 3 * BLOCK_K, K, stride_x, TMA, BLOCK_T, BLOCK_K)
        acc = tl.dot(w3, tl.trans(x), acc)
        if SILU:
            acc_up = tl.dot(u3, tl.trans(x), acc_up)
    for k0 in range(k_lo + PRE * BLOCK_K, k_hi, BLOCK_K):
        if TMA:
            w = w_desc.load([pid_w * BLOCK_W, k0])  # rows past N / columns past K arrive as zeros
            x = x_desc.load([pid_t * BLOCK_T, k0])
        else:
            kk = k0 + tl.arange(0, BLOCK_K)
            live_k = kk < K
            w = tl.load(w_ptr + rn[:, None] * K + kk[None, :], mask=live_n[:, None] & live_k[None, :], other=0.0,
                        eviction_policy="evict_first")
            x = tl.load(x_ptr + rt[:, None] * stride_x + kk[None, :], mask=live_t[:, None] & live_k[None, :], other=0.0)
        acc = tl.dot(w, tl.trans(x), acc)
        if SILU:
            if TMA:
                u = w_desc.load([pid_w * BLOCK_W + up_off, k0])
            else:
                u = tl.load(w_ptr + (rn[:, None] + up_off) * K + kk[None, :], mask=live_n[:, None] & live_k[None, :],
                            other=0.0, eviction_policy="evict_first")
            acc_up = tl.dot(u, tl.trans(x), acc_up)
    out_ty = y_ptr.dtype.element_ty
    if SPLIT_K > 1:
        tile = pid_w * tl.num_programs(0) + pid_t
        rows_all = tl.num_programs(0) * BLOCK_T
        width = N * 2 if SILU else N  # a split's partial row: [gate | up] with SiLU
        part = part_ptr + (pid_k * rows_all + rt[None, :]) * width + rn[:, None]
        tl.store(part, acc, mask=live_n[:, None])
        if SILU:
            tl.store(part + N, acc_up, mask=live_n[:, None])
        tl.debug_barrier()  # every thread's partial is written before the counter says so
        arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # the last split of this tile reduces, in split order
            acc = tl.zeros((BLOCK_W, BLOCK_T), dtype=tl.float32)
            acc_up = tl.zeros((BLOCK_W, BLOCK_T), dtype=tl.float32)
            for s in range(SPLIT_K):
                src = part_ptr + (s * rows_all + rt[None, :]) * width + rn[:, None]
                acc += tl.load(src, mask=live_n[:, None], other=0.0, cache_modifier=".cg")
                if SILU:
                    acc_up += tl.load(src + N, mask=live_n[:, None], other=0.0, cache_modifier=".cg")
            _epilogue(acc, acc_up, b_ptr, y_ptr, rn, rt, live_n, live_t, stride_y, out_ty, HAS_BIAS, SILU)
            tl.atomic_xchg(lock_ptr + tile, 0)  # ready for the next replay
    else:
        _epilogue(acc, acc_up, b_ptr, y_ptr, rn, rt, live_n, live_t, stride_y, out_ty, HAS_BIAS, SILU)


@triton.jit
def _w_tile(w_ptr, rn, live_n, k0, K, row_off, BLOCK_K: tl.constexpr):
    """Weight rows rn + row_off, columns [k0, k0 + BLOCK_K), zeros past N and K (the values the K
    loop's loads give). Pointer loads even in TMA configs: a lone descriptor load waits for its
    bytes before the next is issued (PTX: mbarrier wait after each), plain loads all fly at once."""
    kk = k0 + tl.arange(0, BLOCK_K)
    return tl.load(w_ptr + (rn[:, None] + row_off) * K + kk[None, :], mask=live_n[:, None] & (kk < K)[None, :],
                   other=0.0, eviction_policy="evict_first")


@triton.jit
def _x_tile(x_ptr, x_desc, rt, live_t, pid_t, k0, K, stride_x, TMA: tl.constexpr, BLOCK_T: tl.constexpr,
            BLOCK_K: tl.constexpr):
    if TMA:
        return x_desc.load([pid_t * BLOCK_T, k0])
    kk = k0 + tl.arange(0, BLOCK_K)
    return tl.load(x_ptr + rt[:, None] * stride_x + kk[None, :], mask=live_t[:, None] & (kk < K)[None, :], other=0.0)


@triton.jit
def _epilogue(acc, acc_up, b_ptr, y_ptr, rn, rt, live_n, live_t, stride_y, out_ty: tl.constexpr,
              HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """acc is y^T [BLOCK_W, BLOCK_T] in fp32: bias, SiLU(gate) * up, one rounding, stored as y."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=live_n, other=0.0).to(tl.float32)[:, None]
    if SILU:
        g = acc.to(out_ty).to(tl.float32)  # the gate/up products round to the model dtype first
        act = (g / (1.0 + tl.exp(-g))).to(out_ty).to(tl.float32)  # silu rounds, as F.silu does
        acc = act * acc_up.to(out_ty).to(tl.float32)
    tl.store(y_ptr + rt[None, :] * stride_y + rn[:, None], acc.to(out_ty), mask=live_n[:, None] & live_t[None, :])


class SwabConfig(tuple):
    """(block_w, block_t, block_k, split_k, warps, stages, tma)"""

    def __new__(cls, block_w, block_t, block_k, split_k, warps, stages, tma):
        return super().__new__(cls, (block_w, block_t, block_k, split_k, warps, stages, bool(tma)))

    def __repr__(self):
        return "swab-w{}t{}k{}s{}w{}p{}{}".format(*self[:6], "-tma" if self[6] else "")


def block_t_for(m: int, cap: int = 128) -> int:
    """Token rows per tile: the next power of two >= m (Triton's minimum dot width is 16), at most cap."""
    return max(16, min(cap, triton.next_power_of_2(m)))


# Per-device scratch: split-K workspaces and tile counters, allocated outside graph capture and
# reused by every layer (kernels of one stream run in order).
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device, size: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(device), size, tiles)
    if key not in _scratch:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"swap_ab_gemm: workspace {key} first needed inside a graph capture")
        _scratch[key] = (torch.empty(size, dtype=torch.float32, device=device),
                         torch.zeros(tiles, dtype=torch.int32, device=device))
    return _scratch[key]


def tma_ok(t: torch.Tensor) -> bool:
    """The copy engine needs 16-byte-aligned base and row stride."""
    es = t.element_size()
    return TensorDescriptor is not None and t.data_ptr() % 16 == 0 and (t.stride(0) * es) % 16 == 0 and t.stride(1) == 1


EARLY_W = ("l2-2", "off", "1", "2", "4", "l2-4")  # the first is the default


def early_w() -> tuple[int, int]:
    """GRAPHRT_STEP_EARLY_W (A/B, PDL launches only, i.e. the B=1 step): what each program reads of
    its weights before its grid-dependency wait. l2-2 (default) / l2-4: an L2 prefetch of its first
    2/4 BLOCK_K tiles' bytes (H100, B=1 step 3.049 -> 3.018-3.027 ms, two calls); off: nothing (the
    kernel before); 1/2/4: its first 1/2/4 BLOCK_K weight tiles (gate and up with SiLU) into registers,
    consumed first after the wait (same bits; measured slower: 3.117 / 3.196 / 3.270 ms, docs/notes.md).
    -> (register tiles, prefetched tiles)."""
    v = env_choice("GRAPHRT_STEP_EARLY_W", EARLY_W)
    if v == "off":
        return 0, 0
    if v.startswith("l2-"):
        return 0, int(v[3:])
    return int(v), 0


def early_tiles(k: int, split: int, block_k: int, pre: int) -> int:
    """pre clamped to the fewest BLOCK_K tiles any split owns (0 where a split is empty), so every
    peeled tile lies inside its program's K range."""
    k_per = -(-(-(-k // split)) // block_k) * block_k
    last = k - (split - 1) * k_per
    return 0 if last <= 0 else min(pre, -(-last // block_k))


def swab_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu: bool = False,
                config: SwabConfig = SwabConfig(128, 16, 128, 1, 4, 4, True), pre: int | None = None) -> torch.Tensor:
    """x [M, K] (rows contiguous) @ weight[N', K]^T (+ bias) -> [M, N'], or with silu: weight is
    [2I, K] (gate rows, then up rows) and the result is silu(x @ gate^T) * (x @ up^T) [M, I].
    pre: weight tiles per program loaded before the PDL wait (None: GRAPHRT_STEP_EARLY_W on PDL
    launches, else 0); the same bits at any value."""
    m, k = x.shape
    n_w, k_w = weight.shape
    if k != k_w or x.stride(1) != 1 or not weight.is_contiguous():
        raise ValueError(f"swab_matmul: x {tuple(x.shape)} (row-contiguous) and weight {tuple(weight.shape)} "
                         "(contiguous) must share K")
    if weight.dtype != x.dtype or x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"swab_matmul: x and weight must be both fp16 or both bf16, not {x.dtype} / {weight.dtype}")
    block_w, block_t, block_k, split, warps, stages, tma = config
    if silu and (bias is not None or n_w % 2):
        raise ValueError("swab_matmul: the SiLU epilogue takes no bias and an even number of weight rows")
    if tma and not (tma_ok(x) and tma_ok(weight)):
        raise ValueError("swab_matmul: TMA configs need 16-byte-aligned x / weight bases and row strides")
    n = n_w // 2 if silu else n_w
    grid = (triton.cdiv(m, block_t), triton.cdiv(n, block_w), split)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if split > 1:
        part, lock = _workspace(x.device, split * grid[0] * block_t * n * (2 if silu else 1), grid[0] * grid[1])
    else:
        part = lock = y
    if tma:
        w_desc = TensorDescriptor.from_tensor(weight, [block_w, block_k])
        x_desc = TensorDescriptor.from_tensor(x, [block_t, block_k])
    else:
        w_desc = x_desc = y  # unused
    launch = pdl.launch(x)
    pf = 0
    if pre is None:
        pre, pf = early_w() if launch["PDL"] else (0, 0)
    if pre not in (0, 1, 2, 3, 4):
        raise ValueError(f"swab_matmul: pre must be 0..4 weight tiles, not {pre!r}")
    pre = early_tiles(k, split, block_k, pre)
    # the L2 prefetch: 16-byte-aligned pieces, only where no split is empty
    pf = pf if k % 8 == 0 and weight.data_ptr() % 16 == 0 and early_tiles(k, split, block_k, 1) else 0
    _swab_kernel[grid](weight, x, w_desc, x_desc, bias if bias is not None else y, y, part, lock, m, n, k, n,
                       x.stride(0), y.stride(0), HAS_BIAS=bias is not None, SILU=silu, SPLIT_K=split, TMA=tma,
                       BLOCK_W=block_w, BLOCK_T=block_t, BLOCK_K=block_k, PRE=pre, PF=pf,
                       PF_CHUNKS=max(1, 32 * warps // block_w), num_warps=warps, num_stages=stages, **launch)
    return y


SMEM_BUDGET = 200 * 1024  # of the H100's 227 KB per block: the pipeline stages, with room for the epilogue


def swab_candidates(m: int, n: int, k: int, silu: bool) -> list[SwabConfig]:
    """Configs worth timing for one shape (what start-up measures against cuBLAS and skinny_gemm.py).

    64 weight rows per tile (128 too for the SiLU GEMM above 128 token rows); token tiles of all
    the rows (up to 128; BLOCK_K 64 / 128) and, above 32 rows, also 32- and 64-row tiles (BLOCK_K
    64; more programs, each weight tile read from HBM once and by its neighbours from L2); the
    smallest split-K that puts >= 120 programs on the 132 SMs, and the one below it where that
    still gives >= 64 (more splits were always slower: H100 sweep
    2026-11-24, one program per SM at these pipeline depths); the deepest pipeline that fits
    in SMEM_BUDGET, up to 16 stages (cuBLAS's choice at these shapes: 64-row tiles, 10-16 stages),
    and for full token tiles also 6 stages.
    All through TMA descriptors, plus the first with pointer loads (fallback, and the TMA A/B)."""
    out = []
    block_ts = [block_t_for(m)] + [t for t in (32, 64) if t < block_t_for(m) and m > t]
    for block_t in block_ts:
        t_tiles = triton.cdiv(m, block_t)
        for block_w in ((64, 128) if silu and m > 128 else (64,)):
            full = block_t == block_ts[0]
            for block_k in ((64, 128) if full else (64,)):
                tiles = triton.cdiv(n, block_w) * t_tiles
                k_blocks = triton.cdiv(k, block_k)
                fits = [s for s in (1, 2, 3, 4, 6, 8) if k_blocks >= 2 * s]
                if not fits or tiles * fits[-1] < 64:  # too little work to spread (small models): no candidate
                    continue
                first = next((i for i, s in enumerate(fits) if tiles * s >= 120), len(fits) - 1)
                splits = [fits[first]] + ([fits[first - 1]] if first > 0 and tiles * fits[first - 1] >= 64 else [])
                per_stage = (block_w * (2 if silu else 1) + block_t) * block_k * 2
                stages = min(16, SMEM_BUDGET // per_stage)
                if stages < 2:
                    continue
                warps = 8 if block_t >= 128 and (block_w == 128 or silu) else 4
                for split in splits:
                    out.append(SwabConfig(block_w, block_t, block_k, split, warps, stages, True))
                if full and stages > 6:  # and the first sweep's depth (its winners at B=1 had 5-6 stages)
                    out.append(SwabConfig(block_w, block_t, block_k, splits[0], warps, 6, True))
    if out:
        out.append(SwabConfig(*out[0][:6], False))
    return out

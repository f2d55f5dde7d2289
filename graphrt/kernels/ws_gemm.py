"""Warp-specialized, persistent stream-K skinny GEMM of the MTP step, written in Gluon (Hopper).

y = x @ w^T computed as y^T = w @ x^T (swap-AB, as swap_ab_gemm.py): BLOCK_W weight rows are the
wgmma M side, BLOCK_T token rows (12 -> 16, 96 -> 128, 384 -> 3 x 128) its N side.

Why another kernel: at M = 96 the swap-AB kernel's grid (e.g. gate/up: 172 weight tiles of 64 rows)
is 1.3 waves on 132 SMs, so the last wave runs a third of the GPU; more split-K made it slower
(two waves of one-program-per-SM pipelines). Here the grid is one program per SM and the work is
cut by K blocks, not by tiles ("stream-K"): the (tile, K block) pairs are numbered tile-major and
program p takes the contiguous range [p * total / G, (p + 1) * total / G), so every SM streams the
same number of weight bytes, whatever the tile count. A tile cut between programs is summed
through an fp32 workspace: each piece ("segment") stores its partial in its slot, bumps the
tile's counter, and the piece that arrives last sums the slots in slot order (fixed: the same
bits every replay), applies the epilogue and resets the counter (as skinny_gemm.py's split-K).

Inside a program (warp specialization): one producer warp issues TMA copies of the weight tile
(and the up tile with SiLU) and the token tile into a STAGES-deep shared-memory ring, guarded by
`ready` / `empty` mbarriers; the consumer warps (num_warps) run wgmma on each stage, free it, and
at a segment's end run the epilogue, while the producer already streams the next segment's
weights: the copy engine never waits for an epilogue or a pipeline refill between tiles.

Epilogues and rounding exactly as swap_ab_gemm.py / skinny_gemm.py: bias added to the fp32 sum
before the one rounding; SiLU(gate) * up rounds gate and up to the model dtype, rounds the SiLU,
then the product (what the unfused F.linear + silu_mul path rounds).

Gluon's API moves between Triton releases: this file is written against Triton 3.6 (the H100
device's). Elsewhere (CPU CI: Triton 3.9; no GPU) `available()` is False and the chooser simply has
no such candidate; nothing here is imported at module load but the host helpers.
"""

from __future__ import annotations

import functools

import torch
import triton

GLUON_TRITON = "3.6"  # the Triton release whose Gluon API this kernel is written against


class WsConfig(tuple):
    """(block_w, block_t, block_k, stages, warps, programs_per_sm, dp): dp = whole tiles first, one
    per program per wave, and stream-K only over the tiles left after the last full wave."""

    def __new__(cls, block_w, block_t, block_k, stages, warps, per_sm=1, dp=False):
        return super().__new__(cls, (block_w, block_t, block_k, stages, warps, per_sm, bool(dp)))

    def __repr__(self):
        return "ws-w{}t{}k{}p{}w{}c{}".format(*self[:6]) + ("-dp" if self[6] else "")


SMEM_BUDGET = 200 * 1024  # of the H100's 227 KB per block: the ring, with room for barriers and layout scratch


def block_t_for(m: int) -> int:
    """Token rows per tile: the next power of two >= m, 16..128 (more rows: more token tiles)."""
    return max(16, min(128, triton.next_power_of_2(m)))


def stages_for(block_w: int, block_t: int, block_k: int, silu: bool, cap: int = 12) -> int:
    per_stage = (block_w * (2 if silu else 1) + block_t) * block_k * 2
    return min(cap, SMEM_BUDGET // per_stage)


def ws_candidates(m: int, n: int, k: int, silu: bool) -> list[WsConfig]:
    """Configs worth timing for one shape (benchmarks/skinny_gemm_tune.py --ws all): 64 weight rows
    on one warpgroup (BLOCK_K 64 / 128), 128 rows on two (each token tile read once per 128 weight
    rows: half the L2 traffic for x at M >= 96), the deepest ring that fits; one program per SM;
    the 64-row ones also with `dp` (whole tiles in full waves, stream-K only for the rest).
    Two programs per SM (each ring half as deep) were measured slower everywhere (H100,
    2026-11-24, docs/notes.md) and are not listed."""
    if n < 64 or k < 128:
        return []
    block_t = block_t_for(m)
    out = []
    for block_w, block_k, warps in ((64, 128, 4), (64, 64, 4), (128, 64, 8)):
        stages = stages_for(block_w, block_t, block_k, silu)
        if stages >= 3:
            out.append(WsConfig(block_w, block_t, block_k, stages, warps, 1))
    # and the first two with whole tiles first (no partial sums but in the last, stream-K, wave)
    out[2:2] = [WsConfig(*c[:6], True) for c in out[:2]]
    return out


def ws_shortlist(m: int, n: int, k: int, silu: bool) -> list[WsConfig]:
    """What start-up times beside the swap-AB shortlist (GRAPHRT_STEP_GEMM=ws): the 64-row, BLOCK_K
    128 tiling with and without `dp` (every shape's fastest ws config in the H100 runs, 2026-11-24;
    each Gluon config is one more compile on a cold start)."""
    cands = ws_candidates(m, n, k, silu)
    return [c for c in cands if c[0] == 64 and c[2] == 128 and c[5] == 1]


def plan(tiles: int, k_blocks: int, programs: int, dp: bool) -> tuple[int, int]:
    """(tiles done whole, K blocks left to stream-K): with dp, the full waves of whole tiles (tile
    p + j * programs to program p), the rest cut by K blocks over all programs."""
    whole = (tiles // programs) * programs if dp else 0
    return whole, (tiles - whole) * k_blocks


def blocks_of(p: int, tiles: int, k_blocks: int, programs: int, dp: bool) -> list[int]:
    """The (tile-major) K blocks program p works on, in its order (the kernel's loops; for tests)."""
    whole, rem = plan(tiles, k_blocks, programs, dp)
    out = [(p + j * programs) * k_blocks + kb for j in range(whole // programs) for kb in range(k_blocks)]
    base = whole * k_blocks
    return out + list(range(base + p * rem // programs, base + (p + 1) * rem // programs))


def owner(b: int, programs: int, total: int) -> int:
    """The program whose range [p * total // G, (p + 1) * total // G) holds K block b (the kernel
    computes the same): the largest p with p * total // G <= b."""
    return ((b + 1) * programs - 1) // total


@functools.lru_cache(maxsize=None)
def max_segments(tiles: int, k_blocks: int, programs: int) -> int:
    """The most programs any one tile is cut between (workspace slots per tile)."""
    total = tiles * k_blocks
    return max(owner((t + 1) * k_blocks - 1, programs, total) - owner(t * k_blocks, programs, total) + 1
               for t in range(tiles))


@functools.cache
def available() -> bool:
    """Gluon with the Hopper API of GLUON_TRITON and a CUDA device of compute capability >= 9."""
    if not triton.__version__.startswith(GLUON_TRITON) or not torch.cuda.is_available():
        return False
    try:
        _kernel()
    except Exception:  # noqa: BLE001  (no Gluon, or its API differs)
        return False
    return torch.cuda.get_device_capability()[0] >= 9


def tma_ok(t: torch.Tensor) -> bool:
    es = t.element_size()
    return t.data_ptr() % 16 == 0 and (t.stride(0) * es) % 16 == 0 and t.stride(1) == 1


_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device, size: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(device), size, tiles)
    if key not in _scratch:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"ws_gemm: workspace {key} first needed inside a graph capture")
        _scratch[key] = (torch.empty(max(size, 1), dtype=torch.float32, device=device),
                         torch.zeros(tiles, dtype=torch.int32, device=device))
    return _scratch[key]


_sms: dict[str, int] = {}


def _sm_count(device) -> int:
    key = str(device)
    if key not in _sms:
        _sms[key] = torch.cuda.get_device_properties(device).multi_processor_count
    return _sms[key]


def ws_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu: bool = False,
              config: WsConfig = WsConfig(64, 16, 128, 8, 4), programs: int | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N', K]^T (+ bias) -> [M, N'], or with silu: weight is [2I, K] (gate rows,
    then up rows) and the result is silu(x @ gate^T) * (x @ up^T) [M, I]. `programs` (tests)
    overrides the persistent grid size (default: SMs * programs_per_sm)."""
    m, k = x.shape
    n_w, k_w = weight.shape
    if k != k_w or not weight.is_contiguous() or not (tma_ok(x) and tma_ok(weight)):
        raise ValueError(f"ws_matmul: x {tuple(x.shape)} and weight {tuple(weight.shape)} must share K and be "
                         "row-contiguous with 16-byte-aligned bases and row strides (TMA)")
    if weight.dtype != x.dtype or x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"ws_matmul: x and weight must be both fp16 or both bf16, not {x.dtype} / {weight.dtype}")
    if silu and (bias is not None or n_w % 2):
        raise ValueError("ws_matmul: the SiLU epilogue takes no bias and an even number of weight rows")
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    block_w, block_t, block_k, stages, warps, per_sm, _ = config
    n = n_w // 2 if silu else n_w
    t_tiles = triton.cdiv(m, block_t)
    tiles = triton.cdiv(n, block_w) * t_tiles
    k_blocks = triton.cdiv(k, block_k)
    total = tiles * k_blocks
    dp = config[6]
    g = min(tiles if dp else total, programs or _sm_count(x.device) * per_sm)
    whole, rem = plan(tiles, k_blocks, g, dp)
    segs = max_segments(tiles - whole, k_blocks, g) if rem else 1
    width = block_w * (2 if silu else 1)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    part, lock = _workspace(x.device, tiles * segs * block_t * width if segs > 1 else 0, tiles)
    gdt = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
    w_desc = TensorDescriptor.from_tensor(weight, [block_w, block_k],
                                          gl.NVMMASharedLayout.get_default_for([block_w, block_k], gdt))
    x_desc = TensorDescriptor.from_tensor(x, [block_t, block_k],
                                          gl.NVMMASharedLayout.get_default_for([block_t, block_k], gdt))
    _kernel()[(g,)](w_desc, x_desc, bias if bias is not None else y, y, part, lock, m, n, n, y.stride(0),
                    whole, rem, k_blocks, g, segs, t_tiles, HAS_BIAS=bias is not None, SILU=silu,
                    BLOCK_W=block_w, BLOCK_T=block_t, BLOCK_K=block_k, STAGES=stages, num_warps=warps)
    return y


@functools.cache
def _kernel():
    """The Gluon kernel, built on first use (its imports fail or differ off Triton 3.6). The jit
    functions resolve names in this module's globals, hence the `global` imports."""
    global gluon, gl, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

    @gluon.jit
    def _produce(w_desc, x_desc, w_smem, u_smem, x_smem, ready, empty, up_off, n_dp, sk_start, n_all, k_blocks,
                 programs, pid, T_TILES, SILU: gl.constexpr, BLOCK_W: gl.constexpr, BLOCK_T: gl.constexpr,
                 BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
        nbytes: gl.constexpr = (BLOCK_W * (2 if SILU else 1) + BLOCK_T) * BLOCK_K * 2
        for i in range(0, n_all):
            b = _block(i, n_dp, sk_start, k_blocks, programs, pid)
            s = i % STAGES
            # a fresh barrier counts as having completed the phase before its first: parity 1 passes
            mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
            tile = b // k_blocks
            k0 = (b % k_blocks) * BLOCK_K
            row = (tile // T_TILES) * BLOCK_W
            bar = ready.index(s)
            mbarrier.expect(bar, nbytes)
            tma.async_copy_global_to_shared(w_desc, [row, k0], bar, w_smem.index(s))
            if SILU:
                tma.async_copy_global_to_shared(w_desc, [row + up_off, k0], bar, u_smem.index(s))
            tma.async_copy_global_to_shared(x_desc, [(tile % T_TILES) * BLOCK_T, k0], bar, x_smem.index(s))

    @gluon.jit
    def _block(i, n_dp, sk_start, k_blocks, programs, pid):
        """The i-th K block (tile-major number) of this program: whole tiles, then its stream-K range."""
        if i < n_dp:
            b = (pid + (i // k_blocks) * programs) * k_blocks + i % k_blocks
        else:
            b = sk_start + (i - n_dp)
        return b

    @gluon.jit
    def _epilogue(acc, acc_up, b_ptr, y_ptr, rn, rt, M, N, stride_y, HAS_BIAS: gl.constexpr, SILU: gl.constexpr):
        out_ty: gl.constexpr = y_ptr.dtype.element_ty
        live_n = rn < N
        if HAS_BIAS:
            acc += gl.expand_dims(gl.load(b_ptr + rn, mask=live_n, other=0.0).to(gl.float32), 1)
        if SILU:
            g = acc.to(out_ty).to(gl.float32)  # the gate/up products round to the model dtype first
            act = (g / (1.0 + gl.exp(-g))).to(out_ty).to(gl.float32)  # silu rounds, as F.silu does
            acc = act * acc_up.to(out_ty).to(gl.float32)
        ptrs = y_ptr + gl.expand_dims(rt, 0) * stride_y + gl.expand_dims(rn, 1)
        mask = gl.expand_dims(live_n, 1) & gl.expand_dims(rt < M, 0)
        gl.store(ptrs, acc.to(out_ty), mask=mask)

    @gluon.jit
    def _consume(w_smem, u_smem, x_smem, ready, empty, b_ptr, y_ptr, part_ptr, lock_ptr, M, N, stride_y,
                 n_dp, sk_start, n_all, whole, rem_div, k_blocks, programs, segs, pid, T_TILES,
                 HAS_BIAS: gl.constexpr, SILU: gl.constexpr, BLOCK_W: gl.constexpr,
                 BLOCK_T: gl.constexpr, STAGES: gl.constexpr, WARPS: gl.constexpr):
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                         instr_shape=[16, BLOCK_T, 16])
        acc = gl.zeros((BLOCK_W, BLOCK_T), dtype=gl.float32, layout=layout)
        acc_up = gl.zeros((BLOCK_W, BLOCK_T), dtype=gl.float32, layout=layout)
        rw = gl.arange(0, BLOCK_W, layout=gl.SliceLayout(1, layout))
        rtt = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(0, layout))
        WIDTH: gl.constexpr = BLOCK_W * (2 if SILU else 1)
        prev = n_all * 0  # the stage whose MMAs may still run (released one iteration late)
        pending = n_all < 0
        for i in range(0, n_all):
            b = _block(i, n_dp, sk_start, k_blocks, programs, pid)
            s = i % STAGES
            kb = b % k_blocks
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            fresh = (kb == 0) | (i == n_dp)  # a segment's first K block starts the sum
            xt = x_smem.index(s).permute((1, 0))
            acc = warpgroup_mma(w_smem.index(s), xt, acc, use_acc=fresh == 0, is_async=True)
            if SILU:
                acc_up = warpgroup_mma(u_smem.index(s), xt, acc_up, use_acc=fresh == 0, is_async=True)
                acc, acc_up = warpgroup_mma_wait(num_outstanding=2, deps=(acc, acc_up))
            else:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            # this stage's MMAs may still run; the previous stage's are done: free its shared memory
            mbarrier.arrive(empty.index(prev), pred=pending)
            prev = s
            pending = n_all >= 0
            if (kb == k_blocks - 1) | (i == n_all - 1):  # a segment ends: its tile's epilogue or partial
                if SILU:
                    acc, acc_up = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc_up))
                else:
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
                mbarrier.arrive(empty.index(s))
                pending = n_all < 0
                tile = b // k_blocks
                rn = (tile // T_TILES) * BLOCK_W + rw
                rt = (tile % T_TILES) * BLOCK_T + rtt
                # the programs that own the tile's first and last K block (whole tiles: this one)
                first = (((tile - whole) * k_blocks + 1) * programs - 1) // rem_div
                last = (((tile + 1 - whole) * k_blocks) * programs - 1) // rem_div
                if (tile < whole) | (first == last):
                    _epilogue(acc, acc_up, b_ptr, y_ptr, rn, rt, M, N, stride_y, HAS_BIAS, SILU)
                else:
                    # slot layout [tile, slot, weight row (gate | up), token row]
                    offs = gl.expand_dims(rw, 1) * BLOCK_T + gl.expand_dims(rtt, 0)
                    base = part_ptr + ((tile - whole) * segs) * (WIDTH * BLOCK_T)
                    gl.store(base + (pid - first) * (WIDTH * BLOCK_T) + offs, acc)
                    if SILU:
                        gl.store(base + (pid - first) * (WIDTH * BLOCK_T) + BLOCK_W * BLOCK_T + offs, acc_up)
                    gl.thread_barrier()  # every thread's partial is written before the counter says so
                    arrived = gl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
                    if arrived == last - first:  # the last piece sums the slots in slot order
                        acc = gl.zeros((BLOCK_W, BLOCK_T), dtype=gl.float32, layout=layout)
                        acc_up = gl.zeros((BLOCK_W, BLOCK_T), dtype=gl.float32, layout=layout)
                        for q in range(0, last - first + 1):
                            acc += gl.load(base + q * (WIDTH * BLOCK_T) + offs, cache_modifier=".cg")
                            if SILU:
                                acc_up += gl.load(base + q * (WIDTH * BLOCK_T) + BLOCK_W * BLOCK_T + offs,
                                                  cache_modifier=".cg")
                        _epilogue(acc, acc_up, b_ptr, y_ptr, rn, rt, M, N, stride_y, HAS_BIAS, SILU)
                        gl.atomic_xchg(lock_ptr + tile, 0)  # ready for the next replay

    @gluon.jit
    def _ws_kernel(w_desc, x_desc, b_ptr, y_ptr, part_ptr, lock_ptr, M, N, up_off, stride_y,
                   whole, rem, k_blocks, programs, segs, T_TILES,
                   HAS_BIAS: gl.constexpr, SILU: gl.constexpr, BLOCK_W: gl.constexpr,
                   BLOCK_T: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
        WARPS: gl.constexpr = gl.num_warps()
        pid = gl.program_id(0)
        n_dp = (whole // programs) * k_blocks  # whole tiles first: pid, pid + programs, ...
        sk_start = whole * k_blocks + pid * rem // programs  # then a range of the stream-K blocks
        n_all = n_dp + whole * k_blocks + (pid + 1) * rem // programs - sk_start
        dt: gl.constexpr = w_desc.dtype
        w_smem = gl.allocate_shared_memory(dt, [STAGES, BLOCK_W, BLOCK_K], w_desc.layout)
        if SILU:
            u_smem = gl.allocate_shared_memory(dt, [STAGES, BLOCK_W, BLOCK_K], w_desc.layout)
        else:
            u_smem = w_smem
        x_smem = gl.allocate_shared_memory(dt, [STAGES, BLOCK_T, BLOCK_K], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=1)
        gl.warp_specialize([
            (_consume, (w_smem, u_smem, x_smem, ready, empty, b_ptr, y_ptr, part_ptr, lock_ptr, M, N, stride_y,
                        n_dp, sk_start, n_all, whole, gl.maximum(rem, 1), k_blocks, programs, segs, pid, T_TILES,
                        HAS_BIAS, SILU, BLOCK_W, BLOCK_T, STAGES, WARPS)),
            (_produce, (w_desc, x_desc, w_smem, u_smem, x_smem, ready, empty, up_off, n_dp, sk_start, n_all, k_blocks,
                        programs, pid, T_TILES,
                        SILU, BLOCK_W, BLOCK_T, BLOCK_K, STAGES)),
        ], [1], [40])

    return _ws_kernel

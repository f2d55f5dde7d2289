"""Skinny GEMMs of the MTP step: y = x @ w^T for few rows (M = 12 per batch row) and weights that
must stream from HBM at the copy rate. cuBLAS reaches ~50% of the weight-read floor on the step's
2048-wide outputs at M = 12 (too few tiles to cover 132 SMs); here each program owns BLOCK_N
output channels of BLOCK_M rows and a slice of K, so small N still fills the GPU:

    grid = (N / BLOCK_N, SPLIT_K, M / BLOCK_M)

With SPLIT_K > 1 each program writes its fp32 partial tile to a workspace and bumps a per-tile
counter; the program that arrives last sums the partials in split order (fixed, so a replay
gives the same bits every time), applies the epilogue, and resets the counter for the next replay:
one kernel, no separate reduce launch.

Epilogues: bias (the QKV projection), and SiLU(gate) * up for the fused gate/up projection (a
program reads the gate rows n and the up rows I + n, so the [M, 2I] intermediate never exists;
both halves round to the model dtype before the SiLU, as the unfused path does).

Which kernel runs is chosen per (shape, M, epilogue) the first time a shape is seen outside a
graph capture (the warm-up before capture): the start-up shortlist of the swap-AB kernel
(swap_ab_gemm.py: weight rows on the wgmma M side, TMA-fed; this kernel's own shortlist where a shape
has none) and cuBLAS are timed inside a CUDA graph over enough weight copies that they stream
from HBM, not L2; the fastest wins, and cuBLAS stays where it wins. `GRAPHRT_STEP_GEMM`
overrides that (A/B runs): `auto` (default), `cublas` (never a Triton GEMM), `triton` (the fastest Triton config even where cuBLAS wins),
`noswab` (auto without the swap-AB candidates: the chooser before 2026-11-24's swap-AB pass).

Weight-only FP8 (`scale=`; not wired into the model's linears: that is the FP8 work's choice): e4m3
weights load as fp8 and upcast to x's dtype before the dot (exact: every e4m3 value is a bf16 /
fp16 value), a per-output-channel fp32 scale multiplies `acc` (after the split-K sum) before the
bias/SiLU; x stays bf16, so the weight bytes read halve and nothing else changes.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..layers import Linear
from ..timing import graph_call_ms
from . import env_choice, pdl
from .layer_ops import silu_mul
from .pdl_ops import gdc_launch_dependents, gdc_wait, prefetch_l2
from .swap_ab_gemm import SwabConfig, early_w, swab_candidates, swab_matmul, tma_ok

log = logging.getLogger(__name__)

MAX_ROWS = 384  # decode steps up to B=32 (12 rows each); row tiles above 128, cuBLAS decides by measurement
BLOCK_M_MAX = 128


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, lock_ptr, M, N, K, up_off, stride_x, stride_y,
                   prefetch_programs, scale_ptr,
                   HAS_BIAS: tl.constexpr, SILU: tl.constexpr, SPLIT_K: tl.constexpr, SCALED: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   PDL: tl.constexpr, PREFETCH: tl.constexpr, PF_CHUNKS: tl.constexpr, W_BYTES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    live_m = rm < M
    live_n = rn < N
    k_per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_lo = pid_k * k_per
    k_hi = tl.minimum(k_lo + k_per, K)
    if PDL:
        gdc_launch_dependents()
        if PREFETCH:  # the first wave pulls its weight slice into L2 while the previous kernel ends
            linear = (pid_m * tl.num_programs(1) + pid_k) * tl.num_programs(0) + pid_n
            if (pid_m == 0) & (linear < prefetch_programs):
                # one bulk prefetch per thread: [BLOCK_N rows, PF_CHUNKS pieces] = the block's thread count,
                # so no two threads fetch the same bytes; pieces 16-byte aligned (K % 16 == 0 on the host)
                piece = tl.cdiv(tl.cdiv(k_hi - k_lo, PF_CHUNKS), 16) * 16
                at = k_lo + tl.arange(0, PF_CHUNKS)[None, :] * piece
                size = tl.minimum(piece, k_hi - at)
                at = tl.where(size > 0, at, k_lo)
                size = tl.where(size > 0, size, 16) * W_BYTES
                rows = tl.minimum(rn, N - 1).to(tl.int64)[:, None]
                prefetch_l2(w_ptr + rows * K + at, size)
                if SILU:
                    prefetch_l2(w_ptr + (rows + up_off) * K + at, size)
        gdc_wait()  # activations, workspace and counters only after the previous kernel completed
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        live_k = kk < k_hi
        a = tl.load(x_ptr + rm[:, None] * stride_x + kk[None, :], mask=live_m[:, None] & live_k[None, :], other=0.0)
        # weights are read once per step: evict them first, keep activations and the KV cache in L2
        w = tl.load(w_ptr + rn[:, None] * K + kk[None, :], mask=live_n[:, None] & live_k[None, :], other=0.0,
                    eviction_policy="evict_first")
        # e4m3 weights (SCALED) upcast exactly: every e4m3 value is a bf16/fp16 value
        acc += tl.dot(a, tl.trans(w.to(a.dtype)))
        if SILU:
            u = tl.load(w_ptr + (rn[:, None] + up_off) * K + kk[None, :], mask=live_n[:, None] & live_k[None, :],
                        other=0.0, eviction_policy="evict_first")
            acc_up += tl.dot(a, tl.trans(u.to(a.dtype)))
    out_ty = y_ptr.dtype.element_ty
    if SPLIT_K > 1:
        tile = pid_m * tl.num_programs(0) + pid_n
        rows_all = tl.num_programs(2) * BLOCK_M
        part = part_ptr + (pid_k * rows_all + rm[:, None]) * N + rn[None, :]
        tl.store(part, acc, mask=live_n[None, :])
        tl.debug_barrier()  # every thread's partial is written before the counter says so
        arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # the last split of this tile reduces, in split order
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(SPLIT_K):
                acc += tl.load(part_ptr + (s * rows_all + rm[:, None]) * N + rn[None, :], mask=live_n[None, :],
                               other=0.0, cache_modifier=".cg")
            if SCALED:  # per-output-channel weight scale, on the summed product
                acc *= tl.load(scale_ptr + rn, mask=live_n, other=0.0)[None, :]
            if HAS_BIAS:
                acc += tl.load(b_ptr + rn, mask=live_n, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], acc.to(out_ty),
                     mask=live_m[:, None] & live_n[None, :])
            tl.atomic_xchg(lock_ptr + tile, 0)  # ready for the next replay
    else:
        if SCALED:
            acc *= tl.load(scale_ptr + rn, mask=live_n, other=0.0)[None, :]
            if SILU:
                acc_up *= tl.load(scale_ptr + rn + up_off, mask=live_n, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=live_n, other=0.0).to(tl.float32)[None, :]
        if SILU:
            g = acc.to(out_ty).to(tl.float32)  # the gate/up product rounds to the model dtype first
            act = (g / (1.0 + tl.exp(-g))).to(out_ty).to(tl.float32)  # silu rounds, as F.silu does
            acc = act * acc_up.to(out_ty).to(tl.float32)
        tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], acc.to(out_ty), mask=live_m[:, None] & live_n[None, :])


class Config(tuple):
    """(block_n, block_k, split_k, warps, stages)"""

    def __new__(cls, block_n, block_k, split_k, warps, stages):
        return super().__new__(cls, (block_n, block_k, split_k, warps, stages))

    def __repr__(self):
        return "n{}k{}s{}w{}p{}".format(*self)


def block_m_for(m: int) -> int:
    return max(16, min(BLOCK_M_MAX, triton.next_power_of_2(m)))


# Per-device scratch: split-K workspaces and tile counters, allocated outside graph capture and
# reused by every layer (kernels of one stream run in order).
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device, rows: int, n: int, split: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(device), rows, n, split, tiles)
    if key not in _scratch:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"skinny_gemm: workspace {key} first needed inside a graph capture")
        _scratch[key] = (torch.empty(split * rows * n, dtype=torch.float32, device=device),
                         torch.zeros(tiles, dtype=torch.int32, device=device))
    return _scratch[key]


def skinny_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu: bool = False,
                  config: Config = Config(32, 128, 1, 4, 4), prefetch: bool | None = None,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (rows contiguous) @ weight[N', K]^T (+ bias) -> [M, N'], or with silu: weight is
    [2I, K] (gate rows, then up rows) and the result is silu(x @ gate^T) * (x @ up^T) [M, I].

    Weight-only FP8: weight in float8_e4m3fn with `scale` [N'] fp32 (one per weight row, gate and
    up rows alike): the product is x @ (weight * scale[:, None])^T, x and the output stay in x's
    dtype; the scale multiplies the fp32 accumulator (after the split-K sum) before bias / SiLU."""
    m, k = x.shape
    n_w, k_w = weight.shape
    assert k == k_w and x.stride(1) == 1 and weight.is_contiguous()
    fp8 = weight.dtype == torch.float8_e4m3fn
    if fp8 != (scale is not None):
        raise ValueError("skinny_matmul: float8_e4m3fn weights take a per-row `scale`, other weights none")
    if fp8 and (scale.shape != (n_w,) or scale.dtype != torch.float32 or not scale.is_contiguous()):
        raise ValueError(f"skinny_matmul: scale must be contiguous float32 [{n_w}], not {scale.dtype} {tuple(scale.shape)}")
    if not fp8 and weight.dtype != x.dtype:
        raise ValueError(f"skinny_matmul: weight dtype {weight.dtype} differs from x's {x.dtype}")
    block_n, block_k, split, warps, stages = config
    if silu and (split > 1 or bias is not None):
        raise ValueError("the SiLU epilogue takes no split-K and no bias")
    n = n_w // 2 if silu else n_w
    block_m = block_m_for(m)
    grid = (triton.cdiv(n, block_n), split, triton.cdiv(m, block_m))
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if split > 1:
        part, lock = _workspace(x.device, grid[2] * block_m, n, split, grid[0] * grid[2])
    else:
        part = lock = y
    launch = pdl.launch(x)
    # the L2 prefetch needs 16-byte-aligned row pieces (cp.async.bulk)
    prefetch = bool(launch["PDL"] and (prefetch_default() if prefetch is None else prefetch) and k % 16 == 0
                    and weight.data_ptr() % 16 == 0)
    _skinny_kernel[grid](x, weight, bias if bias is not None else y, y, part, lock, m, n, k, n, x.stride(0), y.stride(0),
                         _sm_count(x.device), scale if fp8 else y, HAS_BIAS=bias is not None, SILU=silu,
                         SPLIT_K=split, SCALED=fp8, BLOCK_M=block_m,
                         BLOCK_N=block_n, BLOCK_K=block_k, PREFETCH=prefetch, PF_CHUNKS=max(1, 32 * warps // block_n),
                         W_BYTES=weight.element_size(), num_warps=warps, num_stages=stages, **launch)
    return y


def prefetch_default() -> bool:
    """GRAPHRT_STEP_PREFETCH=1 turns on the pre-wait L2 weight prefetch (PDL launches only). Off by
    default: its first version (each row's prefetch issued by every thread that held the row) was
    measured slower (H100, B=1 step 3.51 -> 3.77 ms; the 36-layer GEMM chain at M=12 2.53 -> 2.98
    ms); this one issues each byte's prefetch once (docs/notes.md has the numbers)."""
    return env_choice("GRAPHRT_STEP_PREFETCH", ("0", "1")) == "1"


_sms: dict[str, int] = {}


def _sm_count(device) -> int:
    key = str(device)
    if key not in _sms:
        _sms[key] = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return _sms[key]


def candidates(m: int, n: int, k: int, silu: bool) -> list[Config]:
    """Configs worth timing for one shape: tiles small enough that ~1-4 programs per SM stream
    the weights, split-K where N alone gives too few tiles, shared memory within budget."""
    block_m = block_m_for(m)
    out = []
    for block_n in (16, 32, 64):
        for block_k in (128, 256):
            for split in ((1,) if silu else (1, 2, 4, 8)):
                tiles = triton.cdiv(n, block_n) * split
                if not 100 <= tiles <= 1100 or k // split < block_k:
                    continue
                per_stage = (block_m + block_n * (2 if silu else 1)) * block_k * 2
                stages = max(2, min(5, (160 * 1024) // per_stage))
                if stages < 3 and block_k == 256:
                    continue
                out.append(Config(block_n, block_k, split, 4, stages))
    return out


# Short lists timed at start-up (the full sweep is benchmarks/skinny_gemm_tune.py): a few configs
# per shape class, so a cold start compiles a handful of kernels per shape, not dozens.
def shortlist(m: int, n: int, k: int, silu: bool) -> list[Config]:
    if silu:
        picks = [(32, 128, 1), (16, 256, 1), (64, 128, 1)]
    elif k >= 4 * n:  # long K, few outputs (down)
        picks = [(16, 256, 2), (32, 128, 4), (16, 256, 1)]  # H100 sweep, M=12: 21.6 / 21.0 / - us
    else:  # qkv, o
        picks = [(16, 256, 1), (16, 128, 2), (32, 128, 4)]
    full = {c[:3]: c for c in candidates(m, n, k, silu)}
    return [full[p] for p in picks if p in full]


def time_candidates(m: int, n_w: int, k: int, dtype, device, bias: bool, silu: bool,
                    configs: list[Config] | None = None) -> dict:
    """{config or "cublas": ms per call}, each timed over weight copies that together exceed the L2
    (so weights stream from HBM, as in the step's 36 layers). Configs that fail to compile are left out."""
    copies = min(64, max(2, -(-200 * 2**20 // (n_w * k * 2))))  # small weights: L2-resident in the step too
    gen = torch.Generator(device=device).manual_seed(0)
    ws = [torch.randn(n_w, k, device=device, dtype=dtype, generator=gen) * 0.02 for _ in range(copies)]
    b = torch.randn(n_w, device=device, dtype=dtype, generator=gen) if bias else None
    x = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    reps = copies * max(1, 8 // copies)
    out = {}

    def cublas(i):
        y = F.linear(x, ws[i % copies], b)
        if silu:
            y = silu_mul(y)
        return y

    out["cublas"] = graph_call_ms(cublas, reps)
    for cfg in configs if configs is not None else candidates(m, n_w // 2 if silu else n_w, k, silu):
        try:
            run = swab_matmul if isinstance(cfg, SwabConfig) else skinny_matmul
            run(x, ws[0], b, silu, cfg)  # compile outside the capture
            out[cfg] = graph_call_ms(lambda i: run(x, ws[i % copies], b, silu, cfg), reps)
        except Exception as e:  # noqa: BLE001  (out of shared memory / registers: not a candidate)
            log.info("skinny_gemm %s skipped: %s", cfg, str(e).splitlines()[0][:120])
    ws.clear()  # the copies (up to 200 MB) go before the next shape's
    return out


_choice: dict[tuple, Config | SwabConfig | None] = {}  # (m, n_w, k, dtype, bias, silu, mode, pdl, prefetch, early, margin) -> config; None = cuBLAS
timings: dict[tuple, dict] = {}  # what was measured (keyed as _choice, less the margin), for benchmarks
choose_seconds = 0.0  # start-up time spent measuring (compiles included)


def mode() -> str:
    return env_choice("GRAPHRT_STEP_GEMM", ("auto", "cublas", "triton", "noswab"))


def choose(m: int, weight: torch.Tensor, bias: bool, silu: bool) -> Config | SwabConfig | None:
    """The kernel for this call: a Config (this kernel), a SwabConfig (swap-AB kernel), or None for
    cuBLAS (+ silu_mul)."""
    how = mode()
    if how == "cublas" or m > MAX_ROWS or not weight.is_cuda or weight.dtype not in (torch.float16, torch.bfloat16):
        return None
    n_w, k = weight.shape
    # PDL changes what wins (Triton kernels chain, cuBLAS ends a chain): measured per setting
    chained = pdl.enabled(weight, m)
    margin = CHAIN_MARGIN if chained and chain_mode() == "margin" else 0.0
    # the swap-AB early weight reads (GRAPHRT_STEP_EARLY_W) act on PDL launches only: timed per setting there
    early = early_w() if chained else (0, 0)
    key = (m, n_w, k, weight.dtype, bias, silu, how, chained, prefetch_default(), early, margin)
    if key not in _choice:
        if torch.cuda.is_current_stream_capturing():  # never measured: the warm-up did not see it
            log.warning("skinny_gemm: shape %s first seen inside a capture; using cuBLAS", key[:3])
            return None
        configs = configs_to_time(m, n_w, k, silu, how, tma_ok(weight))
        if not configs:  # too few output tiles for this kernel's layout (small models): cuBLAS, untimed
            _choice[key] = None
            return None
        if key[:-1] not in timings:  # timed once per shape; the margin only changes the pick
            global choose_seconds
            t0 = time.perf_counter()
            timings[key[:-1]] = time_candidates(m, n_w, k, weight.dtype, weight.device, bias, silu, configs)
            choose_seconds += time.perf_counter() - t0
        t = timings[key[:-1]]
        best = fastest(t, how, margin)
        ours = {c: v for c, v in t.items() if c != "cublas"}
        _choice[key] = best
        log.info("skinny_gemm M=%d N=%d K=%d silu=%s: %s (cublas %.1f us, best %s)", m, n_w, k, silu, best,
                 t["cublas"] * 1e3, None if not ours else f"{min(ours.values()) * 1e3:.1f} us")
    return _choice[key]


def configs_to_time(m: int, n_w: int, k: int, silu: bool, how: str, weight_tma_ok: bool) -> list:
    """What the chooser times beside cuBLAS for one shape: the swap-AB shortlist where it has one
    (weights the copy engine can address, shapes big enough), else this kernel's shortlist; with
    `noswab` always this kernel's (the chooser before the swap-AB kernel). This kernel won no
    3B step shape against the swap-AB kernel (H100, B = 1/8/32, 2026-11-24, docs/notes.md), so
    timing both would only add compiles to a cold start."""
    n = n_w // 2 if silu else n_w
    if how != "noswab" and weight_tma_ok:
        swab = swab_shortlist(m, n, k, silu)
        if swab:
            return swab
    return shortlist(m, n, k, silu)


def fastest(t: dict, how: str, margin: float = 0.0):
    """The pick from {config or "cublas": ms}: the fastest Triton config, or None (cuBLAS) where
    cuBLAS is as fast or faster (ties go to cuBLAS) or nothing ran; `triton` mode ignores cuBLAS.
    margin: inside a PDL chain cuBLAS must be that fraction faster than the best Triton config."""
    ours = {c: v for c, v in t.items() if c != "cublas"}
    best = min(ours, key=ours.get) if ours else None
    if how != "triton" and (best is None or t["cublas"] * (1 + margin) <= ours[best]):
        return None
    return best


# A cuBLAS GEMM ends the step's PDL chain (the next kernel's launch and prologue no longer overlap
# it), which the chooser's stand-alone timing does not see: H100, B=1 QKV (M=12 N=2560) timed cuBLAS
# 7.10 vs swap-AB 7.13 us and the step with cuBLAS there read 3.135 ms against 3.07 with swap-AB.
CHAIN_MARGIN = 0.05


def chain_mode() -> str:
    """GRAPHRT_STEP_GEMM_CHAIN=margin|plain (A/B): in a PDL chain, pick cuBLAS only where it is
    CHAIN_MARGIN faster (default), or on any lead (plain: the chooser before)."""
    return env_choice("GRAPHRT_STEP_GEMM_CHAIN", ("margin", "plain"))


def swab_shortlist(m: int, n: int, k: int, silu: bool) -> list[SwabConfig]:
    """Swap-AB configs timed at start-up: of swap_ab_gemm.swab_candidates (the tune's list), the
    full token tile and (a) BLOCK_K 128, the first split, the depth nearest 6 stages, (b) BLOCK_K
    64 at the deepest pipeline with each split on offer, for each weight-tile height on offer;
    (c) the candidates' pointer-load entry (the first of (b) for 64-row weight tiles). Every
    winner of the H100 sweep at B = 1, 8, 32 (docs/notes.md, 2026-11-24) is one of these."""
    cands = swab_candidates(m, n, k, silu)
    if not cands:
        return []
    block_t = max(c[1] for c in cands)
    out = []
    for block_w in sorted({c[0] for c in cands}):
        full = [c for c in cands if c[0] == block_w and c[1] == block_t and c[6]]
        for block_k in (128, 64):
            same = [c for c in full if c[2] == block_k]
            if not same:
                continue
            if block_k == 128:  # the first split (candidates list it first), the depth nearest 6
                first = [c for c in same if c[3] == same[0][3]]
                out.append(min(first, key=lambda c: abs(c[5] - 6)))
            else:  # every split on offer, at the deepest pipeline
                deep = [c for c in same if c[5] == max(d[5] for d in same)]
                out += deep
    # and through pointer loads (the candidates' fallback entry)
    out.append(next(c for c in cands if not c[6]))
    return out


def run_choice(x: torch.Tensor, weight: torch.Tensor, bias, silu: bool, cfg):
    """The chosen Triton kernel on x. A TMA swap-AB config on an x the copy engine cannot address
    (unaligned view) runs the same tiles with pointer loads."""
    if isinstance(cfg, SwabConfig):
        if cfg[6] and not tma_ok(x):
            cfg = SwabConfig(*cfg[:6], False)
        return swab_matmul(x, weight, bias, silu, cfg)
    return skinny_matmul(x, weight, bias, silu, cfg)


def _plain(module) -> bool:
    """A bf16/fp16 `graphrt.layers.Linear` (other modules, e.g. FP8 linears, run themselves)."""
    return type(module) is Linear


def linear(x: torch.Tensor, module) -> torch.Tensor:
    """module(x) for a graphrt Linear, on this kernel where it was measured faster."""
    if _plain(module) and x.is_cuda:
        cfg = choose(x.shape[0], module.weight, module.bias is not None, False)
        if cfg is not None:
            return run_choice(x, module.weight, module.bias, False, cfg)
    return module(x)


def gate_up_silu(x: torch.Tensor, module) -> torch.Tensor:
    """silu(gate) * up of the fused gate/up projection, in the GEMM's epilogue where it pays."""
    if _plain(module) and module.bias is None and x.is_cuda:
        cfg = choose(x.shape[0], module.weight, False, True)
        if cfg is not None:
            return run_choice(x, module.weight, None, True, cfg)
    return silu_mul(module(x))

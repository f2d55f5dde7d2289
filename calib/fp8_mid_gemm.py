"""An FP8 GEMM in Triton for 65-1024 rows (MTP steps at B >= 8, the B=1 prefill).

At these row counts the LM's narrow-N shapes (o / down: N=2048) give torch._scaled_mm only 16-64
output tiles of 128x128 on the H100's 132 SMs. This kernel covers more SMs with smaller tiles and
split-K:

    grid = (N / BLOCK_N, M / BLOCK_M, SPLIT_K)

Each program multiplies an e4m3 x tile by an e4m3 weight tile on the FP8 tensor cores (both operands
K-major, as they lie in memory: x [M, K] and the weight [N, K] row-major) into fp32. With SPLIT_K > 1
each program writes its unscaled partial to a workspace and bumps the tile's counter; the program that
arrives last sums the partials in split order (the same bits on every replay), applies the epilogue
and resets the counter for the next call. Epilogue: row scale x channel scale (+ bias) -> bf16, as in
the row-wise _scaled_mm.

Config per (row bucket, N, K, bias): timed once at warm-up, outside graph capture, inside a CUDA graph
over weight copies larger than the L2 at the bucket's row count, against _scaled_mm; the faster one is
kept ("cublas" = _scaled_mm), and eager calls and graphs at one row count get the same choice. The
split-K workspace of the chosen config is allocated then, sized for the bucket. GRAPHRT_FP8_MID=off
keeps _scaled_mm for every row count (A/B).
"""

from __future__ import annotations

import logging
import time

import torch

from graphrt.kernels import env_choice

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

log = logging.getLogger(__name__)

MID_MIN_ROWS = 65  # up to 64 rows: the skinny kernel (calib/triton_gemm.py)
MID_ROW_BUCKETS = (128, 256, 384, 512, 768, 1024)
TUNE_MIN_WEIGHT = 2**20  # smaller weights (test models) keep _scaled_mm, untimed

if triton is not None:
    from .triton_gemm import split_k_sum

    @triton.jit
    def _mid_fp8(x_ptr, w_ptr, rs_ptr, ws_ptr, b_ptr, y_ptr, part_ptr, lock_ptr, M, N, K, stride_x, stride_rs,
                 HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        num_n = tl.num_programs(0)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        # rows / channels past the edge read a valid row instead (no load masks); their results are not stored
        lm = rm % M
        ln = rn % N
        k_per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
        k_lo = pid_k * k_per
        k_hi = tl.minimum(k_lo + k_per, K)
        a_ptrs = x_ptr + lm[:, None] * stride_x + (k_lo + rk)[None, :]
        b_ptrs = w_ptr + ln[:, None] * K + (k_lo + rk)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                live_k = (k0 + rk) < k_hi
                a = tl.load(a_ptrs, mask=live_k[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=live_k[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        last = True
        if SPLIT_K > 1:  # the skinny kernel's reduction, over this launch's M tiles
            acc, last = split_k_sum(acc, part_ptr, lock_ptr, pid_m * num_n + pid_n, pid_k, rm, rn, N,
                                    tl.num_programs(1) * BLOCK_M, SPLIT_K)
        if last:
            rs = tl.load(rs_ptr + rm * stride_rs, mask=rm < M, other=0.0)
            ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
            out = acc * rs[:, None] * ws[None, :]
            if HAS_BIAS:
                out += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rm[:, None] * N + rn[None, :], out.to(tl.bfloat16),
                     mask=(rm < M)[:, None] & (rn < N)[None, :])


def mid_switch() -> str:
    """GRAPHRT_FP8_MID: `auto` (default: this kernel where the warm-up timing says it is faster than
    _scaled_mm, 65-1024 rows) or `off` (_scaled_mm above 64 rows, as before)."""
    return env_choice("GRAPHRT_FP8_MID", ("auto", "off"))


def mid_bucket(m: int) -> int | None:
    return next((b for b in MID_ROW_BUCKETS if m <= b), None) if m >= MID_MIN_ROWS else None


# Split-K scratch per (device, N, SPLIT_K, padded rows, tiles): fp32 partials and per-tile counters,
# allocated outside graph capture, shared by every linear of that shape (kernels of one stream run in order).
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device, n: int, split: int, rows: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    # the smallest workspace at least this big serves (a bucket's is allocated for its largest row count)
    fits = [key for key in _scratch if key[:3] == (str(device), n, split) and key[3] >= rows and key[4] >= tiles]
    if fits:
        return _scratch[min(fits, key=lambda key: key[3])]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"FP8 mid GEMM: split-K workspace N={n} split={split} rows={rows} first needed "
                           "inside a graph capture")
    key = (str(device), n, split, rows, tiles)
    _scratch[key] = (torch.empty(split * rows * n, dtype=torch.float32, device=device),
                     torch.zeros(tiles, dtype=torch.int32, device=device))
    return _scratch[key]


def mid_fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, row_scale: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, config: tuple, reserve_rows: int | None = None) -> torch.Tensor:
    """x [M, K] e4m3 (rows contiguous), row_scale [M, 1] fp32, w_fp8 [N, K] e4m3 row-major, w_scale [1, N]
    fp32, bias [N] or None -> [M, N] bf16. config = (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages).
    reserve_rows: size the split-K workspace for this many rows (a bucket's largest)."""
    m, k = x.shape
    n = w_fp8.shape[0]
    if x.dtype != torch.float8_e4m3fn or w_fp8.dtype != torch.float8_e4m3fn:
        raise ValueError("mid_fp8_linear takes e4m3 x and weights")
    if x.stride(1) != 1:
        x = x.contiguous()
    bm, bn, bk, split, warps, stages = config
    m_tiles, n_tiles = triton.cdiv(m, bm), triton.cdiv(n, bn)
    y = torch.empty((m, n), dtype=torch.bfloat16, device=x.device)
    if split > 1:
        rows = triton.cdiv(max(m, reserve_rows or 0), bm) * bm
        part, lock = _workspace(x.device, n, split, rows, (rows // bm) * n_tiles)
    else:
        part, lock = y, y
    _mid_fp8[(n_tiles, m_tiles, split)](
        x, w_fp8, row_scale, w_scale, bias if bias is not None else w_scale, y, part, lock, m, n, k, x.stride(0),
        row_scale.stride(0),
        HAS_BIAS=bias is not None, SPLIT_K=split, EVEN_K=k % (split * bk) == 0, BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return y


def shortlist(rows: int, n: int, k: int, sms: int = 132) -> list[tuple]:
    """Configs timed per shape: tiles of 64/128 rows x 64-256 channels, each without split-K and, where
    the output tiles alone fill under ~1.5 waves of the SMs, split in 2 / 4 (>= 4 K blocks a split)."""
    base = [(64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (128, 128, 128, 8, 4),
            (128, 128, 128, 4, 4), (128, 256, 128, 8, 3), (64, 256, 128, 8, 3)]
    out = []
    for bm, bn, bk, warps, stages in base:
        tiles = triton.cdiv(rows, bm) * triton.cdiv(n, bn)
        for split in (1, 2, 4):
            if split > 1 and (tiles > 1.5 * sms or k // split < 4 * bk):
                continue
            out.append((bm, bn, bk, split, warps, stages))
    return out


def _l2_copies(n: int, k: int) -> int:
    return min(64, max(2, -(-200 * 2**20 // (n * k))))


def time_mid(rows: int, n: int, k: int, has_bias: bool, device, configs, fast_accum: bool = True,
             reps: int | None = None) -> dict:
    """{config or "cublas": us per call} at `rows` rows, each in a CUDA graph over weight copies that
    together exceed the L2. Configs that fail to compile are left out."""
    from graphrt.timing import graph_call_ms

    copies = _l2_copies(n, k)
    gen = torch.Generator(device=device).manual_seed(0)
    ws = [(torch.randn(n, k, device=device, generator=gen) * 8).to(torch.float8_e4m3fn) for _ in range(copies)]
    w_scale = torch.rand(1, n, device=device, generator=gen) + 0.5
    bias = torch.randn(n, device=device, generator=gen).to(torch.bfloat16) if has_bias else None
    x = torch.randn(rows, k, device=device, generator=gen).to(torch.float8_e4m3fn)
    rs = torch.ones(rows, 1, device=device)
    reps = reps or copies * max(1, 8 // copies)
    out = {}

    def cublas(i):
        return torch._scaled_mm(x, ws[i % copies].t(), scale_a=rs, scale_b=w_scale, bias=bias,
                                out_dtype=torch.bfloat16, use_fast_accum=fast_accum)
    out["cublas"] = 1e3 * graph_call_ms(cublas, reps)
    for cfg in configs:
        try:
            mid_fp8_linear(x, ws[0], rs, w_scale, bias, cfg)  # compile outside capture
            call = lambda i, cfg=cfg: mid_fp8_linear(x, ws[i % copies], rs, w_scale, bias, cfg)  # noqa: E731
            out[cfg] = 1e3 * graph_call_ms(call, reps)
        except Exception as exc:  # noqa: BLE001  (out of shared memory / registers: not a candidate)
            log.info("FP8 mid config %s skipped: %s", cfg, str(exc).splitlines()[0][:120])
    return out


_CHOICE: dict[tuple, tuple | str] = {}  # (device, bucket, N, K, bias) -> config or "cublas"
TIMINGS: dict[tuple, dict] = {}  # what the chooser measured (benchmarks read it)
choose_seconds = 0.0  # start-up time spent choosing (compiles included)


def choose_mid(m: int, n: int, k: int, has_bias: bool, device, fast_accum: bool = True) -> tuple | str:
    """The config for this row count's bucket and weight shape, or "cublas" (_scaled_mm)."""
    bucket = mid_bucket(m)
    if bucket is None or device.type != "cuda" or triton is None or n * k < TUNE_MIN_WEIGHT:
        return "cublas"
    key = (str(device), bucket, n, k, has_bias)
    if key not in _CHOICE:
        if torch.cuda.is_current_stream_capturing():  # the warm-up did not see it: _scaled_mm, said once
            log.warning("FP8 mid GEMM: %d rows N=%d K=%d first seen inside a capture; _scaled_mm", m, n, k)
            _CHOICE[key] = "cublas"
            return "cublas"
        global choose_seconds
        t0 = time.perf_counter()
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        t = time_mid(bucket, n, k, has_bias, device, shortlist(bucket, n, k, sms), fast_accum)
        best = min(t, key=t.get)
        if best != "cublas" and best[3] > 1:  # the workspace for every row count of the bucket, now
            rows = triton.cdiv(bucket, best[0]) * best[0]
            _workspace(device, n, best[3], rows, (rows // best[0]) * triton.cdiv(n, best[1]))
        choose_seconds += time.perf_counter() - t0
        TIMINGS[key] = t
        _CHOICE[key] = best
        log.info("FP8 mid GEMM %d rows N=%d K=%d: %s (%.1f us; _scaled_mm %.1f us)", bucket, n, k, best,
                 t[best], t["cublas"])
    return _CHOICE[key]

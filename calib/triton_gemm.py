"""A skinny FP8 GEMM in Triton for decode-step row counts (M <= 64).

At the step's 12 rows per sequence, torch._scaled_mm's row-wise FP8 kernel was slower than the
bf16 GEMM on three of the LM's four shapes (H100, 2026-11-24: qkv 8.2 vs 5.4 us, down 35.1 vs
22.8 us), so FP8Linear uses this kernel for M <= SKINNY_MAX_ROWS on CUDA.

    grid = (N / BLOCK_N, SPLIT_K)

Each program owns BLOCK_N output channels of all M rows and a 1/SPLIT_K slice of K: the weight
tile is read once (evict-first: it is not read again this step), upcast to fp16 (every e4m3 value
is exact in fp16) and multiplied on the tensor cores with float32 accumulation. With SPLIT_K > 1
each program writes its unscaled fp32 partial to a workspace and bumps a per-tile counter; the
program that arrives last sums the partials in split order (fixed: every replay gives the same
bits), applies the epilogue and resets the counter, in the same launch. Epilogue: row x channel
scales, bias, bf16.

The input is either e4m3 with its [M, 1] row scales (written by a fused producer or the
quantizer), or bf16 with the static scale: then the kernel quantizes each x tile itself by the
rule of calib/quantize.py (q = e4m3(clamp(fp32(x) * inv_scale, +-448))), the same bytes the
quantizer would write, so a static linear on this path costs one launch instead of two.

The tile config is chosen per weight shape (N, K) by measurement the first time the shape is
seen outside a graph capture: a short list per shape class, each timed inside a CUDA graph over
weight copies larger than the L2 at 12 rows (the B=1 step); one config per shape for every row
count, so a row's result does not depend on its batch-mates. GRAPHRT_FP8_SKINNY_TUNE=off keeps
the untuned config of skinny_config (no split-K; A/B runs).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from graphrt.kernels import env_choice
from graphrt.timing import graph_call_ms

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

log = logging.getLogger(__name__)

if triton is not None:

    @triton.jit
    def split_k_sum(acc, part_ptr, lock_ptr, tile, pid_k, rm, rn, N, rows, SPLIT_K: tl.constexpr):
        """Deterministic split-K: this split's fp32 partial of output tile `tile` (rows rm of a workspace of
        `rows` rows per split, channels rn) goes to the workspace, and the split that arrives last sums all
        of them in split order (the same bits on every call) and resets the tile's counter for the next call
        or replay. Returns (the sum, or this split's partial, and whether this program holds the sum)."""
        live_n = (rn < N)[None, :]
        tl.store(part_ptr + (pid_k * rows + rm[:, None]) * N + rn[None, :], acc, mask=live_n)
        tl.debug_barrier()  # every thread's partial is written before the counter says so
        arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
        last = arrived == SPLIT_K - 1
        if last:
            acc = tl.zeros(acc.shape, dtype=tl.float32)
            for s in range(SPLIT_K):
                acc += tl.load(part_ptr + (s * rows + rm[:, None]) * N + rn[None, :], mask=live_n, other=0.0,
                               cache_modifier=".cg")
            tl.atomic_xchg(lock_ptr + tile, 0)
        return acc, last

    @triton.jit
    def _skinny_fp8(x_ptr, w_ptr, rs_ptr, ws_ptr, b_ptr, y_ptr, part_ptr, lock_ptr, inv_ptr, M, N, K, stride_x,
                    X_FP8: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rm = tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        live_m = rm < M
        live_n = rn < N
        k_per = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
        k_lo = pid_k * k_per
        k_hi = tl.minimum(k_lo + k_per, K)
        if not X_FP8:
            inv = tl.load(inv_ptr)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kk = k0 + rk
            live_k = kk < k_hi
            a = tl.load(x_ptr + rm[:, None] * stride_x + kk[None, :], mask=live_m[:, None] & live_k[None, :],
                        other=0.0)
            if not X_FP8:  # the static quantizer's rule, in registers
                a = tl.minimum(tl.maximum(a.to(tl.float32) * inv, -448.0), 448.0).to(tl.float8e4nv)
            b = tl.load(w_ptr + rn[:, None] * K + kk[None, :], mask=live_n[:, None] & live_k[None, :], other=0.0,
                        eviction_policy="evict_first")
            acc += tl.dot(a.to(tl.float16), tl.trans(b.to(tl.float16)))
        last = True
        if SPLIT_K > 1:
            acc, last = split_k_sum(acc, part_ptr, lock_ptr, pid_n, pid_k, rm, rn, N, BLOCK_M, SPLIT_K)
        if last:
            if X_FP8:
                rs = tl.load(rs_ptr + rm, mask=live_m, other=0.0)
            else:  # static: every row has the calibrated scale
                rs = tl.zeros((BLOCK_M,), dtype=tl.float32) + tl.load(rs_ptr)
            ws = tl.load(ws_ptr + rn, mask=live_n, other=0.0)
            out = acc * rs[:, None] * ws[None, :]
            if HAS_BIAS:
                out += tl.load(b_ptr + rn, mask=live_n, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rm[:, None] * N + rn[None, :], out.to(tl.bfloat16), mask=live_m[:, None] & live_n[None, :])


SKINNY_MAX_ROWS = 64
TUNE_ROWS = 12  # the B=1 step's rows: what the chooser times at
TUNE_MIN_WEIGHT = 2**20  # smaller weights (test models) keep the untuned config, untimed


def skinny_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, warps, stages) of the untuned kernel: the fastest of four measured configs
    per LM shape (H100, 12 rows, no split-K): wide N -> 64x128, long K -> 16x512 (3 stages), else 32x256."""
    if n >= 8192:
        return 64, 128, 4, 4
    if k >= 8192:
        return 16, 512, 4, 3
    return 32, 256, 4, 4


def untuned(n: int, k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_K, SPLIT_K, warps, stages) of the untuned kernel."""
    bn, bk, warps, stages = skinny_config(n, k)
    return bn, bk, 1, warps, stages


def shortlist(n: int, k: int) -> list[tuple[int, int, int, int, int]]:
    """Configs the chooser times per shape class (the full grid: benchmarks/fp8_skinny_ab.py): the
    untuned one, and tiles / splits that put ~1-4 programs on each of the H100's 132 SMs."""
    if n >= 8192:  # gate/up: N alone gives enough tiles
        picks = [(32, 256, 1, 4, 4), (64, 256, 1, 4, 3), (128, 128, 1, 8, 3), (64, 128, 2, 4, 4)]
    elif k >= 4 * n:  # down: few outputs, long K
        picks = [(16, 256, 2, 4, 4), (16, 256, 4, 4, 4), (32, 256, 4, 4, 4), (32, 128, 8, 4, 4), (64, 128, 8, 4, 4)]
    else:  # qkv, o
        picks = [(16, 256, 1, 4, 4), (16, 128, 2, 4, 4), (32, 128, 2, 4, 4), (32, 128, 4, 4, 4), (16, 256, 2, 4, 4)]
    out = [untuned(n, k)]
    for c in picks:
        if c not in out and k // c[2] >= c[1]:
            out.append(c)
    return out


# Split-K scratch per (device, BLOCK_M, N, SPLIT_K, tiles): fp32 partials and per-tile counters, allocated
# outside graph capture and shared by every linear of that shape (kernels of one stream run in order).
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device, block_m: int, n: int, split: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(device), block_m, n, split, tiles)
    if key not in _scratch:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"skinny FP8 GEMM: split-K workspace {key} first needed inside a graph capture")
        _scratch[key] = (torch.empty(split * block_m * n, dtype=torch.float32, device=device),
                         torch.zeros(tiles, dtype=torch.int32, device=device))
    return _scratch[key]


def skinny_fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, row_scale: torch.Tensor, w_scale: torch.Tensor,
                      bias: torch.Tensor | None = None, block_n: int | None = None, block_k: int | None = None,
                      num_warps: int | None = None, num_stages: int | None = None, *, split_k: int = 1,
                      config: tuple | None = None, inv_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (M <= 64), w_fp8 [N, K] e4m3, w_scale [1, N] fp32 -> [M, N] bf16.

    x e4m3 with row_scale [M, 1] fp32; or x bf16 (rows contiguous) with inv_scale and row_scale the
    static scale (fp32 scalars): quantized in the kernel. config = (BLOCK_N, BLOCK_K, SPLIT_K, warps,
    stages), else the untuned one (the loose block_* arguments override parts of it)."""
    m, k = x.shape
    n = w_fp8.shape[0]
    if m > SKINNY_MAX_ROWS:
        raise ValueError(f"skinny_fp8_linear is for M <= {SKINNY_MAX_ROWS}")
    x_fp8 = inv_scale is None
    if x_fp8 != (x.dtype == torch.float8_e4m3fn):
        raise ValueError("skinny_fp8_linear takes e4m3 x with row scales, or bf16 x with inv_scale")
    if x.stride(1) != 1:
        x = x.contiguous()
    bn, bk, split, warps, stages = config or untuned(n, k)
    if config is None:
        bn, bk, split = block_n or bn, block_k or bk, split_k
        warps, stages = num_warps or warps, num_stages or stages
    block_m = max(16, triton.next_power_of_2(m))
    tiles = triton.cdiv(n, bn)
    y = torch.empty((m, n), dtype=torch.bfloat16, device=x.device)
    part, lock = _workspace(x.device, block_m, n, split, tiles) if split > 1 else (y, y)
    _skinny_fp8[(tiles, split)](x, w_fp8, row_scale, w_scale, bias if bias is not None else w_scale, y, part, lock,
                                w_scale if x_fp8 else inv_scale, m, n, k, x.stride(0), X_FP8=x_fp8,
                                HAS_BIAS=bias is not None, SPLIT_K=split, BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=bk,
                                num_warps=warps, num_stages=stages)
    return y


def time_skinny(n: int, k: int, device, configs, rows: int = TUNE_ROWS, x_fp8: bool = True) -> dict:
    """{config: us per call} at `rows` rows, each over weight copies that together exceed the L2
    (so the weights stream from HBM, as in the step's 36 layers). Configs that fail to compile are left out."""
    copies = min(64, max(2, -(-200 * 2**20 // (n * k))))
    gen = torch.Generator(device=device).manual_seed(0)
    ws = [(torch.randn(n, k, device=device, generator=gen) * 8).to(torch.float8_e4m3fn) for _ in range(copies)]
    scale = torch.rand(1, n, device=device, generator=gen) + 0.5
    x = torch.randn(rows, k, device=device, generator=gen)
    one = torch.ones((), device=device)
    args = ((x.to(torch.float8_e4m3fn), torch.ones(rows, 1, device=device), scale) if x_fp8
            else (x.to(torch.bfloat16), one, scale))
    inv = None if x_fp8 else one
    out = {}
    for cfg in configs:
        try:
            skinny_fp8_linear(args[0], ws[0], args[1], args[2], config=cfg, inv_scale=inv)  # compile outside capture
            call = lambda i, cfg=cfg: skinny_fp8_linear(args[0], ws[i % copies], args[1], args[2],  # noqa: E731
                                                         config=cfg, inv_scale=inv)
            out[cfg] = 1e3 * graph_call_ms(call, copies * max(1, 8 // copies))  # microseconds
        except Exception as exc:  # noqa: BLE001  (out of shared memory / registers: not a candidate)
            log.info("skinny FP8 config %s skipped: %s", cfg, str(exc).splitlines()[0][:120])
    return out


_CHOICE: dict[tuple, tuple] = {}  # (device, N, K) -> config
TIMINGS: dict[tuple, dict] = {}  # what the chooser measured (benchmarks read it)
choose_seconds = 0.0  # start-up time spent choosing (compiles included)


def tune_mode() -> str:
    return env_choice("GRAPHRT_FP8_SKINNY_TUNE", ("auto", "off"))


def choose_skinny(n: int, k: int, device) -> tuple[int, int, int, int, int]:
    """The config for this weight shape (every row count <= 64 gets the same one)."""
    if tune_mode() == "off" or device.type != "cuda" or n * k < TUNE_MIN_WEIGHT:
        return untuned(n, k)
    key = (str(device), n, k)
    if key not in _CHOICE:
        if torch.cuda.is_current_stream_capturing():  # the warm-up did not see it: untuned, said once
            log.warning("skinny FP8 GEMM: shape N=%d K=%d first seen inside a capture; untuned config", n, k)
            _CHOICE[key] = untuned(n, k)
            return _CHOICE[key]
        global choose_seconds
        t0 = time.perf_counter()
        t = time_skinny(n, k, device, shortlist(n, k))
        choose_seconds += time.perf_counter() - t0
        TIMINGS[key] = t
        _CHOICE[key] = min(t, key=t.get) if t else untuned(n, k)
        log.info("skinny FP8 GEMM N=%d K=%d: %s (%.1f us; untuned %.1f us)", n, k, _CHOICE[key],
                 t.get(_CHOICE[key], float("nan")), t.get(untuned(n, k), float("nan")))
    return _CHOICE[key]


if triton is not None:

    @triton.jit
    def _w8a16(x_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, M, N, K, stride_x, HAS_BIAS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # M tiles vary fastest, so the programs sharing a weight tile run together (its reads hit L2)
        num_m = tl.cdiv(M, BLOCK_M)
        pid = tl.program_id(0)
        rm = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = (pid // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(x_ptr + rm[:, None] * stride_x + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K),
                        other=0.0)
            b = tl.load(w_ptr + rn[:, None] * K + kk[None, :], mask=(rn[:, None] < N) & (kk[None, :] < K), other=0.0)
            acc += tl.dot(a, tl.trans(b.to(tl.float16).to(tl.bfloat16)))  # e4m3 values are exact in both
        out = acc * tl.load(ws_ptr + rn, mask=rn < N, other=0.0)[None, :]
        if HAS_BIAS:
            out += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], out.to(tl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))


W8A16_ROW_BUCKETS = (64, 128, 384, 512, 2048)  # tuned per bucket: steps at B=1 / 8 / 32, B=1 prefill
# (row bucket, N, K) -> (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), or "cublas" (dequantize, then
# cuBLAS); measured by benchmarks/w8a16_tune.py. GRAPHRT_W8A16_CONFIGS=FILE (that script's JSON)
# overrides it for A/B runs.
# H100, 2026-11-24 (benchmarks/results/2026-11-24_w8a16-tune_H100.json): the 3B's LM shapes
W8A16_TUNED: dict[tuple[int, int, int], tuple | str] = {
    (64, 2560, 2048): (16, 32, 256, 4, 4),  # 12 rows 5.71 us
    (128, 2560, 2048): (32, 64, 256, 4, 3),  # 96 rows 11.18 us
    (384, 2560, 2048): (128, 64, 128, 8, 3),  # 384 rows 17.77 us
    (512, 2560, 2048): (128, 64, 64, 4, 3),  # 512 rows 23.02 us
    (64, 2048, 2048): (16, 16, 256, 2, 4),  # 12 rows 5.33 us
    (128, 2048, 2048): (32, 64, 256, 4, 3),  # 96 rows 10.86 us
    (384, 2048, 2048): (128, 64, 128, 8, 3),  # 384 rows 17.51 us
    (512, 2048, 2048): (128, 64, 128, 8, 3),  # 512 rows 17.53 us
    (64, 22016, 2048): (16, 64, 128, 4, 4),  # 12 rows 19.7 us
    (128, 22016, 2048): (128, 64, 64, 4, 3),  # 96 rows 35.64 us
    (384, 22016, 2048): (128, 128, 64, 4, 4),  # 384 rows 78.32 us
    (512, 22016, 2048): (128, 128, 64, 4, 4),  # 512 rows 113.37 us
    (64, 2048, 11008): (16, 16, 256, 2, 4),  # 12 rows 19.05 us
    (128, 2048, 11008): (32, 64, 256, 4, 3),  # 96 rows 49.0 us
    (384, 2048, 11008): (128, 64, 128, 8, 3),  # 384 rows 79.97 us
    (512, 2048, 11008): (128, 64, 128, 8, 3),  # 512 rows 82.56 us
}


def _tuned() -> dict:
    path = os.environ.get("GRAPHRT_W8A16_CONFIGS")
    if not path:
        return W8A16_TUNED
    if path not in _LOADED:
        rows = json.loads(Path(path).read_text())["best"]
        _LOADED[path] = {(r["bucket"], r["N"], r["K"]): (r["config"] if r["config"] == "cublas" else tuple(r["config"]))
                         for r in rows}
    return _LOADED[path]


_LOADED: dict[str, dict] = {}


def row_bucket(m: int) -> int | None:
    return next((b for b in W8A16_ROW_BUCKETS if m <= b), None)


def w8a16_choice(m: int, n: int, k: int) -> tuple | str:
    """The tuned config of this shape's row bucket, else the default rule (w8a16_config)."""
    cfg = _tuned().get((row_bucket(m), n, k))
    if cfg is None:
        return w8a16_config(m, n, k)
    if cfg != "cublas" and m <= SKINNY_MAX_ROWS:  # tuned at 12 rows: one M tile for every step size
        cfg = (max(16, triton.next_power_of_2(m)),) + tuple(cfg[1:])
    return cfg


def w8a16_config(m: int, n: int, k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Up to 64 rows the skinny shapes of skinny_config
    (one M tile: the weights are read once); above, square-ish tiles for the tensor cores."""
    if m <= SKINNY_MAX_ROWS:
        bn, bk, warps, stages = skinny_config(n, k)
        return max(16, triton.next_power_of_2(m)), bn, bk, warps, stages
    if m <= 512:
        return 128, 64, 128, 8, 3
    return 128, 128, 64, 8, 3


def w8a16_linear(x: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None = None, config: tuple | None = None) -> torch.Tensor:
    """Weight-only FP8: x [M, K] bf16, w_fp8 [N, K] e4m3 (or int8), w_scale [1, N] fp32 -> [M, N]
    bf16 = x @ (w_fp8 * w_scale)^T (+ bias), the weights upcast in registers, fp32 accumulation."""
    m, k = x.shape
    n = w_fp8.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    bm, bn, bk, warps, stages = config or w8a16_config(m, n, k)
    y = torch.empty((m, n), dtype=torch.bfloat16, device=x.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _w8a16[grid](x, w_fp8, w_scale, bias if bias is not None else w_scale, y, m, n, k, x.stride(0),
                 HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return y

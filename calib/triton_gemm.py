"""A skinny FP8 GEMM in Triton for decode-step row counts (M <= 64).

At the step's 12 rows per sequence, torch._scaled_mm's row-wise FP8 kernel was slower than the
bf16 GEMM on three of the LM's four shapes (H100, 2026-11-24: qkv 8.2 vs 5.4 us, down 35.1 vs
22.8 us), while this kernel took 4.7 / 5.0 / 19.3 / 16.8 us for qkv / o / gate_up / down
(benchmarks/fp8_ab.py), so FP8Linear uses it for M <= SKINNY_MAX_ROWS on CUDA.

Each program owns BLOCK_N output channels of all M rows and walks the whole K: the weight tile
is read once, upcast to fp16 (every e4m3 value is exact in fp16) and multiplied on the tensor
cores with float32 accumulation; the epilogue applies the row and channel scales and the bias.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:

    @triton.jit
    def _skinny_fp8(x_ptr, w_ptr, rs_ptr, ws_ptr, b_ptr, y_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            b = tl.load(w_ptr + rn[:, None] * K + kk[None, :], mask=(rn[:, None] < N) & (kk[None, :] < K), other=0.0)
            acc += tl.dot(a.to(tl.float16), tl.trans(b.to(tl.float16)))
        rs = tl.load(rs_ptr + rm, mask=rm < M, other=0.0)
        ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
        out = acc * rs[:, None] * ws[None, :]
        if HAS_BIAS:
            out += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], out.to(tl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))


SKINNY_MAX_ROWS = 64


def skinny_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, warps, stages): the fastest of four measured configs per LM shape
    (H100, 12 rows): wide N -> 64x128, long K -> 16x512 (3 stages), else 32x256."""
    if n >= 8192:
        return 64, 128, 4, 4
    if k >= 8192:
        return 16, 512, 4, 3
    return 32, 256, 4, 4


def skinny_fp8_linear(q: torch.Tensor, w_fp8: torch.Tensor, row_scale: torch.Tensor, w_scale: torch.Tensor,
                      bias: torch.Tensor | None = None, block_n: int | None = None, block_k: int | None = None,
                      num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """q [M, K] e4m3 (M <= 64), w_fp8 [N, K] e4m3, row_scale [M, 1], w_scale [1, N] -> [M, N] bf16."""
    m, k = q.shape
    n = w_fp8.shape[0]
    if m > SKINNY_MAX_ROWS:
        raise ValueError(f"skinny_fp8_linear is for M <= {SKINNY_MAX_ROWS}")
    cfg = skinny_config(n, k)
    block_n, block_k = block_n or cfg[0], block_k or cfg[1]
    num_warps, num_stages = num_warps or cfg[2], num_stages or cfg[3]
    block_m = max(16, triton.next_power_of_2(m))
    y = torch.empty((m, n), dtype=torch.bfloat16, device=q.device)
    _skinny_fp8[(triton.cdiv(n, block_n),)](q, w_fp8, row_scale, w_scale, bias if bias is not None else w_scale, y,
                                            m, n, k, HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
                                            BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return y


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

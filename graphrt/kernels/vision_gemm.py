"""The vision tower's four linears as one persistent Triton GEMM with fused epilogues (bf16 in,
fp32 accumulate, bf16 out), beside cuBLAS:

    bias        y = x @ W.T + b                                   (wo, fc1)
    bias_gelu   y = gelu_tanh(x @ W.T + b)                        (fc0; cuBLASLt's epilogue does the same)
    bias_rope   y = x @ W.T + b, then the 2D RoPE of the q and k  (wqkv: the tower's RoPE pass goes away)
                columns turned in fp32 before the one bf16 rounding

Persistent: one program per SM walks output tiles (grouped along M so tiles that share weight
columns run together); the tile loop and the K loop are flattened (`tl.range(flatten=True)`) so
the next tile's TMA loads are in flight while this tile's epilogue runs, and the epilogue stores
through a tensor descriptor in column halves (less shared memory held for the store).

Rounding points (tests/test_vision_gemm.py holds them against fp32 references): one bf16
rounding of the fp32 accumulator after bias (+ GELU / RoPE), where the unfused tower rounds the
linear's output, then rounds again after vision_kernels._rope_2d_kernel's fp32 rotation; the
GELU's rounding equals `linear_gelu`'s cuBLASLt epilogue (fp32 GELU, one rounding).

GRAPHRT_VISION_GEMM picks the path: cublas (the default: cuBLAS / cuBLASLt and the separate RoPE
pass), auto (per shape, at the tower's warm-up, `choose` times every tile below and the cuBLAS
path with the passes it needs inside CUDA graphs; the fastest wins) or triton (always this kernel,
its fastest tile). Measured on the H100 (2026-11-25, docs/notes.md "Vision GEMM in Triton"): this
kernel is 7-57% slower than the cuBLAS path at every tower shape but one (wo at 1,680 rows: a tie),
so auto picks cuBLAS everywhere and costs ~35 s of start-up measurement; cublas stays the default.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from . import env_choice, triton_runs_on

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU installs without Triton use cuBLAS / torch only
    triton = None

EPILOGUES = ("bias", "bias_gelu", "bias_rope")

if triton is not None:

    @triton.jit
    def _gelu_tanh(y):
        u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)  # tanh(u), saturating to +-1 without inf/inf
        return 0.5 * y * (1.0 + t)

    @triton.jit
    def _rope_tile(acc, cos_ptr, sin_ptr, rm, off_n, M, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
        # Columns (2j, 2j+1) of the tile are one (even, odd) pair of a head; its angle is pair
        # ((off_n + 2j) % HEAD_DIM) / 2 of the row's cos/sin table (fp32, as _rope_2d_kernel).
        half: tl.constexpr = HEAD_DIM // 2
        j = tl.arange(0, BLOCK_N // 2)
        angle = ((off_n + 2 * j) % HEAD_DIM) // 2
        where = rm.to(tl.int64)[:, None] * half + angle[None, :]
        ok = (rm < M)[:, None]
        c = tl.load(cos_ptr + where, mask=ok, other=1.0)
        s = tl.load(sin_ptr + where, mask=ok, other=0.0)
        a, b = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        return tl.reshape(tl.join(a * c - b * s, a * s + b * c), (BLOCK_M, BLOCK_N))

    @triton.jit
    def _vision_gemm_kernel(a_desc, w_desc, c_desc, bias_ptr, cos_ptr, sin_ptr, M, N, K,
                            EPILOGUE: tl.constexpr, ROPE_COLS: tl.constexpr, HEAD_DIM: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr, NUM_PROGRAMS: tl.constexpr, NUM_STAGES: tl.constexpr,
                            SPLIT_STORE: tl.constexpr):
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        k_steps = tl.cdiv(K, BLOCK_K)  # a K tail reads zeros past the edge (TMA fills them)
        per_group = GROUP_M * num_n
        for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_PROGRAMS, flatten=True,
                             num_stages=NUM_STAGES):
            first_m = (tile // per_group) * GROUP_M
            group_m = min(num_m - first_m, GROUP_M)
            off_m = (first_m + (tile % per_group) % group_m) * BLOCK_M
            off_n = ((tile % per_group) // group_m) * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ks in range(k_steps):
                a = a_desc.load([off_m, ks * BLOCK_K])
                w = w_desc.load([off_n, ks * BLOCK_K])
                acc = tl.dot(a, w.T, acc)
            rn = off_n + tl.arange(0, BLOCK_N)
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            if EPILOGUE == 1:
                acc = _gelu_tanh(acc)
            elif EPILOGUE == 2:
                if off_n < ROPE_COLS:  # q and k tiles (ROPE_COLS is a multiple of BLOCK_N)
                    rm = off_m + tl.arange(0, BLOCK_M)
                    acc = _rope_tile(acc, cos_ptr, sin_ptr, rm, off_n, M, HEAD_DIM, BLOCK_M, BLOCK_N)
            out = acc.to(c_desc.dtype)
            if SPLIT_STORE:
                lo, hi = tl.split(tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
                c_desc.store([off_m, off_n], lo)
                c_desc.store([off_m, off_n + BLOCK_N // 2], hi)
            else:
                c_desc.store([off_m, off_n], out)


class Tile(tuple):
    """(block_m, block_n, block_k, group_m, warps, stages, split_store)."""

    def __new__(cls, bm, bn, bk, group_m, warps, stages, split=True):
        return super().__new__(cls, (bm, bn, bk, group_m, warps, stages, split))

    def __repr__(self):
        bm, bn, bk, g, w, s, split = self
        return f"{bm}x{bn}x{bk}/g{g}/w{w}/s{s}{'/split' if split else ''}"


# The tiles the chooser times (H100: 228 KB shared memory per SM; 128x256x64 at 3 stages uses
# 144 KB of operand buffers + 32 KB for a half-tile store).
TILES = [Tile(128, 256, 64, 8, 8, 3), Tile(128, 256, 64, 8, 8, 4), Tile(128, 128, 64, 8, 4, 4),
         Tile(128, 128, 64, 8, 8, 4), Tile(64, 256, 64, 8, 4, 4), Tile(128, 128, 128, 8, 8, 3)]


# Small tiles for the CPU interpreter's tests (same code path, shapes of a few dozen).
INTERPRETER_TILE = Tile(32, 32, 16, 2, 4, 1)


def usable(x: torch.Tensor, weight: torch.Tensor, epilogue: str, tile: Tile | None = None) -> bool:
    """Whether the kernel runs here: Triton on this device (Hopper or newer on CUDA: tensor
    descriptors; or the CPU interpreter), bf16/fp16, 16-byte aligned rows, and for bias_rope q/k
    columns that fill whole tiles."""
    if triton is None or not triton_runs_on(x) or x.dtype != weight.dtype:
        return False
    if x.dtype not in (torch.bfloat16, torch.float16) and (x.is_cuda or x.dtype != torch.float32):
        return False  # float32 only under the CPU interpreter (tests)
    if x.is_cuda and torch.cuda.get_device_capability(x.device)[0] < 9:
        return False
    k, n = x.shape[1], weight.shape[0]
    align = 16 // x.element_size()
    if k % align or n % align or x.stride(1) != 1 or x.stride(0) % align or not weight.is_contiguous():
        return False
    bn = (tile or (TILES[0] if x.is_cuda else INTERPRETER_TILE))[1]
    if epilogue == "bias_rope" and (n % 3 or (2 * n // 3) % bn):
        return False
    return True


def vision_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, epilogue: str = "bias",
                  cos: torch.Tensor | None = None, sin: torch.Tensor | None = None, head_dim: int = 0,
                  tile: Tile | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T + bias with `epilogue` (EPILOGUES) -> [M, N]. bias_rope: cos/sin
    [M, head_dim/2] fp32, and the first 2N/3 columns (q, k of a [M, 3, H, D] qkv) are turned."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {', '.join(EPILOGUES)}, not {epilogue!r}")
    m, k = x.shape
    n = weight.shape[0]
    bm, bn, bk, group_m, warps, stages, split = tile or TILES[0]
    rope_cols = 0
    if epilogue == "bias_rope":
        rope_cols = 2 * n // 3
        if n % 3 or rope_cols % bn or head_dim % 2 or cos is None or sin is None:
            raise ValueError(f"bias_rope needs N = 3*H*D with q/k columns in whole {bn}-wide tiles, got N={n}")
        cos, sin = cos.contiguous(), sin.contiguous()
    else:
        cos = sin = bias
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    a_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [bm, bk])
    w_desc = TensorDescriptor(weight, [n, k], [weight.stride(0), 1], [bn, bk])
    c_desc = TensorDescriptor(out, [m, n], [out.stride(0), 1], [bm, bn // 2 if split else bn])
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    programs = min(tiles, _sm_count(x.device))
    _vision_gemm_kernel[(programs,)](a_desc, w_desc, c_desc, bias, cos, sin, m, n, k,
                                     EPILOGUE=EPILOGUES.index(epilogue), ROPE_COLS=rope_cols,
                                     HEAD_DIM=max(head_dim, 2), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                     GROUP_M=group_m, NUM_PROGRAMS=programs, NUM_STAGES=stages,
                                     SPLIT_STORE=split, num_warps=warps)
    return out


_sms: dict[str, int] = {}


def _sm_count(device) -> int:
    key = str(device)
    if key not in _sms:
        _sms[key] = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return _sms[key]


def reference_path(x, weight, bias, epilogue, cos=None, sin=None, head_dim=0):
    """What the fused tower runs without this kernel: cuBLAS and the passes the epilogue replaces."""
    from .. import vision_kernels as vk

    if epilogue == "bias_gelu":
        return vk.linear_gelu(x, weight, bias)
    y = F.linear(x, weight, bias)
    if epilogue == "bias_rope":
        n = y.shape[0]
        vk.rope_2d_(y.view(n, 3, -1, head_dim), cos, sin)
    return y


def mode() -> str:
    return env_choice("GRAPHRT_VISION_GEMM", ("cublas", "auto", "triton"))


_choice: dict[tuple, Tile | None] = {}  # (m, n, k, dtype, epilogue, mode) -> tile; None = cuBLAS path
timings: dict[tuple, dict] = {}  # what the chooser measured, for benchmarks
choose_seconds = 0.0


def time_paths(m: int, n: int, k: int, dtype, device, epilogue: str, head_dim: int = 72,
               tiles: list[Tile] | None = None, reps: int = 10) -> dict:
    """{"cublas" or Tile: ms per call} at this shape (random operands; each timed as `reps` calls
    in one CUDA graph). Tiles that fail to compile (shared memory, registers) are left out."""
    from ..timing import graph_call_ms

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    w = torch.randn(n, k, device=device, dtype=dtype, generator=gen) / k ** 0.5
    b = torch.randn(n, device=device, dtype=dtype, generator=gen) * 0.1
    ang = torch.rand(m, head_dim // 2, device=device, generator=gen) * 6.28
    cos, sin = ang.cos(), ang.sin()
    out = torch.empty(m, n, device=device, dtype=dtype)
    t = {"cublas": graph_call_ms(lambda i: reference_path(x, w, b, epilogue, cos, sin, head_dim), reps)}
    for tile in tiles if tiles is not None else TILES:
        if epilogue == "bias_rope" and (2 * n // 3) % tile[1]:
            continue
        try:
            t[tile] = graph_call_ms(lambda i: vision_linear(x, w, b, epilogue, cos, sin, head_dim, tile, out), reps)
        except Exception as e:  # noqa: BLE001 - out of shared memory / registers: not a candidate
            log.info("vision_gemm %s skipped: %s", tile, str(e).splitlines()[0][:120])
    return t


def choose(x: torch.Tensor, weight: torch.Tensor, epilogue: str, how: str = "auto", head_dim: int = 0) -> Tile | None:
    """The kernel for this call under `how` (a GRAPHRT_VISION_GEMM value): a Tile (this kernel) or
    None (cuBLAS and the separate passes)."""
    if how == "cublas" or not usable(x, weight, epilogue):
        return None
    if not x.is_cuda:  # the CPU interpreter (tests): nothing to measure; auto keeps the torch ops
        return INTERPRETER_TILE if how == "triton" else None
    m, k = x.shape
    n = weight.shape[0]
    key = (m, n, k, x.dtype, epilogue, how)
    if key not in _choice:
        if torch.cuda.is_current_stream_capturing():  # the warm-up did not see this shape
            log.warning("vision_gemm: shape %s first seen inside a capture; using cuBLAS", key[:3])
            return None
        global choose_seconds
        t0 = time.perf_counter()
        t = time_paths(m, n, k, x.dtype, x.device, epilogue, head_dim or 72)
        choose_seconds += time.perf_counter() - t0
        timings[key] = t
        ours = {c: v for c, v in t.items() if c != "cublas"}
        best = min(ours, key=ours.get) if ours else None
        if how == "auto" and best is not None and t["cublas"] <= ours[best]:
            best = None
        _choice[key] = best
        log.info("vision_gemm M=%d N=%d K=%d %s: %s (cublas path %.3f ms, best tile %s)", m, n, k, epilogue,
                 best or "cublas", t["cublas"], None if not ours else f"{min(ours.values()):.3f} ms")
    return _choice[key]

"""fc0 of the vision MLP in FP8 with its whole epilogue: e4m3 x e4m3 on the tensor cores, then row x
channel scales, bias, tanh-GELU and the quantization to fc1's static input scale, written as e4m3.

    q1, rs1 = fp8_gemm_gelu(q0, rs0, fc0, fc1)     # fc0, fc1: static W8A8 FP8Linear

`torch._scaled_mm` has no GELU epilogue, so without this kernel the [N, 4304] fc0 output goes
through memory in bf16 and back through a GELU + quantize pass (vision_kernels.gelu_fp8: 3 bytes
an element, ~9.5 ms of the B=32 tower on the H100). Here it leaves the GEMM as 1 byte. Rounding
points as the unfused path: the GEMM result to bf16 (what _scaled_mm writes), GELU to bf16 (what
F.gelu writes), then the static rule of calib/quantize.py. Operands come through tensor
descriptors (TMA; K must be a multiple of BLOCK_K, the weight [N, K] row-major as FP8Linear keeps
it). It runs instead of _scaled_mm + gelu_fp8 by measurement (graphrt/vision.py, docs/notes.md;
GRAPHRT_VISION_FP8_FC0=scaled_mm for the A/B).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU installs without Triton never call it
    triton = None

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages): best of four on the H100 in the 27-layer tower
# (B=32: 97.50 ms; 4 stages 97.44, 256x128 98.31, 128x128 106.21; B=1 4.10 / 4.12 / 4.16 / 4.49 ms;
# benchmarks/fp8_vision.py, 2026-11-24). The kernel alone ran at ~0.68 PFLOP/s at B=32 (21.3 ms for
# 27 fc0s, cuBLAS's _scaled_mm ~1.1 PFLOP/s + 7.4 ms of GELU pass: a tie overall).
TILE = (128, 256, 128, 8, 8, 3)

if triton is not None:

    @triton.jit
    def _fp8_gemm_gelu_kernel(a_desc, b_desc, q_ptr, rs_ptr, ws_ptr, bias_ptr, inv_ptr, scale_ptr, qrs_ptr,
                              M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr):
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n  # tiles of GROUP_M row blocks share their weight columns in L2
        first_m = (pid // per_group) * GROUP_M
        group_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            a = a_desc.load([off_m, k])
            b = b_desc.load([off_n, k])
            acc = tl.dot(a, b.T, acc)
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, BLOCK_N)
        m_ok = rm < M
        n_ok = rn < N
        sa = tl.load(rs_ptr + rm, mask=m_ok, other=0.0)
        sw = tl.load(ws_ptr + rn, mask=n_ok, other=0.0)
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        y = (acc * sa[:, None] * sw[None, :] + bias[None, :]).to(tl.bfloat16).to(tl.float32)
        u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)  # tanh(u), saturating without inf/inf
        g = (0.5 * y * (1.0 + t)).to(tl.bfloat16).to(tl.float32)
        qv = tl.minimum(tl.maximum(g * tl.load(inv_ptr), -448.0), 448.0)
        tl.store(q_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], qv.to(tl.float8e4nv),
                 mask=m_ok[:, None] & n_ok[None, :])
        if pid_n == 0:
            tl.store(qrs_ptr + rm, tl.zeros([BLOCK_M], tl.float32) + tl.load(scale_ptr), mask=m_ok)


def usable(q: torch.Tensor, fc0, fc1, tile=None) -> bool:
    """Whether the kernel runs for these operands: CUDA on Hopper or newer (tensor descriptors), a
    bf16 model, bias present, K a multiple of BLOCK_K, static W8A8 linears."""
    block_k = (tile or TILE)[2]
    return (triton is not None and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
            and q.shape[1] % block_k == 0 and fc0.bias is not None and fc0.out_dtype == torch.bfloat16
            and getattr(fc0, "act", None) == "static" and getattr(fc1, "act", None) == "static")


def fp8_gemm_gelu(q: torch.Tensor, row_scale: torch.Tensor, fc0, fc1, tile=None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [M, K] e4m3 (fc0's input), row_scale [M, 1] -> (e4m3 [M, N] fc1's input
    quantize(gelu_tanh(fc0(x))), its row scales [M, 1])."""
    m, k = q.shape
    n = fc0.out_features
    block_m, block_n, block_k, group_m, warps, stages = tile or TILE
    out = torch.empty((m, n), dtype=torch.float8_e4m3fn, device=q.device)
    out_rs = torch.empty((m, 1), dtype=torch.float32, device=q.device)
    a_desc = TensorDescriptor(q, [m, k], [q.stride(0), 1], [block_m, block_k])
    w = fc0.weight_fp8
    b_desc = TensorDescriptor(w, [n, k], [w.stride(0), 1], [block_n, block_k])
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _fp8_gemm_gelu_kernel[grid](a_desc, b_desc, out, row_scale, fc0.weight_scale, fc0.bias, fc1.inv_input_scale,
                                fc1.input_scale, out_rs, m, n, k, BLOCK_M=block_m, BLOCK_N=block_n,
                                BLOCK_K=block_k, GROUP_M=group_m, NUM_STAGES=stages, num_warps=warps)
    return out, out_rs

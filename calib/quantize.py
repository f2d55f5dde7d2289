"""Static-scale FP8 (e4m3) quantization of activations and per-output-channel quantization of weights.

Activation rule (the one every path must reproduce bit for bit):

    q = fp8_e4m3( clamp( float32(x) * inv_scale, -448, 448 ) )      (round to nearest even)

`inv_scale` is stored as a float32 tensor computed once by torch (1 / scale), so the Triton
kernel and the torch fallback multiply by the same number and round the same way. The kernel
also writes the per-row scale vector `[M, 1]` that `torch._scaled_mm`'s row-wise mode takes, so a
static-scale linear costs one extra launch (this kernel) in front of its GEMM; a fused producer
(norm, SiLU*mul) can write `q` and the row scales itself and skip it (see FP8Linear.forward_fp8).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value

try:  # Triton is optional: CPU installs and the CPU tests use the torch path.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> ([N, K] e4m3, [1, N] float32 scale): one scale per output channel (row),
    amax / 448, so each row uses the full e4m3 range. An all-zero row gets scale 1."""
    w = weight.float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale[None, :].contiguous()


AMAX_FLOOR = 1e-12  # dynamic scale of an all-zero row (graphrt/kernels/fp8_ops.py uses the same)


def quantize_input_dynamic_torch(x2d: torch.Tensor):
    """Per-row (per-token) scales computed from the row itself: [M, K] -> ([M, K] e4m3, [M, 1] fp32).
    inv = 448 / max(amax, floor), scale = max(amax, floor) / 448 (IEEE divisions; the Triton kernels
    use div_rn, so both write the same bytes)."""
    xf = x2d.float()
    amax = xf.abs().amax(dim=1, keepdim=True).clamp_min(AMAX_FLOOR)
    full = amax.new_full(amax.shape, FP8_MAX)  # tensor / tensor: a true division (torch may turn a
    q = (xf * (full / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8)  # scalar divisor into a reciprocal product)
    return q, amax / full


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> ([N, K] int8, [1, N] float32 scale): symmetric per output channel,
    amax / 127, round to nearest (weight-only mode w8a16-int8; int8 -> fp16 is exact in the GEMM)."""
    w = weight.float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale[None, :].contiguous()


def quantize_input_torch(x2d: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor):
    """[M, K] -> ([M, K] e4m3, [M, 1] float32 row scales), plain torch (any device)."""
    q = (x2d.float() * inv_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale.reshape(1, 1).expand(x2d.shape[0], 1).contiguous()


if triton is not None:

    @triton.jit
    def _quantize_rows(x_ptr, q_ptr, rs_ptr, inv_ptr, scale_ptr, K, stride_x, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        blk = tl.program_id(1)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < K
        inv = tl.load(inv_ptr)
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x * inv, -448.0), 448.0)
        tl.store(q_ptr + row * K + offs, q.to(tl.float8e4nv), mask=mask)
        if blk == 0:
            tl.store(rs_ptr + row, tl.load(scale_ptr))


def quantize_input_triton(x2d: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor):
    """Same result as quantize_input_torch in one kernel (CUDA only)."""
    m, k = x2d.shape
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    q = torch.empty((m, k), dtype=FP8, device=x2d.device)
    row_scale = torch.empty((m, 1), dtype=torch.float32, device=x2d.device)
    block = 1024
    _quantize_rows[(m, triton.cdiv(k, block))](x2d, q, row_scale, inv_scale, scale, k, x2d.stride(0), BLOCK=block,
                                               num_warps=4)
    return q, row_scale


if triton is not None:

    @triton.jit
    def _quantize_rows_dynamic(x_ptr, q_ptr, rs_ptr, K, stride_x, amax_floor, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < K
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), axis=0), amax_floor)
        inv = tl.math.div_rn(tl.full([], 448.0, tl.float32), amax)
        q = tl.minimum(tl.maximum(x * inv, -448.0), 448.0)
        tl.store(q_ptr + row * K + offs, q.to(tl.float8e4nv), mask=mask)
        tl.store(rs_ptr + row, tl.math.div_rn(amax, tl.full([], 448.0, tl.float32)))


def quantize_input_dynamic_triton(x2d: torch.Tensor):
    """Same result as quantize_input_dynamic_torch in one kernel (one program per row)."""
    m, k = x2d.shape
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    q = torch.empty((m, k), dtype=FP8, device=x2d.device)
    row_scale = torch.empty((m, 1), dtype=torch.float32, device=x2d.device)
    block = triton.next_power_of_2(k)
    _quantize_rows_dynamic[(m,)](x2d, q, row_scale, k, x2d.stride(0), AMAX_FLOOR, BLOCK=block,
                                 num_warps=max(4, min(16, block // 512)))
    return q, row_scale


_TRITON_BROKEN: list[str] = []  # the reason, once a kernel launch failed (then torch is used)


def quantize_input(x2d: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor, use_triton: bool,
                   dynamic: bool = False):
    """Static (the calibrated scale) or, with dynamic=True, per-row scales from each row's amax."""
    if use_triton and x2d.is_cuda and triton is not None and not _TRITON_BROKEN:
        try:
            if dynamic:
                return quantize_input_dynamic_triton(x2d)
            return quantize_input_triton(x2d, inv_scale, scale)
        except Exception as exc:  # compile/launch failure on this install: same rule in torch, said once
            _TRITON_BROKEN.append(f"{type(exc).__name__}: {exc}"[:300])
            log.warning("Triton FP8 quantizer unavailable, using torch ops: %s", _TRITON_BROKEN[0])
    if dynamic:
        return quantize_input_dynamic_torch(x2d)
    return quantize_input_torch(x2d, inv_scale, scale)


def quantizer_name(device: torch.device) -> str:
    if device.type != "cuda" or triton is None:
        return "torch"
    return "torch (Triton failed: " + _TRITON_BROKEN[0] + ")" if _TRITON_BROKEN else "triton"


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values an e4m3 tensor stands for (scale broadcast: [M, 1], [1, N] or scalar)."""
    return q.float() * scale

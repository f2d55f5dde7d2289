"""Fused elementwise kernels of the vision tower (Triton), each one pass over its tensors:

- `add_layernorm`: residual add + LayerNorm in one read of x and the branch output (fp32
  statistics, like F.layer_norm), writing the new residual and the normalized row;
- `rope_2d_`: 2D RoPE of q and k in place inside the packed qkv (fp32 complex multiply, as
  `vision.apply_rope_2d`), instead of ~10 elementwise kernels per tensor;
- `linear_gelu`: fc0's bias and tanh-GELU in the matmul's epilogue (cuBLASLt through torch's
  `_addmm_activation`), so the 4304-wide activation is written once.

Unfused and fused agree within bf16 rounding (tests/test_vision_kernels.py; on the GPU,
benchmarks/vision_stage.py). `TRITON_INTERPRET=1` runs the Triton kernels on CPU tensors.
"""

from __future__ import annotations

import torch

from .kernels import triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the fused path is simply unavailable
    triton = None


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernels can run on this tensor's device."""
    return triton is not None and triton_runs_on(x)


if triton is not None:

    @triton.jit
    def _add_layernorm_kernel(x_ptr, d_ptr, w_ptr, b_ptr, xo_ptr, h_ptr, cols, eps,
                              HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < cols
        x = tl.load(x_ptr + row * cols + offs, mask=mask, other=0.0)
        if HAS_DELTA:
            # The residual add rounds to the model dtype first, as `x + branch` does unfused.
            x = x + tl.load(d_ptr + row * cols + offs, mask=mask, other=0.0)
            tl.store(xo_ptr + row * cols + offs, x, mask=mask)
        xf = x.to(tl.float32)
        mean = tl.sum(xf, axis=0) / cols
        diff = tl.where(mask, xf - mean, 0.0)
        var = tl.sum(diff * diff, axis=0) / cols
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_ptr + row * cols + offs, (diff * rstd * w + b).to(h_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_2d_kernel(qkv_ptr, cos_ptr, sin_ptr, row_stride, WIDTH: tl.constexpr, HALF: tl.constexpr,
                        BLOCK: tl.constexpr):
        # One token per program. q (then k) is one contiguous row of H*D values: loaded whole
        # (wide, coalesced), split into (even, odd) pairs in registers; pair j of the row is pair
        # j % HALF of its head, turned by that angle.
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        pair = tl.arange(0, BLOCK // 2)
        c = tl.load(cos_ptr + row * HALF + pair % HALF)
        s = tl.load(sin_ptr + row * HALF + pair % HALF)
        for part in range(2):  # q, then k
            base = qkv_ptr + row * row_stride + part * WIDTH
            x = tl.load(base + offs, mask=offs < WIDTH, other=0.0).to(tl.float32)
            a, b = tl.split(tl.reshape(x, (BLOCK // 2, 2)))
            y = tl.reshape(tl.join(a * c - b * s, a * s + b * c), (BLOCK,))
            tl.store(base + offs, y.to(qkv_ptr.dtype.element_ty), mask=offs < WIDTH)


def add_layernorm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, LayerNorm(x + delta)) for [N, C] rows; delta None: (x, LayerNorm(x))."""
    n, cols = x.shape
    h = torch.empty_like(x)
    xo = torch.empty_like(x) if delta is not None else x
    block = triton.next_power_of_2(cols)
    _add_layernorm_kernel[(n,)](x, delta if delta is not None else x, weight, bias, xo, h, cols, eps,
                                HAS_DELTA=delta is not None, BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return xo, h


def rope_2d_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q and k of a contiguous [N, 3, H, D] qkv in place; cos/sin [N, D/2] fp32."""
    n, three, heads, d = qkv.shape
    if three != 3 or not qkv.is_contiguous():
        raise ValueError(f"rope_2d_ needs a contiguous [N, 3, H, D] tensor, got {tuple(qkv.shape)}")
    _rope_2d_kernel[(n,)](qkv, cos.contiguous(), sin.contiguous(), qkv.stride(0), WIDTH=heads * d, HALF=d // 2,
                          BLOCK=triton.next_power_of_2(heads * d), num_warps=4)
    return qkv


_EPILOGUE_IS_TANH: dict[tuple[str, torch.dtype], bool] = {}


def epilogue_gelu_is_tanh(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `_addmm_activation`'s GELU is the tanh form here (the CPU kernel uses erf; the
    cuBLASLt epilogue tanh). Probed once per device and dtype on exact inputs (multiples of
    1/8 times the identity): the form whose rounded values match more often wins."""
    key = (str(device), dtype)
    if key not in _EPILOGUE_IS_TANH:
        x = (torch.arange(-32, 32, device=device, dtype=torch.float32) / 8).repeat(64, 1).to(dtype)
        eye = torch.eye(64, device=device, dtype=dtype)
        got = torch._addmm_activation(torch.zeros(64, device=device, dtype=dtype), x, eye, use_gelu=True)
        tanh = torch.nn.functional.gelu(x.float(), approximate="tanh").to(dtype)
        erf = torch.nn.functional.gelu(x.float()).to(dtype)
        _EPILOGUE_IS_TANH[key] = bool((got == tanh).sum() > (got == erf).sum())
    return _EPILOGUE_IS_TANH[key]


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias), with bias and GELU in the GEMM epilogue where that
    epilogue computes the tanh form; otherwise the two plain ops."""
    if epilogue_gelu_is_tanh(x.device, x.dtype):
        return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)
    return torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias), approximate="tanh")

"""FP8 producers of the fused layer: the kernels that make a linear's input write it in e4m3.

    add_rms_norm_fp8(x, delta, w, eps, lin)  -> (x + delta, e4m3 input of `lin`, row scales)
    silu_mul_fp8(gate_up, lin)               -> (e4m3 input of `lin`, row scales)
    fp8_layer_forward(layer, ...)            -> a Qwen2 layer on the fused kernels with FP8 linears

A W8A8 FP8Linear (calib/fp8_linear.py) takes `forward_fp8(q, row_scale)`; producing q inside the
norm / SiLU·mul kernel saves the quantizer launch and the bf16 round trip in front of the GEMM.
The bf16 value is formed exactly as graphrt/kernels/layer_ops.py forms it (same rounding points,
same block and warp count, so the same reduction order), then quantized by the rule of
calib/quantize.py: static  q = e4m3(clamp(fp32(h) * inv_scale, +-448)), row scale = scale;
dynamic (per row)  inv = 448 / max(amax, 1e-12), scale = max(amax, 1e-12) / 448, both divisions
rounded to nearest as torch's are. So these kernels write the bytes the unfused path writes
(tests/test_calib.py and tests/test_calib_gpu.py check it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layer_ops import add_rms_norm, residual_rms_norm_row, silu_mul, silu_mul_block

FP8 = torch.float8_e4m3fn


@triton.jit
def _quant(v, inv_ptr, amax_floor, DYNAMIC: tl.constexpr):
    """fp32 values of one row -> (e4m3 values, the row's scale)."""
    if DYNAMIC:
        amax = tl.maximum(tl.max(tl.abs(v), axis=0), amax_floor)
        inv = tl.math.div_rn(tl.full([], 448.0, tl.float32), amax)
        scale = tl.math.div_rn(amax, tl.full([], 448.0, tl.float32))
    else:
        inv = tl.load(inv_ptr)
        scale = 0.0  # the caller stores the static scale
    q = tl.minimum(tl.maximum(v * inv, -448.0), 448.0).to(tl.float8e4nv)
    return q, scale


@triton.jit
def _add_rms_norm_fp8_kernel(x_ptr, d_ptr, w_ptr, res_ptr, q_ptr, rs_ptr, inv_ptr, scale_ptr, n_cols, eps,
                             amax_floor, HAS_DELTA: tl.constexpr, DYNAMIC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    h, cols, live = residual_rms_norm_row(x_ptr, d_ptr, w_ptr, res_ptr, row, row, n_cols, eps, HAS_DELTA, BLOCK)
    q, scale = _quant(tl.where(live, h.to(tl.float32), 0.0), inv_ptr, amax_floor, DYNAMIC)
    tl.store(q_ptr + row * n_cols + cols, q, mask=live)
    if DYNAMIC:
        tl.store(rs_ptr + row, scale)
    else:
        tl.store(rs_ptr + row, tl.load(scale_ptr))


def _dynamic(linear) -> bool:
    return linear.act == "dynamic"


def add_rms_norm_fp8(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, linear):
    """x, delta [T, D] -> (residual x + delta (x itself without delta), q [T, D] e4m3, row scales
    [T, 1] fp32): q is `linear`'s quantized input rmsnorm(residual) * weight."""
    n, d = x.shape
    q = torch.empty((n, d), dtype=FP8, device=x.device)
    rs = torch.empty((n, 1), dtype=torch.float32, device=x.device)
    res = x if delta is None else torch.empty_like(x)
    block = triton.next_power_of_2(d)
    _add_rms_norm_fp8_kernel[(n,)](
        x, x if delta is None else delta, weight, res, q, rs, linear.inv_input_scale, linear.input_scale, d, eps,
        AMAX_FLOOR, HAS_DELTA=delta is not None, DYNAMIC=_dynamic(linear), BLOCK=block,
        num_warps=max(1, min(16, block // 256)))  # layer_ops.add_rms_norm's warps: the same sum order
    return res, q, rs


AMAX_FLOOR = 1e-12  # dynamic scales of an all-zero row: any positive number; calib/quantize.py uses the same


@triton.jit
def _silu_mul_fp8_kernel(gu_ptr, q_ptr, rs_ptr, inv_ptr, scale_ptr, n_cols, amax_floor,
                         DYNAMIC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    h, cols, live = silu_mul_block(gu_ptr, n_cols, BLOCK)
    q, scale = _quant(tl.where(live, h.to(tl.float32), 0.0), inv_ptr, amax_floor, DYNAMIC)
    tl.store(q_ptr + row * n_cols + cols, q, mask=live)
    if DYNAMIC:
        tl.store(rs_ptr + row, scale)
    elif tl.program_id(1) == 0:
        tl.store(rs_ptr + row, tl.load(scale_ptr))


def silu_mul_fp8(gate_up: torch.Tensor, linear) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up [T, 2I] (gate then up) -> (q [T, I] e4m3 of silu(gate) * up, row scales [T, 1])."""
    t, two_i = gate_up.shape
    n = two_i // 2
    assert gate_up.is_contiguous()
    q = torch.empty((t, n), dtype=FP8, device=gate_up.device)
    rs = torch.empty((t, 1), dtype=torch.float32, device=gate_up.device)
    if _dynamic(linear):  # the row's amax needs the whole row in one program
        block, warps = triton.next_power_of_2(n), 16
    else:
        block, warps = 1024, 4
    _silu_mul_fp8_kernel[(t, triton.cdiv(n, block))](
        gate_up, q, rs, linear.inv_input_scale, linear.input_scale, n, AMAX_FLOOR, DYNAMIC=_dynamic(linear),
        BLOCK=block, num_warps=warps)
    return q, rs


def takes_fp8_input(linear) -> bool:
    """Whether `linear` is an FP8Linear that quantizes its input (W8A8), so its producer should
    write e4m3; weight-only FP8 linears (W8A16) and bf16 linears take the bf16 value."""
    return getattr(linear, "act", "none") in ("static", "dynamic")


def has_fp8_inputs(layer) -> bool:
    return any(takes_fp8_input(m) for m in (layer.qkv_proj, layer.gate_up_proj, layer.down_proj))


def fp8_layer_forward(layer, x, delta, cos, sin, layer_idx: int, cache, attend):
    """Qwen2Layer.forward_fused for a layer with W8A8 FP8 linears: the norms and SiLU·mul write
    the e4m3 inputs of qkv / gate_up / down; o_proj (whose input is the attention kernel's bf16
    output) quantizes its own input. Linears that are not W8A8 get the bf16 value as usual."""

    def norm_then(linear, x, delta, norm):
        if takes_fp8_input(linear):
            res, q, rs = add_rms_norm_fp8(x, delta, norm.weight, norm.eps, linear)
            return res, linear.forward_fp8(q, rs)
        res, h = add_rms_norm(x, delta, norm.weight, norm.eps)
        return res, linear(h)

    t = x.shape[0]
    x, qkv = norm_then(layer.qkv_proj, x, delta, layer.input_layernorm)
    attn = attend.fused(layer_idx, qkv, cos, sin, cache, layer.num_heads, layer.num_kv_heads)
    x, gate_up = norm_then(layer.gate_up_proj, x, layer.o_proj(attn.view(t, layer.q_size)),
                           layer.post_attention_layernorm)
    if takes_fp8_input(layer.down_proj):
        return x, layer.down_proj.forward_fp8(*silu_mul_fp8(gate_up, layer.down_proj))
    return x, layer.down_proj(silu_mul(gate_up))

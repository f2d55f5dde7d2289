"""The LM's FP8 gate/up GEMM with SiLU*mul and down_proj's static quantization in its epilogue.

    q, rs = fp8_gemm_swiglu(x_q, x_rs, gate_up, down)     # both static W8A8 FP8Linear

Prefill-sized row counts run gate/up on `torch._scaled_mm` (no activation epilogue), so the
[M, 2I] bf16 output goes through memory and back through the SiLU*mul + quantize pass
(graphrt/kernels/fp8_ops.silu_mul_fp8: 5 bytes an element of I, ~0.31 ms a layer at 16,384 rows on
the H100). Here each program computes the gate tile and the up tile of the SAME output columns
(weight rows n.. and I+n.. of the fused [2I, K] weight: two B tiles, two accumulators, so the
weight needs no permutation) and writes only e4m3 [M, I] down_proj's input, plus its row-scale
vector. Rounding points as the unfused path: gate and up to bf16 after row x channel scales (what
_scaled_mm writes), silu in fp32 of the bf16 gate to bf16 (F.silu on bf16), times up to bf16, then
the static rule of calib/quantize.py (q = e4m3(clamp(fp32(h) * inv_scale, +-448))).

Operands through tensor descriptors (TMA): K a multiple of BLOCK_K, the weight [2I, K] row-major
as FP8Linear keeps it. Persistent form: a program per SM walks tiles (GROUP_M row blocks share
their weight columns in L2), the flattened loop lets the pipeliner load the next tile's operands
during this tile's epilogue. Opt-in (GRAPHRT_FP8_GATE_UP=triton) until measured faster than
_scaled_mm + the pass (benchmarks/fp8_swiglu.py; docs/notes.md).
"""

from __future__ import annotations

import os

import torch

from graphrt.errors import OptionError

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU installs without Triton never call it
    triton = None

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, form): BLOCK_N output columns = BLOCK_N gate +
# BLOCK_N up weight rows per program. form: "tiles" (a program per tile) or "persistent" (a program
# per SM, flattened loop). Both ran and matched the unfused form on the H100 (2026-11-25); the tiles
# are NOT yet timed (benchmarks/fp8_swiglu.py, docs/notes.md). Triton 3.6's Hopper warp
# specialization (tl.range(warp_specialize=True), 4 warps -> 12) compiled but hung on the H100: left out.
TILE = (128, 128, 128, 8, 8, 3, "persistent")
FORMS = ("tiles", "persistent")
# GRAPHRT_FP8_GATE_UP: scaled_mm (default until measured faster) or triton (this kernel above the
# skinny rows)
MODES = ("scaled_mm", "triton")

if triton is not None:

    @triton.jit
    def _swiglu_epilogue(acc_g, acc_u, rm, rn, m_ok, n_ok, rs_ptr, ws_ptr, I, inv):
        """fp32 accumulators of gate and up -> e4m3 of quantize(silu(bf16 gate) * bf16 up)."""
        sa = tl.load(rs_ptr + rm, mask=m_ok, other=0.0)
        sg = tl.load(ws_ptr + rn, mask=n_ok, other=0.0)
        su = tl.load(ws_ptr + I + rn, mask=n_ok, other=0.0)
        g = (acc_g * sa[:, None] * sg[None, :]).to(tl.bfloat16).to(tl.float32)
        u = (acc_u * sa[:, None] * su[None, :]).to(tl.bfloat16).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(tl.bfloat16).to(tl.float32)  # layer_ops.silu_mul_block's form
        h = (act * u).to(tl.bfloat16).to(tl.float32)
        return tl.minimum(tl.maximum(h * inv, -448.0), 448.0).to(tl.float8e4nv)

    @triton.jit
    def _fp8_gemm_swiglu_kernel(a_desc, b_desc, q_ptr, rs_ptr, ws_ptr, inv_ptr, scale_ptr, qrs_ptr, M, I, K,
                                num_programs, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr, FLATTEN: tl.constexpr):
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(I, BLOCK_N)
        num_tiles = num_m * num_n
        per_group = GROUP_M * num_n  # tiles of GROUP_M row blocks share their weight columns in L2
        inv = tl.load(inv_ptr)
        for tile in tl.range(tl.program_id(0), num_tiles, num_programs, flatten=FLATTEN):
            first_m = (tile // per_group) * GROUP_M
            group_m = min(num_m - first_m, GROUP_M)
            pid_m = first_m + (tile % per_group) % group_m
            pid_n = (tile % per_group) // group_m
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
                a = a_desc.load([off_m, k])
                bg = b_desc.load([off_n, k])
                bu = b_desc.load([I + off_n, k])
                acc_g = tl.dot(a, bg.T, acc_g)
                acc_u = tl.dot(a, bu.T, acc_u)
            rm = off_m + tl.arange(0, BLOCK_M)
            rn = off_n + tl.arange(0, BLOCK_N)
            m_ok = rm < M
            n_ok = rn < I
            qv = _swiglu_epilogue(acc_g, acc_u, rm, rn, m_ok, n_ok, rs_ptr, ws_ptr, I, inv)
            tl.store(q_ptr + rm.to(tl.int64)[:, None] * I + rn[None, :], qv, mask=m_ok[:, None] & n_ok[None, :])
            # the row scales from the first column tile (a masked store: the flattened loop takes no branch)
            tl.store(qrs_ptr + rm, tl.zeros([BLOCK_M], tl.float32) + tl.load(scale_ptr), mask=m_ok & (rm * 0 + pid_n == 0))


def mode() -> str:
    """GRAPHRT_FP8_GATE_UP: scaled_mm (the default: _scaled_mm, then silu_mul_fp8) or triton (this
    kernel for every row count above the skinny GEMM's; opt-in until benchmarks/fp8_swiglu.py shows it
    faster on the device)."""
    value = os.environ.get("GRAPHRT_FP8_GATE_UP", "scaled_mm")
    if value not in MODES:
        raise OptionError(f"GRAPHRT_FP8_GATE_UP must be one of {', '.join(MODES)}, not {value!r}")
    return value


def usable(q: torch.Tensor, gate_up, down, tile=None) -> bool:
    """Whether the kernel can run for these operands: CUDA on Hopper or newer (tensor descriptors) or
    the interpreter, a bf16 model, no bias, K a multiple of BLOCK_K, static W8A8 linears, e4m3 weights."""
    block_k = (tile or TILE)[2]
    on_device = q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and not q.is_cuda
    return (triton is not None and (on_device or interpreted) and q.shape[1] % block_k == 0
            and gate_up.bias is None and gate_up.out_dtype == torch.bfloat16
            and gate_up.out_features % 2 == 0 and down.in_features * 2 == gate_up.out_features
            and getattr(gate_up, "act", None) == "static" and getattr(down, "act", None) == "static"
            and getattr(gate_up, "weight_format", "e4m3") == "e4m3")


def runs_fused(rows: int, q: torch.Tensor, gate_up, down) -> bool:
    """Whether fp8_layer_forward takes this kernel for a prefill of `rows` rows (above the skinny
    GEMM's rows; the same answer for the same row count, so graphs and eager agree)."""
    from .triton_gemm import SKINNY_MAX_ROWS

    return mode() == "triton" and rows > SKINNY_MAX_ROWS and usable(q, gate_up, down)


_SMS: dict[int, int] = {}


def _programs(device: torch.device, tiles: int, persistent: bool) -> int:
    if not persistent:
        return tiles
    if device.type != "cuda":
        return min(tiles, 4)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return min(tiles, _SMS[idx])


def fp8_gemm_swiglu(q: torch.Tensor, row_scale: torch.Tensor, gate_up, down, tile=None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """q [M, K] e4m3 (gate_up's input), row_scale [M, 1] -> (e4m3 [M, I] down's input
    quantize(silu(gate) * up), its row scales [M, 1] float32)."""
    m, k = q.shape
    i = gate_up.out_features // 2
    block_m, block_n, block_k, group_m, warps, stages, form = tile or TILE
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    out = torch.empty((m, i), dtype=torch.float8_e4m3fn, device=q.device)
    out_rs = torch.empty((m, 1), dtype=torch.float32, device=q.device)
    a_desc = TensorDescriptor(q, [m, k], [q.stride(0), 1], [block_m, block_k])
    w = gate_up.weight_fp8
    b_desc = TensorDescriptor(w, [2 * i, k], [w.stride(0), 1], [block_n, block_k])
    tiles = triton.cdiv(m, block_m) * triton.cdiv(i, block_n)
    programs = _programs(q.device, tiles, form != "tiles")
    _fp8_gemm_swiglu_kernel[(programs,)](
        a_desc, b_desc, out, row_scale, gate_up.weight_scale, down.inv_input_scale, down.input_scale, out_rs,
        m, i, k, programs, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        NUM_STAGES=stages, FLATTEN=form == "persistent", num_warps=warps)
    return out, out_rs

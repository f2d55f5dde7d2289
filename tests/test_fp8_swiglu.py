"""The FP8 gate/up GEMM with SiLU*mul and down_proj's quantization in its epilogue
(calib/fp8_gemm_swiglu.py) against the unfused form: the GEMM, then graphrt/kernels/fp8_ops.silu_mul_fp8.

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set by conftest without a
GPU). The interpreter truncates fp32 to bf16 and converts some values to e4m3 wrongly, so the
operands make every product and fp32 sum exact and every gate/up value exact in bf16 (small
integers times powers of two, as tests/test_fp8_skinny.py does): then the unfused reference (the
exact bf16 gate/up through silu_mul_fp8, run by the same interpreter with the same rounding
conversions) must equal the fused kernel byte for byte, whatever the interpreter's e4m3 rounding.
GPU forms with random data at the 3B's shapes and the model paths: tests/test_calib_gpu.py.
"""

from __future__ import annotations

import os

import pytest
import torch

from calib import FP8Linear
from graphrt.errors import OptionError

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
INTERPRETED = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="CPU interpreter test (GPU: tests/test_calib_gpu.py)")
FP8 = torch.float8_e4m3fn


def exact_linears(m, i, k, seed, down_scale=2.0**-9):
    """x in {-2..2} with row scale 1/4, gate/up weights in {-1, 0, 1} with power-of-two channel
    scales: gate and up are integers (|.| < 256) times powers of two, exact in fp32 and bf16."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (m, k), generator=g).float()
    w = torch.randint(-1, 2, (2 * i, k), generator=g).float()
    assert (x @ w.t()).abs().max() < 256
    gate_up = FP8Linear(torch.randn(2 * i, k, generator=g).bfloat16(), None, 1.0, "gate_up", act="static")
    gate_up.weight_fp8 = w.to(FP8)
    gate_up.weight_scale = 2.0 ** torch.randint(-3, 1, (1, 2 * i), generator=g).float()
    down = FP8Linear(torch.randn(8, i, generator=g).bfloat16(), None, down_scale, "down", act="static")
    return x.to(FP8), torch.full((m, 1), 0.25), gate_up, down


def unfused(q, rs, gate_up, down):
    """The two-kernel form with the exact gate/up product (what _scaled_mm writes for these operands)."""
    from graphrt.kernels.fp8_ops import silu_mul_fp8

    y = ((q.double() @ gate_up.weight_fp8.double().t()) * rs.double() * gate_up.weight_scale.double())
    return silu_mul_fp8(y.to(torch.bfloat16).contiguous(), down)


TILES = [
    (32, 32, 32, 2, 4, 2, "tiles"),
    (32, 32, 32, 2, 4, 2, "persistent"),
    (32, 16, 64, 1, 4, 2, "persistent"),  # 16-column tiles, one K block per stage pair
]


@needs_interpreter
@pytest.mark.parametrize("m,i,k", [(70, 64, 128), (33, 40, 64), (1, 32, 64)])
@pytest.mark.parametrize("tile", TILES, ids=["tiles", "persistent", "persistent-narrow"])
def test_fused_epilogue_equals_the_gemm_then_silu_mul_fp8(m, i, k, tile):
    """Partial row tiles (70, 33, 1 rows), I not a multiple of BLOCK_N (40 = 1.25 tiles: the gate
    tile reads up rows it must not store), several K blocks, every form; down's scale small enough
    that some values clip at +-448."""
    from calib.fp8_gemm_swiglu import fp8_gemm_swiglu

    q, rs, gate_up, down = exact_linears(m, i, k, seed=m + i + k)
    want_q, want_rs = unfused(q, rs, gate_up, down)
    got_q, got_rs = fp8_gemm_swiglu(q, rs, gate_up, down, tile=tile)
    assert got_q.dtype == FP8 and got_q.shape == (m, i) and got_rs.shape == (m, 1)
    assert torch.equal(got_q.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(got_rs, want_rs) and torch.all(got_rs == down.input_scale)
    assert (got_q.float().abs() == 448).any(), "the operands should make some values clip"


def test_mode_switch(monkeypatch):
    """GRAPHRT_FP8_GATE_UP: scaled_mm (the two-kernel form) by default, triton on request, anything
    else refused; the skinny rows (the decode step) never take the fused GEMM; an unknown form too."""
    from calib import fp8_gemm_swiglu as fs

    q, rs, gate_up, down = exact_linears(70, 32, 128, seed=3)
    monkeypatch.delenv("GRAPHRT_FP8_GATE_UP", raising=False)
    assert fs.mode() == "scaled_mm" and not fs.runs_fused(70, q, gate_up, down)
    monkeypatch.setenv("GRAPHRT_FP8_GATE_UP", "triton")
    assert not fs.runs_fused(64, q, gate_up, down)
    assert fs.runs_fused(70, q, gate_up, down) == fs.usable(q, gate_up, down)
    monkeypatch.setenv("GRAPHRT_FP8_GATE_UP", "cublas")
    with pytest.raises(OptionError, match="GRAPHRT_FP8_GATE_UP"):
        fs.mode()
    with pytest.raises(ValueError, match="form"):
        fs.fp8_gemm_swiglu(q, rs, gate_up, down, tile=(32, 32, 32, 2, 4, 2, "ws"))


def test_usable_refuses_what_the_kernel_cannot_run():
    from calib.fp8_gemm_swiglu import usable

    q, _, gate_up, down = exact_linears(70, 32, 128, seed=4)
    dyn = FP8Linear(torch.randn(8, 32), None, 1.0, "down", act="dynamic")
    assert not usable(q, gate_up, dyn)  # per-row scales need the whole row: not in a tile's epilogue
    assert not usable(q[:, :64], gate_up, down)  # K not a multiple of BLOCK_K
    if INTERPRETED:
        assert usable(q, gate_up, down)

"""The FP8 gate/up GEMM with the SiLU*mul + quantize epilogue (calib/fp8_gemm_swiglu.py) on CUDA
(skipped without a GPU): at the 3B's shapes against the unfused form (`_scaled_mm` row-wise, then
fp8_ops.silu_mul_fp8) within one e4m3 step on a tiny fraction of codes (the fp32 sums run in
another order than cuBLAS's, so a bf16 gate/up value can differ by an ulp and move an e4m3 rounding
one step), and on the mid checkpoint: the prefill takes the kernel and the FP8 graphs still give
the FP8 eager loop's tokens. CPU forms (exact operands, byte for byte): tests/test_fp8_swiglu.py."""

from __future__ import annotations

import pytest
import torch

from calib import FP8Linear
from calib import fp8_gemm_swiglu as fs
from calib.quantize import FP8_MAX, quantize_input_torch
from graphrt.kernels.fp8_ops import silu_mul_fp8

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - the gpu mark skips these on CPU
    pytest.skip("needs a GPU", allow_module_level=True)


def _linears(inter, hidden, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    gate_up = FP8Linear((torch.randn(2 * inter, hidden, device="cuda", generator=g) / hidden**0.5).to(torch.bfloat16),
                        None, 4.0 / FP8_MAX, "gate_up")
    down = FP8Linear(torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16), None, 1.5 / FP8_MAX, "down")
    return gate_up, down, g


def within_one_step(got, want, max_fraction):
    gq, wq = got.view(torch.uint8).int(), want.view(torch.uint8).int()
    diff = (gq - wq).abs()
    zero = (got.float() == 0) & (want.float() == 0)
    ok = (diff == 0) | zero | ((diff == 1) & ((gq & 0x80) == (wq & 0x80)))
    frac = ((diff != 0) & ~zero).float().mean().item()
    assert bool(ok.all()), f"{int((~ok).sum())} codes differ by more than one e4m3 step"
    assert frac <= max_fraction, f"{frac:.2e} of codes differ"
    return frac


@pytest.mark.parametrize("rows", [65, 512, 4100, 16384])
def test_fused_gemm_within_one_step_of_scaled_mm_and_pass(rows):
    """The 3B's gate/up (2 x 11,008 x 2,048); row counts with a partial last row tile (65, 4,100);
    clipping at +-448 included (down's scale makes the largest values clip)."""
    gate_up, down, g = _linears(11008, 2048)
    x = (torch.randn(rows, 2048, device="cuda", generator=g) * 1.5).to(torch.bfloat16)
    q, rs = quantize_input_torch(x, gate_up.inv_input_scale, gate_up.input_scale)
    assert fs.usable(q, gate_up, down)
    want, want_rs = silu_mul_fp8(gate_up.forward_fp8(q, rs), down)
    got, got_rs = fs.fp8_gemm_swiglu(q, rs, gate_up, down)
    assert torch.equal(got_rs, want_rs)
    frac = within_one_step(got, want, 1e-3)
    print(f"rows {rows}: {frac:.2e} of codes one step apart; clipped {(got.float().abs() == 448).float().mean():.1e}")
    assert (want.float().abs() == 448).any()


@pytest.mark.parametrize("tile", [(128, 128, 128, 8, 8, 3, "tiles"), (128, 128, 128, 8, 8, 4, "persistent"),
                                  (128, 128, 64, 8, 8, 6, "persistent")], ids=["tiles", "persistent", "persistent-k64"])
def test_every_form_computes_the_same_codes(tile):
    """The loop forms and tiles differ only in scheduling and summation order: the unfused codes up
    to one step on a tiny fraction, partial tiles in M and N."""
    gate_up, down, g = _linears(1000, 1024, seed=1)  # I = 1000: a partial column tile
    x = torch.randn(300, 1024, device="cuda", generator=g).to(torch.bfloat16)
    q, rs = quantize_input_torch(x, gate_up.inv_input_scale, gate_up.input_scale)
    want, _ = silu_mul_fp8(gate_up.forward_fp8(q, rs), down)
    got, _ = fs.fp8_gemm_swiglu(q, rs, gate_up, down, tile=tile)
    within_one_step(got, want, 1e-3)


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    from calib import calibrate
    from graphrt import Engine
    from test_engine_gpu import small
    from test_static_path import A, B, C
    from weights.synth import write_preset

    ckpt = write_preset("mid", tmp_path_factory.mktemp("mid_glu"), device="cuda", progress=False)
    base = Engine.from_pretrained(ckpt, device="cuda", dtype="bfloat16", graphs="off", progress=False)
    pairs = [(small(A), "cat"), (small(B), "dog"), (small(C), "person</c>car")]
    path = calibrate(base, pairs, steps=2, batch=3, progress=False).save(tmp_path_factory.mktemp("c") / "c.json")
    return base.with_options(fp8=str(path))


@pytest.mark.parametrize("which", ["triton", "scaled_mm"])
def test_fp8_graphs_take_the_fused_gemm_and_equal_eager(mid, monkeypatch, which):
    """Graphs (fused layer) with the gate/up epilogue GEMM on every prefill, or the two-kernel A/B
    form, give the FP8 eager loop's tokens (random weights: agreement between paths, not meaning)."""
    from capture import Buckets, GraphRuntime
    from test_engine_gpu import GEN, small
    from test_static_path import A, B, eager_tokens, prepare

    monkeypatch.setenv("GRAPHRT_FP8_GATE_UP", which)
    calls = []
    orig = fs.fp8_gemm_swiglu
    monkeypatch.setattr(fs, "fp8_gemm_swiglu", lambda *a, **k: calls.append(a[0].shape[0]) or orig(*a, **k))
    buckets = Buckets(batch_sizes=(1, 2), patch_budgets=(128, 256), prefill_lengths=(192, 320), max_new_tokens=40)
    batch = prepare(mid, [(small(A), "cat"), (small(B), "the tallest person in the picture")])
    graphs = GraphRuntime(mid.model, buckets, GEN, attention="torch-fa2", strict=True)
    graphs.warmup(progress=False)
    replayed = [r.tokens for r in graphs.run(batch, GEN)]
    assert replayed == eager_tokens(mid, batch, GEN)
    if which == "triton":
        assert calls and min(calls) > 64  # prefill rows only; the step stays on the skinny kernel
    else:
        assert not calls

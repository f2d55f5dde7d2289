"""FP8 vision linears (scope `vision`) that cost no extra pass: the add+LayerNorm kernel writes the
e4m3 input of wqkv / fc0, one GELU pass writes fc1's, the attention kernel's store writes wo's
(graphrt/vision_kernels.py, graphrt/kernels/vision_attention.py, graphrt/vision.py). On CPU the
kernels run under Triton's interpreter (TRITON_INTERPRET=1, set by conftest without a GPU).

Bytes: the interpreter converts to e4m3 wrongly for some values (a rounding that should carry into
the exponent drops a binade, 1.99 -> 1; subnormals round to the wrong step: ~3% of random
elements, tests/test_fp8_fused.py), so on CPU each producer is compared byte for byte with its
unfused form followed by the quantizer kernel run through the same interpreter
(calib/quantize.quantize_input_triton), and the tower's unfused FP8 path and its dequantized
reference quantize through that kernel too. The GELU kernel computes tanh as 1 - 2/(exp(2u)+1),
within an fp32 ulp or two of torch's tanh, which can move a value across an e4m3 rounding
boundary: those bytes may differ by one e4m3 step on a small fraction of elements. On the GPU
(compiled, correct rounding) the same producers are compared with torch's quantizer
(tests/test_calib_gpu.py). Random weights: the tower test compares paths on identical weights,
never meaning. GPU forms: tests/test_calib_gpu.py."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from calib import CalibrationError, FP8Linear, calibrate, quantize_model
from calib.calibration import Calibration
from calib.quantize import FP8, FP8_MAX, quantize_input_triton

from conftest import random_image

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
INTERPRETED = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="CPU interpreter test (GPU: tests/test_calib_gpu.py)")


def _linear(k, n, scale, seed=0):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) / k**0.5
    return FP8Linear(w, None, scale, "lin", act="static")


def matches_rule(got: torch.Tensor, want: torch.Tensor, max_fraction: float) -> None:
    """e4m3 bytes equal to `want`, except one e4m3 step (adjacent codes, same sign) on at most
    max_fraction of elements, or (interpreter) the binade its carry bug drops next to such a step."""
    g, w = got.view(torch.uint8).int(), want.view(torch.uint8).int()
    near = ((g - w).abs() == 1) & ((g & 0x80) == (w & 0x80))
    binade = ((got.float() * 2 == want.float()) | (got.float() == want.float() * 2)) & INTERPRETED
    ok = (g == w) | near | binade
    assert bool(ok.all()), f"{int((~ok).sum())} e4m3 codes differ beyond one step"
    assert (g != w).float().mean().item() <= max_fraction


@needs_interpreter
@pytest.mark.parametrize("with_delta", [True, False])
def test_layernorm_writes_the_quantizer_bytes(with_delta):
    import graphrt.vision_kernels as vk

    g = torch.Generator().manual_seed(1)
    n, c = 9, 80
    x, d = torch.randn(n, c, generator=g) * 3, torch.randn(n, c, generator=g)
    w, b = torch.rand(c, generator=g) * 2, 0.3 * torch.randn(c, generator=g)
    # scale so that |h| up to ~4 maps past 448: a tenth of the elements clip
    lin = _linear(c, 8, 2.5 / FP8_MAX)
    delta = d if with_delta else None
    xo, q, rs = vk.add_layernorm_fp8(x, delta, w, b, 1e-5, lin)
    want_x, h = vk.add_layernorm(x, delta, w, b, 1e-5)
    assert torch.equal(xo, want_x) and (xo is x) == (not with_delta)
    assert q.dtype == FP8 and rs.shape == (n, 1) and bool((rs == lin.input_scale).all())
    # the bytes of the quantizer kernel on add_layernorm's row (the same interpreter rounding)
    tq, _ = quantize_input_triton(h, lin.inv_input_scale, lin.input_scale)
    assert torch.equal(q.view(torch.uint8), tq.view(torch.uint8))
    clipped = h.float().abs() * lin.inv_input_scale > FP8_MAX
    assert clipped.any() and bool((q.float()[clipped].abs() == FP8_MAX).all())  # clipping at +-448
    assert not q.float().isnan().any()


@needs_interpreter
def test_gelu_pass_writes_the_quantizer_bytes():
    import graphrt.vision_kernels as vk

    g = torch.Generator().manual_seed(2)
    y = torch.randn(7, 1500, generator=g) * 4  # two column blocks, the last partial
    y[0, :6] = torch.tensor([-30.0, -8.0, 0.0, 8.0, 30.0, 1e4])  # saturating tanh, clipped past 448
    lin = _linear(1500, 8, 6.0 / FP8_MAX)
    q, rs = vk.gelu_fp8(y, lin)
    ref = F.gelu(y, approximate="tanh")
    wq, _ = quantize_input_triton(ref, lin.inv_input_scale, lin.input_scale)
    matches_rule(q, wq, 0.005)
    assert bool((rs == lin.input_scale).all()) and rs.shape == (7, 1)
    assert q[0, :6].float().tolist() == [0.0, 0.0, 0.0, 448.0, 448.0, 448.0]  # -30*Phi(-30) rounds to -0
    assert not q.float().isnan().any()


@needs_interpreter
@pytest.mark.parametrize("packed", [False, True])
def test_attention_store_writes_the_quantizer_bytes(packed):
    from graphrt.kernels.vision_attention import vision_attention

    g = torch.Generator().manual_seed(3)
    used, slot, heads, d = [37, 80], 80, 2, 24
    starts = [0, 37] if packed else [0, slot]
    total = 37 + 80 if packed else 2 * slot
    qkv = torch.randn(total, 3, heads, d, generator=g)
    cu = torch.tensor(starts + [total], dtype=torch.int32)
    lens = torch.tensor(used, dtype=torch.int32)
    lin = _linear(heads * d, 8, 0.4 / FP8_MAX)  # attention outputs of ~0.5 clip in part
    q, rs = vision_attention(qkv, cu, lens, slot if not packed else max(used), packed=packed, fp8_for=lin)
    ref = vision_attention(qkv, cu, lens, slot if not packed else max(used), packed=packed)
    rows = torch.arange(total) if not packed else torch.cat([torch.arange(s, s + n) for s, n in zip(starts, used)])
    tq, _ = quantize_input_triton(ref[rows].reshape(len(rows), -1), lin.inv_input_scale, lin.input_scale)
    assert torch.equal(q[rows].reshape(len(rows), -1).view(torch.uint8), tq.view(torch.uint8))
    assert bool((rs[rows] == lin.input_scale).all())
    assert (q[rows].float().abs() == FP8_MAX).any()


# ---------------------------------------------------------------------------------------------
# The tower with FP8 vision linears, and the calibration file.


@pytest.fixture(scope="module")
def vision_calib(tiny_engine):
    pairs = [(random_image(84, 70, seed=30), "cat"), (random_image(70, 56, seed=31), "a red car")]
    return calibrate(tiny_engine, pairs, steps=1, batch=2, progress=False)


def _tower_inputs(vision, grids, seed=4):
    from graphrt.vision import vision_geometry

    geo = vision_geometry(grids, vision.cfg, "cpu")
    p = vision.cfg.patch_size
    pixels = torch.randn(geo.num_patches, 3, p, p, generator=torch.Generator().manual_seed(seed))
    return pixels, vision.positions(grids), geo


@needs_interpreter
@torch.no_grad()
def test_fused_fp8_tower_equals_unfused_and_the_dequantized_reference(tiny_engine, vision_calib, monkeypatch):
    """Scope `vision`: every MoonViT linear FP8 (static scales). The fused tower (producers writing
    the e4m3 inputs, the packed attention kernel's store quantizing wo's input) against (a) the
    unfused tower on the same FP8 linears (quantizer, CPU _scaled_mm) and (b) the unfused tower
    on the dequantized reference (FP8Linear.reference: the rule's e4m3 input, fp32 math on the
    dequantized operands); both quantize through the interpreter's quantizer kernel (module
    docstring). Bound: 1e-3 relative L2 (measured 1e-7: float32 here, the same e4m3 bytes on both
    sides), where e4m3 itself moves the tower by ~9e-2 against fp32 (asserted > 5e-3, so FP8 is
    really in use); a value landing on the other side of an e4m3 rounding boundary (the GELU's
    tanh form, fp32 sum order, the attention kernel vs SDPA) moves one element by one step."""
    from graphrt.attention.sdpa import vision_attention
    from graphrt.vision import PackedImages

    model = quantize_model(tiny_engine.model, vision_calib, "vision")
    vision, base = model.vision, tiny_engine.model.vision
    assert all(isinstance(m, FP8Linear) for m in vision.modules() if hasattr(m, "weight_fp8"))
    assert len(model.fp8_info.linears) == 4 * len(vision.blocks)
    grids = [(4, 6), (2, 4)]
    pixels, pos, geo = _tower_inputs(vision, grids)
    packed = PackedImages.of(geo.seqlens, "cpu")
    before = vision.fused
    monkeypatch.setattr("calib.fp8_linear.quantize_input",
                        lambda x2d, inv, scale, use_triton, dynamic=False: quantize_input_triton(x2d, inv, scale))
    monkeypatch.setattr("calib.fp8_linear.quantize_input_torch", quantize_input_triton)
    try:
        vision.fused = True
        fused = vision(pixels, pos, geo, packed)
        vision.fused = False
        unfused = vision(pixels, pos, geo, vision_attention)
        with monkeypatch.context() as m:
            m.setattr(FP8Linear, "forward", lambda self, x: self.reference(x).to(x.dtype))
            reference = vision(pixels, pos, geo, vision_attention)
        base.fused = False
        full = base(pixels, pos, geo, vision_attention)
    finally:
        vision.fused = before
        base.fused = before

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    fp8_error = rel(reference, full)
    assert fp8_error > 5e-3  # e4m3 is in use
    assert rel(fused, unfused) < 1e-3
    assert rel(fused, reference) < 1e-3


def test_calibration_records_vision_linears_and_round_trips(tiny_engine, vision_calib, tmp_path):
    vision_names = [n for n in vision_calib.linears if n.startswith("vision.blocks.")]
    assert len(vision_names) == 4 * len(tiny_engine.model.vision.blocks)
    for n in vision_names:
        e = vision_calib.linears[n]
        assert e["amax"] > 0 and e["scale"] == pytest.approx(e["amax"] / FP8_MAX) and e["calls"] > 0
    path = vision_calib.save(tmp_path / "c.json")
    back = Calibration.load(path)
    assert back.linears == vision_calib.linears
    model = quantize_model(tiny_engine.model, path, "lm,vision")
    assert {n for n in model.fp8_info.linears if n.startswith("vision.")} == set(vision_names)
    for n in vision_names:
        assert float(model.get_submodule(n).input_scale) == pytest.approx(vision_calib.scale(n), rel=1e-7)


def test_scope_with_vision_refused_for_an_lm_only_file(tiny_engine, vision_calib, tmp_path):
    """A file without the vision linears' scales (e.g. an older LM-only file) still loads for scope
    `lm`, and a scope naming `vision` is refused, naming the group and what is missing."""
    data = vision_calib.to_dict()
    data["linears"] = {n: e for n, e in data["linears"].items() if n.startswith("llm.")}
    lm_only = Calibration.from_dict(data)
    path = lm_only.save(tmp_path / "lm_only.json")
    assert quantize_model(tiny_engine.model, path, "lm").fp8_info.linears  # backward compatible
    with pytest.raises(CalibrationError) as err:
        quantize_model(tiny_engine.model, path, "lm,vision")
    msg = str(err.value)
    assert "lm_only.json" in msg and "group 'vision'" in msg and "vision.blocks.0." in msg
    assert "calibrate again" in msg and "'lm,vision'" in msg
    with pytest.raises(CalibrationError, match="group 'projector'"):
        quantize_model(tiny_engine.model, path, "projector")


def test_fc0_path_switch(tiny_engine, monkeypatch):
    """GRAPHRT_VISION_FP8_FC0 picks fc0's FP8 form (triton: the GEMM with the GELU epilogue, the
    default; scaled_mm: _scaled_mm + the GELU pass); any other value is an OptionError naming it."""
    from graphrt.errors import OptionError
    from graphrt.vision import MoonViT

    cfg = tiny_engine.cfg.vision
    monkeypatch.delenv("GRAPHRT_VISION_FP8_FC0", raising=False)
    assert MoonViT(cfg, torch.float32, "meta").fp8_fc0_epilogue is True
    monkeypatch.setenv("GRAPHRT_VISION_FP8_FC0", "scaled_mm")
    assert MoonViT(cfg, torch.float32, "meta").fp8_fc0_epilogue is False
    monkeypatch.setenv("GRAPHRT_VISION_FP8_FC0", "cublas")
    with pytest.raises(OptionError, match="GRAPHRT_VISION_FP8_FC0"):
        MoonViT(cfg, torch.float32, "meta")

"""FP8 calibration files and FP8 linears on CPU (torch's CPU `_scaled_mm` runs the same row-wise
e4m3 GEMM contract as CUDA, with float32 output). Random weights: these tests compare arithmetic
paths and error bounds, never the meaning of tokens."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from calib import Calibration, CalibrationError, FP8Linear, calibrate, checkpoint_fingerprint, quantize_model, select
from calib.apply import linear_modules
from calib.quantize import FP8_MAX, dequantize, quantize_input_torch, quantize_weight
from capture import GraphRuntime
from graphrt import Engine, EngineOptions
from test_static_path import BUCKETS, CASES, GEN, eager_tokens, prepare, static_tokens
from weights.synth import write_preset

from conftest import random_image

EPS = 2.0**-4  # e4m3: 3 mantissa bits, round to nearest -> relative error <= 2^-4 for normal values
SUBNORMAL_HALF_STEP = 2.0**-10  # smallest e4m3 step is 2^-9; rounding adds at most half of it (times the scale)


@pytest.fixture(scope="module")
def pairs():
    return [(random_image(70 + 9 * i, 60, seed=10 + i), q) for i, q in
            enumerate(["cat", "person</c>car", "the red umbrella", "x", "dog", "a bird"])]


@pytest.fixture(scope="module")
def calib(tiny_engine, pairs):
    return calibrate(tiny_engine, pairs[:4], steps=2, batch=2, progress=False)


@pytest.fixture(scope="module")
def calib_file(calib, tmp_path_factory):
    return calib.save(tmp_path_factory.mktemp("calib") / "calib.json")


def test_calibration_covers_every_linear_with_positive_finite_scales(tiny_engine, calib):
    names = linear_modules(tiny_engine.model)
    assert set(calib.linears) == set(names)
    for name, e in calib.linears.items():
        assert math.isfinite(e["scale"]) and e["scale"] > 0, name
        assert e["scale"] == pytest.approx(e["amax"] / FP8_MAX)
        assert (e["in"], e["out"]) == (names[name].weight.shape[1], names[name].weight.shape[0])
        assert e["calls"] >= 1 and e["rows"] >= 1
    # vision, prefill with the first round (merged, as the eager backend runs it) and the second
    # step ran through the LM linears: more calls than batches
    assert calib.linears["llm.layers.0.qkv_proj"]["calls"] >= 2 * 2
    assert calib.dataset["pairs"] == 4 and calib.checkpoint_fingerprint == checkpoint_fingerprint(
        tiny_engine.checkpoint_dir)


def test_amax_is_the_largest_input_seen(tiny_engine, pairs, calib):
    """Independent check of the observer: max |x| of one linear's inputs, recorded by a plain hook."""
    seen = []
    mod = linear_modules(tiny_engine.model)["llm.layers.1.down_proj"]
    h = mod.register_forward_pre_hook(lambda m, a: seen.append(float(a[0].abs().max())))
    try:
        tiny_engine.with_options(graphs="off", fixed_steps=2, eager_batch=2).locate_batch(pairs[:4])
    finally:
        h.remove()
    assert calib.linears["llm.layers.1.down_proj"]["amax"] == pytest.approx(max(seen), rel=1e-6)


def test_percentile_statistic_is_at_most_amax(tiny_engine, pairs):
    cal = calibrate(tiny_engine, pairs[:2], steps=1, batch=2, percentile=99.0, progress=False)
    assert cal.statistic == "p99"
    for e in cal.linears.values():
        assert 0 < e["percentile"] <= e["amax"] and e["scale"] == pytest.approx(e["percentile"] / FP8_MAX)


def test_json_round_trip(calib, calib_file):
    loaded = Calibration.load(calib_file)
    assert loaded.to_dict() == calib.to_dict()
    data = json.loads(calib_file.read_text())
    assert data["graphrt_version"] and data["date"] and data["checkpoint"]["fingerprint"]
    assert data["dataset"]["items"][0][1] == "cat"


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_scale_is_refused(calib, tmp_path, bad):
    d = calib.to_dict()
    d["linears"]["llm.layers.0.o_proj"]["scale"] = bad
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="positive and finite"):
        Calibration.load(path)


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        Calibration.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not a readable JSON"):
        Calibration.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(CalibrationError, match="not a graphrt calibration"):
        Calibration.load(tmp_path / "y.json")


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    return write_preset("tiny", tmp_path_factory.mktemp("other"), seed=1, progress=False)


def test_calibration_of_another_checkpoint_is_refused(tiny_engine, calib_file, other_ckpt):
    assert checkpoint_fingerprint(other_ckpt) != checkpoint_fingerprint(tiny_engine.checkpoint_dir)
    with pytest.raises(CalibrationError, match="another checkpoint"):
        Engine.from_pretrained(other_ckpt, EngineOptions(device="cpu", dtype="float32", progress=False,
                                                         fp8=str(calib_file)))
    out = subprocess.run([sys.executable, "-m", "graphrt.cli", "status", "--checkpoint", str(other_ckpt), "--device",
                          "cpu", "--fp8", str(calib_file)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "another checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_fingerprint_sees_a_changed_tensor(tiny_ckpt, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, copy)
    assert checkpoint_fingerprint(copy) == checkpoint_fingerprint(tiny_ckpt)
    tensors = load_file(str(copy / "model.safetensors"))
    name = "language_model.model.layers.0.mlp.down_proj.weight"
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, str(copy / "model.safetensors"))
    assert checkpoint_fingerprint(copy) != checkpoint_fingerprint(tiny_ckpt)


def _bound(x2d: torch.Tensor, lin: FP8Linear) -> torch.Tensor:
    """Worst-case |FP8 output - exact output| per element from e4m3 rounding of both operands:
    each operand v becomes v' with |v' - v| <= EPS |v| + SUBNORMAL_HALF_STEP * scale."""
    w = lin_weight_exact[lin]
    sx = float(lin.input_scale)
    sw = lin.weight_scale.reshape(-1, 1)
    dx = EPS * x2d.abs() + SUBNORMAL_HALF_STEP * sx
    dw = EPS * w.abs() + SUBNORMAL_HALF_STEP * sw
    return dx @ w.abs().t() + x2d.abs() @ dw.t() + dx @ dw.t()


lin_weight_exact: dict = {}


@pytest.mark.parametrize("rows", [1, 12, 33])
@pytest.mark.parametrize("bias", [False, True])
def test_fp8_linear_matches_dequantized_reference_within_bound(rows, bias):
    g = torch.Generator().manual_seed(rows)
    k, n = 96, 80
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    w[3] *= 40  # channels of very different ranges: per-channel scales keep each one exact to 2^-4
    w[5] = 0  # an all-zero channel
    b = torch.randn(n, generator=g) if bias else None
    x = torch.randn(rows, k, generator=g) * 3
    x[0, 7] = 20.0  # the calibrated max
    lin = FP8Linear(w, b, input_scale=20.0 / FP8_MAX)
    lin_weight_exact[lin] = w
    y = lin(x)
    # 1. the GEMM is exactly dequantize(q_x) @ dequantize(q_w)^T (+ b), up to float32 summation order (which
    # depends on the CPU's BLAS path: 1.5e-5 on channel 3, whose weights are x40, on one CI machine; an e4m3
    # mistake moves outputs by ~1e-2)
    torch.testing.assert_close(y, lin.reference(x), rtol=1e-5, atol=1e-4)
    # 2. and within the e4m3 rounding bound of the exact float product
    exact = x @ w.t() + (b if bias else 0)
    err = (y - exact).abs()
    assert torch.all(err <= _bound(x, lin) + 1e-5)
    assert torch.all(y[:, 5] == (b[5] if bias else 0))
    # 3. quantization really happened (an unquantized path would be exact to float32 rounding)
    assert err.max() > 1e-3


def test_quantize_rules():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [1e-3, 3e-3, -4e-3]])
    q, s = quantize_weight(w)
    assert s.shape == (1, 3)
    torch.testing.assert_close(s[0], torch.tensor([2.0 / FP8_MAX, 1.0, 4e-3 / FP8_MAX]), rtol=1e-6, atol=0)
    deq = dequantize(q, s.t())
    torch.testing.assert_close(deq.abs().amax(1), torch.tensor([2.0, 0.0, 4e-3]), rtol=1e-6, atol=0)  # row max kept
    x = torch.tensor([[448.0, 1000.0, -1000.0, 0.0, 1.0]])
    qx, rs = quantize_input_torch(x, torch.tensor(1.0), torch.tensor(1.0))
    assert qx.dtype == torch.float8_e4m3fn and rs.shape == (1, 1)
    assert qx.float().tolist() == [[448.0, 448.0, -448.0, 0.0, 1.0]]  # clipped, never inf/nan


def test_scope_selection():
    names = ["vision.blocks.0.wqkv", "projector.fc1", "llm.layers.0.qkv_proj", "llm.layers.0.down_proj",
             "llm.layers.10.down_proj"]
    assert select(names, "lm") == names[2:]
    assert select(names, "lm,vision,-down_proj") == [names[0], names[2]]
    assert select(names, "lm,-llm.layers.0.") == [names[4]]
    with pytest.raises(ValueError, match="unknown fp8 scope"):
        select(names, "everything")


def test_quantized_copy_shares_weights_and_engine_switches(tiny_engine, calib_file):
    fp8 = tiny_engine.with_options(fp8=str(calib_file))
    assert fp8.model is not tiny_engine.model
    assert fp8.model.llm.embed_tokens.weight is tiny_engine.model.llm.embed_tokens.weight  # shared, not copied
    assert isinstance(fp8.model.llm.layers[0].qkv_proj, FP8Linear)
    assert not isinstance(fp8.model.vision.blocks[0].wqkv, FP8Linear)
    assert not isinstance(tiny_engine.model.llm.layers[0].qkv_proj, FP8Linear)  # the base is untouched
    assert not isinstance(fp8.model.projector.fc1, FP8Linear)  # projector stays in the model dtype
    status = fp8.status()["fp8"]
    assert status["fp8_linears"] == 8 and status["bf16_linears"] == 10  # default scope: the LM's linears
    assert fp8.with_options(fp8=None).model is tiny_engine.model
    assert fp8.with_options(graphs="off").model is fp8.model
    assert isinstance(fp8.with_options(fp8_scope="lm,vision").model.vision.blocks[1].fc1, FP8Linear)


def test_in_place_fp8_load(tiny_ckpt, calib_file, pairs):
    engine = Engine.from_pretrained(tiny_ckpt, EngineOptions(device="cpu", dtype="float32", progress=False,
                                                             fp8=str(calib_file), fp8_scope="lm"))
    assert isinstance(engine.model.llm.layers[1].down_proj, FP8Linear)
    assert not isinstance(engine.model.vision.blocks[0].wqkv, FP8Linear)
    assert engine.locate(*pairs[0], max_new_tokens=12).tokens
    with pytest.raises(CalibrationError, match="in place"):
        engine.with_options(fp8=None)


def test_fp8_changes_the_answer_path(tiny_engine, calib_file, pairs):
    """The FP8 linears are really on the path: logits move (a mutation that left bf16 linears in
    place would make them identical)."""
    fp8 = tiny_engine.with_options(fp8=str(calib_file), graphs="off", fp8_scope="lm,vision")
    seen = {}
    for name, e in (("bf16", tiny_engine), ("fp8", fp8)):
        emb = e.encode_images([e.processor(pairs[5][0])])[0]
        seen[name] = emb
    assert not torch.equal(seen["bf16"], seen["fp8"])
    cos = torch.nn.functional.cosine_similarity(seen["bf16"].flatten(), seen["fp8"].flatten(), dim=0)
    assert cos > 0.99


@pytest.mark.parametrize("name", ["ragged five", "same image, two queries"])
def test_fp8_static_path_equals_fp8_eager(tiny_engine, calib_file, name):
    """The graph-shaped stage bodies (uncaptured on CPU) with FP8 linears equal the FP8 eager loop."""
    fp8 = tiny_engine.with_options(fp8=str(calib_file), graphs="off")
    batch = prepare(fp8, CASES[name])
    got, _ = static_tokens(fp8, batch)
    assert got == eager_tokens(fp8, batch)
    assert isinstance(GraphRuntime(fp8.model, BUCKETS, GEN, attention="emulated", use_graphs=False).model.llm.layers[0]
                      .gate_up_proj, FP8Linear)


def test_quantize_model_refuses_mismatched_shapes(tiny_engine, calib):
    d = calib.to_dict()
    d["linears"]["llm.layers.0.o_proj"]["in"] += 1
    with pytest.raises(CalibrationError, match="other shapes"):
        quantize_model(tiny_engine.model, Calibration.from_dict(d))
    del d["linears"]["llm.layers.1.o_proj"]
    with pytest.raises(CalibrationError, match="no scales"):
        quantize_model(tiny_engine.model, Calibration.from_dict(d))


def test_cli_calibrate_and_report(tiny_ckpt, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        random_image(50 + 10 * i, 60, seed=i).save(images / f"{i}.png")
    out, report = tmp_path / "c.json", tmp_path / "r.md"
    run = subprocess.run([sys.executable, "-m", "graphrt.cli", "calibrate", "--checkpoint", str(tiny_ckpt), "--images",
                          str(images), "--out", str(out), "--pairs", "6", "--held-out", "3", "--report", str(report),
                          "--batch", "3", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    cal = Calibration.load(out)
    held = json.loads(report.with_suffix(".json").read_text())
    cal_images = {i for i, _ in cal.dataset["items"]}
    assert cal.dataset["pairs"] == 6 and not cal_images & {i for i, _ in held["held_out"]["items"]}
    assert held["stages"]["step1"]["window_positions"] == 3 * 6
    assert 0 <= held["stages"]["step1"]["top1_agreement"] <= 1 and "Random weights" in report.read_text()
    bad = subprocess.run([sys.executable, "-m", "graphrt.cli", "calibrate", "--checkpoint", str(tiny_ckpt),
                          "--images", str(tmp_path / "none"), "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "image folder not found" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_status_shows_fp8(tiny_ckpt, calib_file):
    out = subprocess.run([sys.executable, "-m", "graphrt.cli", "status", "--checkpoint", str(tiny_ckpt), "--device",
                          "cpu", "--fp8", str(calib_file)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    fp8 = json.loads(out.stdout)["fp8"]
    assert fp8["scope"] == "lm" and fp8["fp8_linears"] == 8 and fp8["calibration"] == str(calib_file)


def test_jsonl_pairs_split_and_bad_rows(tmp_path):
    from calib.dataset import jsonl_pairs

    good = tmp_path / "p.jsonl"
    good.write_text("\n".join(json.dumps({"image": f"{i}.png", "query": "cat"}) for i in range(5)) + "\n")
    cal, held = jsonl_pairs(good, 3, 4, image_root=tmp_path)
    assert [p[0] for p in cal] == [str(tmp_path / f"{i}.png") for i in range(3)] and len(held) == 2
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"image": "a.png", "query": "cat"}) + "\n{oops\n")
    with pytest.raises(CalibrationError, match="line 2"):
        jsonl_pairs(bad, 3, 0)


def test_calibration_observes_every_linear_of_a_fused_vision_tower(tiny_engine):
    """The fused tower runs fc0 inside a GEMM epilogue, past its module hook (on CUDA by default;
    forced here on Triton's CPU interpreter): calibration must still see every linear, and leave
    the tower's setting as it was."""
    pytest.importorskip("triton")
    vision = tiny_engine.model.vision
    before = vision.fused
    vision.fused = True
    try:
        cal = calibrate(tiny_engine, [(random_image(60, 50, seed=1), "cat")], steps=1, batch=1, progress=False)
        assert vision.fused is True
    finally:
        vision.fused = before
    assert set(cal.linears) == set(linear_modules(tiny_engine.model))


def test_fast_accumulation_switch(monkeypatch):
    """Fast FP8 accumulation is the CUDA default; 0 turns it off; anything else is refused by name
    (a typo must not silently pick a mode)."""
    from calib.fp8_linear import fast_accumulation
    from graphrt.errors import OptionError

    monkeypatch.delenv("GRAPHRT_FP8_FAST_ACCUM", raising=False)
    assert fast_accumulation("cuda") and not fast_accumulation("cpu")
    monkeypatch.setenv("GRAPHRT_FP8_FAST_ACCUM", "0")
    assert not fast_accumulation("cuda")
    monkeypatch.setenv("GRAPHRT_FP8_FAST_ACCUM", "on")
    with pytest.raises(OptionError, match="GRAPHRT_FP8_FAST_ACCUM"):
        fast_accumulation("cuda")

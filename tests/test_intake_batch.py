"""One batch's images prepared together (Intake.prepare_many: equal sizes resized in one set of
launches on the device path) give what preparing each image alone gives: the same pixels bit for
bit, rows, prompts and failures (a bad image fails only its own rows). The device path runs on
CPU tensors here (ImageProcessor(resize_device="cpu")); the GPU runs the same code in the gpu tests."""

from __future__ import annotations

import io

import pytest
import torch

from graphrt import InputError, gpu_resize
from graphrt.intake import Intake, group_by_image
from graphrt.processor import ImageProcessor

from conftest import random_image


@pytest.fixture(autouse=True)
def torch_resize_on_cpu(monkeypatch):
    # CPU tensors take the int32 torch path (Triton's interpreter, which the suite turns on without
    # a GPU, is slow and not thread-safe; tests/test_gpu_resize.py checks the kernel itself).
    monkeypatch.setattr(gpu_resize, "_use_triton", lambda x, use=gpu_resize._use_triton: x.is_cuda and use(x))

A, A2, A3 = (random_image(90, 70, seed=s) for s in (1, 3, 4))  # three distinct images of one size
B = random_image(50, 110, seed=2)


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def device_intake(engine) -> Intake:
    proc = ImageProcessor(engine.preprocessor_config, engine.options.max_image_pixels, resize_device="cpu")
    return Intake(engine.cfg, proc, engine.prompts, engine.options.max_image_pixels, engine.options.max_query_chars)


def mixed_pairs(tmp_path):
    B.save(tmp_path / "b.png")
    return [
        (A, "cat"), (B, "dog"), (A2, "car"), (A, "person</c>car"),   # A's two rows: one group
        (png(A3), "bus"),                                           # bytes, A's size
        (b"not an image", "x"),                                     # a bad image: its row only
        (str(tmp_path / "b.png"), "y" * 40),                        # a path; query over the limit below
        (A2, "z", {"task": "no-such-task"}),                        # a bad option: its row only
        (A3, "bird", {"exemplar_box": (100, 100, 600, 700)}),       # a box crop: an exemplar image
        (A, None, {"task": "detect_text"}),
    ]


def snapshot(outcomes) -> list:
    out = []
    for job, failures in outcomes:
        rows = None if job is None else [
            (r.index, r.query, r.task, r.prompt.ids, r.temperature, [e.rgb.tolist() for e in r.exemplars])
            for r in job.rows]
        image = None if job is None else (job.image.rgb.tolist(), job.image.grid, job.image.size)
        out.append((image, rows, [(i, r.error) for i, r in failures]))
    return out


def test_prepare_many_equals_prepare_one_by_one(tiny_engine, tmp_path, monkeypatch):
    intake = device_intake(tiny_engine)
    intake.max_query_chars = 30
    pairs = mixed_pairs(tmp_path)
    groups = group_by_image(pairs, 8)
    temps = [None, 0.5] + [None] * (len(pairs) - 2)
    gen = tiny_engine.options.generation
    calls = []
    many = ImageProcessor.rescale_many_on_device
    monkeypatch.setattr(ImageProcessor, "rescale_many_on_device",
                        lambda self, ims, d: calls.append(sorted(im.size for im in ims)) or many(self, ims, d))
    batched = intake.prepare_many(pairs, groups, temps, gen, "report", "detect")
    # one resize call per size: A's group, A2, A3's bytes and A3 (90x70); B and its path; A3's box crop
    assert sorted(calls) == [[(45, 42)], [(50, 110), (50, 110)], [(90, 70)] * 4]
    calls.clear()
    alone = [intake.prepare(pairs, g, temps, gen, "report", "detect") for g in groups]
    assert snapshot(batched) == snapshot(alone)
    failed = {i: e for _, fails in batched for i, e in ((i, r.error) for i, r in fails)}
    assert set(failed) == {5, 6, 7}, failed
    assert "unreadable image bytes" in failed[5] and "max_query_chars" in failed[6] and "no-such-task" in failed[7]
    answered = sorted(r.index for job, _ in batched if job is not None for r in job.rows)
    assert answered == [0, 1, 2, 3, 4, 8, 9]
    walls = {job.preprocess_ms for job, _ in batched if job is not None}
    assert len(walls) == 1 and walls.pop() > 0  # every job: the whole preparation's wall time


def test_prepare_many_raises_the_first_bad_group(tiny_engine, tmp_path):
    intake = device_intake(tiny_engine)
    pairs = mixed_pairs(tmp_path)
    groups = group_by_image(pairs, 8)
    gen = tiny_engine.options.generation
    with pytest.raises(InputError) as batched:
        intake.prepare_many(pairs, groups, [None] * len(pairs), gen, "raise", "detect")
    with pytest.raises(InputError) as alone:
        for g in groups:
            intake.prepare(pairs, g, [None] * len(pairs), gen, "raise", "detect")
    assert str(batched.value) == str(alone.value) and "no-such-task" in str(batched.value)  # A2's group first


@pytest.mark.parametrize("workers", [1, 3])
def test_engine_batch_intake_same_answers(tiny_engine, tmp_path, workers):
    """locate_batch with batch_intake on (one batch prepared together) and off (image by image on
    the CPU threads): the same tokens, errors and preprocessed pixels, on the device resize path."""
    pairs = mixed_pairs(tmp_path)
    results = {}
    for on in (True, False):
        engine = tiny_engine.with_options(batch_intake=on, preprocess_workers=workers)
        engine.processor = ImageProcessor(engine.preprocessor_config, engine.options.max_image_pixels,
                                          resize_device="cpu")
        results[on] = engine.locate_batch(pairs, errors="report", max_new_tokens=6)
    for a, b in zip(results[True], results[False]):
        assert (a.tokens, a.error, a.stop_reason, a.image_size, a.image_patches, a.prompt_tokens, a.exemplars) == \
               (b.tokens, b.error, b.stop_reason, b.image_size, b.image_patches, b.prompt_tokens, b.exemplars)
    assert [r.error is not None for r in results[True]] == [i in (5, 7) for i in range(len(pairs))]


def test_batch_intake_option_is_checked():
    from graphrt import EngineOptions, OptionError

    with pytest.raises(OptionError, match="batch_intake"):
        EngineOptions(batch_intake="yes")
    assert EngineOptions().batch_intake is True

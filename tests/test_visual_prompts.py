"""Visual prompts: the worker's crop rules, exemplars as extra images on the eager and static
paths, shared prefixes across rows with other exemplars, and the input errors. Random weights:
only equality between paths is asserted (CPU; tests/test_visual_prompt_gpu.py replays graphs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from capture import GraphRuntime
from graphrt import InputError
from graphrt.batch_io import coco_dataset, coco_results, read_jsonl
from graphrt.request import Batch, Row
from graphrt.visual_prompt import VisualPrompt, crop_box

from conftest import random_image
from test_engine_api import eager_engine, static_engine  # noqa: F401  (module fixtures)
from test_static_path import BUCKETS, GEN, A, B, C, eager_tokens

DVP = "detect_visual_prompt"


def tokens(results):
    return [r.tokens for r in results]


# ---------------------------------------------------------------- crop rules of the worker

def test_crop_box_formats_rounding_and_clamping():
    img = Image.fromarray(np.arange(200 * 100 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8))
    # 0..1000: 125/1000*200 = 25.0; 333/1000*100 = 33.3 -> 33; 2.5 rounds half to even -> 2.
    assert crop_box(img, (125, 333, 500, 1000)).size == (100 - 25, 100 - 33)
    assert crop_box(img, (12.5, 0, 100, 1000)).getbbox() is not None
    left = round(12.5 / 1000 * 200)  # 2.5 -> 2 (Python's round, as the worker)
    assert left == 2 and crop_box(img, (12.5, 0, 100, 1000)).size == (20 - 2, 100)
    assert crop_box(img, (0.125, 0.333, 0.5, 1.0), "normalized_1").size == (75, 67)
    assert crop_box(img, (10, 20, 30, 40), "pixel").size == (20, 20)
    # Sub-pixel boxes still give one pixel (right >= left + 1), and a box at the edge stays inside.
    assert crop_box(img, (999.9, 999.9, 1000, 1000)).size == (1, 1)
    assert crop_box(img, (10.2, 10.2, 10.4, 10.4), "pixel").size == (1, 1)
    assert np.array_equal(np.asarray(crop_box(img, (10, 20, 30, 40), "pixel")), np.asarray(img)[20:40, 10:30])


@pytest.mark.parametrize("box, fmt, match", [
    ((0, 0, 1001, 10), "normalized_1000", "outside 0..1000"),
    ((-1, 0, 10, 10), "normalized_1000", "outside"),
    ((0, 0, 1.5, 1), "normalized_1", "outside 0..1"),
    ((0, 0, 201, 10), "pixel", "outside pixels"),
    ((50, 10, 50, 20), "normalized_1000", "empty"),
    ((50, 30, 60, 20), "normalized_1000", "empty"),
    ((1, 2, 3), "normalized_1000", "four"),
    ("1,2,x,4", "normalized_1000", "four numbers"),
    ((0, 0, 10, 10), "inches", "box_format"),
])
def test_bad_boxes(box, fmt, match):
    with pytest.raises(InputError, match=match):
        crop_box(random_image(200, 100), box, fmt)


def test_box_strings_parse():
    assert VisualPrompt.of(exemplar_box="1, 2,3 4").box == (1.0, 2.0, 3.0, 4.0)
    assert VisualPrompt.of() is None
    assert VisualPrompt.of(exemplar=[A, B]).count == 2


# ---------------------------------------------------------------- engine paths

BOX1, BOX2 = (100, 150, 600, 700), (0, 0, 400, 400)


@pytest.mark.parametrize("which", ["eager_engine", "static_engine"])
def test_box_exemplar_equals_the_cropped_image(request, which):
    engine = request.getfixturevalue(which)
    by_box = engine.locate(A, task=DVP, exemplar_box=BOX1)
    by_image = engine.locate(A, task=DVP, exemplar=crop_box(A, BOX1))
    assert by_box.tokens == by_image.tokens and by_box.exemplars == 1 and by_box.task == DVP
    assert by_box.prompt_tokens > engine.locate(A, "x").prompt_tokens
    if which == "static_engine":
        assert by_box.backend == "graphs"  # no eager fallback for a visual prompt


@pytest.mark.parametrize("which", ["eager_engine", "static_engine"])
def test_shared_query_image_other_exemplars_equal_separate_calls(request, which):
    """Rows of one query image share its prompt prefix (up to image 1's </img>) although their
    exemplars differ: the answers equal one call per row."""
    engine = request.getfixturevalue(which)
    pairs = [(A, None, {"task": DVP, "exemplar_box": BOX1}), (A, None, {"task": DVP, "exemplar": C}),
             (A, "cat", {"task": "point", "exemplar": [B, C]}), (A, "cat"), (B, None, {"task": DVP, "exemplar": A})]
    separate = [tokens(engine.locate_batch([p]))[0] for p in pairs]
    together = engine.locate_batch(pairs)
    assert tokens(together) == separate
    assert [r.exemplars for r in together] == [1, 1, 2, 0, 1]
    if which == "static_engine":
        assert engine.runtime.last_timings_ms["shared_rows"] == 3
        assert {r.backend for r in together} == {"graphs"}


def test_static_path_equals_eager_with_exemplars(tiny_engine):
    """The runtime directly: images 2..N of a row read their own vision rows, in the full prefill
    and in a shared-prefix tail."""
    proc, prompts = tiny_engine.processor, tiny_engine.prompts
    a, b, c = proc(A), proc(B), proc(C)
    crop = proc(crop_box(A, BOX2))
    images = [a, b, c, crop]
    n = [im.num_tokens((2, 2)) for im in images]
    rows = [Row.of_prompt(prompts.build(None, [n[0], n[2]], DVP), 0),
            Row.of_prompt(prompts.build(None, [n[0], n[3]], DVP), 1),
            Row.of_prompt(prompts.build("dog", [n[1], n[3], n[2]], "ground_multi"), 2),
            Row.of_prompt(prompts.build("dog", n[1], "ground_multi"), 3)]
    batch = Batch(images, rows, [(0, 2), (0, 3), (1, 3, 2), (1,)])  # each row's images: query image, exemplars
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    expected = eager_tokens(tiny_engine, batch)
    for share in (True, False):
        assert tokens(runtime.run(batch, GEN, share_prefix=share)) == expected
    assert runtime.last_timings_ms["shared_rows"] == 0
    runtime.run(batch, GEN)
    assert runtime.last_timings_ms["shared_rows"] == 2
    # The small exemplars (C, the crop) ran in their own smallest-bucket vision pass.
    assert runtime.last_timings_ms["vision_passes"] == 2 and runtime.last_timings_ms["bucket_vision"] == (2, 128)
    # Without the exemplar the answers differ (the exemplar's features reach the model).
    assert expected[0] != eager_tokens(tiny_engine, Batch([a], [Row.of_prompt(prompts.build("x", n[0]))], [(0,)]))[0]


def test_scheduler_streams_exemplar_rows(static_engine):
    """More rows than the largest bucket: the continuous-batching scheduler admits jobs with
    exemplars (their images count against the vision bucket); answers equal separate calls."""
    pairs = [(img, None, {"task": DVP, "exemplar_box": box}) for img in (A, B, C) for box in (BOX1, BOX2)]
    pairs += [(A, "cat"), (B, "x", {"exemplar": C}), (C, "dog"), (A, None, {"task": DVP, "exemplar": [B, C]})]
    assert len(pairs) > static_engine.runtime.buckets.max_batch
    streamed = static_engine.locate_batch(pairs)
    assert {r.backend for r in streamed} == {"graphs"}
    assert tokens(streamed) == [static_engine.locate_batch([p])[0].tokens for p in pairs]


# ---------------------------------------------------------------- errors and file formats

def test_bad_visual_prompts_are_reported_per_row(eager_engine, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    pairs = [(A, None, {"task": DVP, "exemplar": bad}), (A, None, {"task": DVP, "exemplar_box": (0, 0, 2000, 10)}),
             (A, None, {"task": DVP}), (A, "look at <image-2>"), (A, "cat", {"exemplar_box": (5, 5, 5, 9)}),
             (A, "cat", {"colour": "red"}), (A, "cat", {"task": "point"})]
    results = eager_engine.locate_batch(pairs, errors="report")
    errors = [r.error for r in results]
    assert "exemplar 1" in errors[0] and "unreadable" in errors[0]
    assert "outside 0..1000" in errors[1] and "needs an exemplar" in errors[2]
    assert "<image-2>" in errors[3] and "empty" in errors[4] and "colour" in errors[5]
    assert errors[6] is None and results[6].task == "point"
    with pytest.raises(InputError, match="exemplar 1: image not found"):
        eager_engine.locate(A, task=DVP, exemplar=tmp_path / "missing.png")


def test_jsonl_fields(tmp_path):
    rows = [{"image": "a.png", "task": "detect_visual_prompt", "exemplar_box": [1, 2, 3, 4]},
            {"image": "a.png", "query": "cat", "exemplar": ["e1.png", "/abs/e2.png"], "box_format": "pixel"},
            {"image": "a.png", "query": "cat", "exemplar": 5},
            {"image": "a.png", "query": "cat", "exemplar_box": [1, 2]},
            {"image": "a.png", "query": "cat", "task": 3}]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    reqs = read_jsonl(path, image_root="/root")
    assert reqs[0].pair() == ("/root/a.png", None, {"task": DVP, "exemplar_box": [1, 2, 3, 4]})
    assert reqs[1].pair()[2] == {"exemplar": ["/root/e1.png", "/abs/e2.png"], "box_format": "pixel"}
    assert "exemplar must be" in reqs[2].error and "exemplar_box" in reqs[3].error and "task" in reqs[4].error


def test_points_in_coco_output():
    rec = {"line": 1, "image": "a.png", "image_size": [200, 100], "query": "cat",
           "detections": [{"label": None, "kind": "point", "box": (20.0, 30.0), "box_norm": (100, 300),
                           "score": None, "point": (20.0, 30.0), "point_norm": (100, 300)}]}
    for ann in (coco_dataset([rec])["annotations"][0], coco_results([rec])[0]):
        assert ann["keypoints"] == [20.0, 30.0, 2] and ann["num_keypoints"] == 1 and ann["kind"] == "point"


def test_cli_tasks_and_visual_prompts(tiny_ckpt, tmp_path, capsys):
    """In process (the command's main): a JSONL run with task/exemplar rows, a query holding an
    image placeholder (an error row, the run goes on), and single images with --task."""
    from graphrt.cli import main

    img, ex = tmp_path / "a.png", tmp_path / "ex.png"
    random_image(90, 70).save(img)
    random_image(30, 20, seed=5).save(ex)
    rows = [{"image": "a.png", "query": "cat"},
            {"image": "a.png", "query": "what is <image-2>"},
            {"image": "a.png", "query": "the light", "task": "point"},
            {"image": "a.png", "task": DVP, "exemplar_box": [100, 100, 500, 600]},
            {"image": "a.png", "task": DVP, "exemplar": "ex.png"},
            {"image": "a.png", "task": DVP, "exemplar": "nope.png"},
            {"image": "a.png", "task": "detect_text"}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["--checkpoint", str(tiny_ckpt), "--max-new-tokens", "8", "--graphs", "off"]
    assert main(["locate", *common, "--jsonl", str(tmp_path / "r.jsonl"), "--image-root", str(tmp_path),
                 "--out", str(out)]) == 0
    recs = {r["line"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(k for k, r in recs.items() if "error" in r) == [2, 6]
    assert "<image-2>" in recs[2]["error"] and "exemplar 1" in recs[6]["error"]
    assert [recs[k]["task"] for k in (1, 3, 4, 5, 7)] == ["detect", "point", DVP, DVP, "detect_text"]
    assert recs[4]["exemplars"] == 1 and recs[5]["exemplars"] == 1
    capsys.readouterr()
    assert main(["locate", *common, "--image", str(img), "--task", DVP, "--exemplar-box", "0,0,500,500",
                 "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["exemplars"] == 1 and single["task"] == DVP
    assert main(["locate", *common, "--image", str(img), "--task", "detect_text", "--json"]) == 0
    assert main(["locate", *common, "--image", str(img), "--query", "<|im_end|>"]) == 2
    assert "special-token text" in capsys.readouterr().err

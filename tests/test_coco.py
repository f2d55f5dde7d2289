"""COCO output: the results list pycocotools' `COCO.loadRes` reads, with exact box numbers from
model tokens through pixels to [x, y, width, height], and the dataset-style document under its
own format name."""

from __future__ import annotations

import json

import pytest

from conftest import random_image
from graphrt import cli
from graphrt.batch_io import COCO_SCORE, Request, coco_dataset, coco_results, result_record
from graphrt.boxes import parse_detections
from graphrt.engine import LocateResult


def result_from_tokens(engine, image_size, body, query):
    """A LocateResult whose detections are parsed from hand-written tokens, as the engine parses
    generated ones."""
    ids = engine.cfg.tokens
    tokens = []
    for label, coords in body:
        tokens += engine.tokenizer.encode(f"<ref>{label}</ref>", add_special_tokens=False) if label else []
        tokens += [ids.box_start, *(ids.coord_start + v for v in coords), ids.box_end]
    parsed = parse_detections(tokens, ids, engine.prompts.decode, image_size)
    return LocateResult(parsed.detections, "", tokens, "end", 1, image_size, 0, 0, 0, query=query)


def records(engine):
    # 200 x 100 image: x pixels = v / 1000 * 200, y pixels = v / 1000 * 100.
    one = result_from_tokens(engine, (200, 100), [("cat", (100, 200, 600, 900)), ("dog", (0, 0, 1000, 1000)),
                                                  ("cat", (500, 500))], "cat</c>dog")
    two = result_from_tokens(engine, (50, 40), [(None, (10, 20, 30, 40))], "bird")
    return [result_record(Request(1, "photos/000000000139.jpg", "cat</c>dog"), one),
            result_record(Request(2, "photos/285.png", "x"), None) | {"error": "unreadable image"},
            result_record(Request(3, "photos/000000000285.jpg", "bird"), two)]


WANT = [
    {"image_id": 139, "category_id": 1, "bbox": [20.0, 20.0, 100.0, 70.0], "score": COCO_SCORE},
    {"image_id": 139, "category_id": 2, "bbox": [0.0, 0.0, 200.0, 100.0], "score": COCO_SCORE},
    {"image_id": 139, "category_id": 1, "bbox": [100.0, 50.0, 0.0, 0.0], "score": COCO_SCORE, "kind": "point",
     "keypoints": [100.0, 50.0, 2], "num_keypoints": 1},
    {"image_id": 285, "category_id": 3, "bbox": [0.5, 0.8, 1.0, 0.8], "score": COCO_SCORE},
]


def test_coco_results_exact_numbers(tiny_engine):
    assert coco_results(records(tiny_engine)) == WANT
    doc = coco_dataset(records(tiny_engine))
    assert doc["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    assert [(im["id"], im["width"], im["height"]) for im in doc["images"]] == [(139, 200, 100), (285, 50, 40)]
    assert [a["bbox"] for a in doc["annotations"]] == [w["bbox"] for w in WANT]
    assert doc["errors"] == [{"line": 2, "image": "photos/285.png", "error": "unreadable image"}]


def test_image_ids_number_in_order_unless_every_stem_is_an_integer(tiny_engine):
    recs = records(tiny_engine)
    recs[0]["image"] = "photos/street.jpg"
    assert [r["image_id"] for r in coco_results(recs)] == [1, 1, 1, 2]


def test_pycocotools_load_res_reads_the_results(tiny_engine):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = coco_dataset(records(tiny_engine))
    gt.createIndex()
    res = gt.loadRes(coco_results(records(tiny_engine)))
    anns = [res.anns[i] for i in sorted(res.anns)]
    assert [a["bbox"] for a in anns] == [w["bbox"] for w in WANT]
    assert [a["area"] for a in anns] == [7000.0, 20000.0, 0.0, 0.8]


def test_folder_to_coco_through_the_cli(tiny_ckpt, tiny_engine, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        random_image(40 + 10 * i, 50, seed=i).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image, not listed")
    base = ["locate", "--checkpoint", str(tiny_ckpt), "--image", str(folder), "--query", "car",
            "--max-new-tokens", "8", "--device", "cpu"]
    assert cli.main([*base, "--format", "coco", "--out", str(tmp_path / "coco.json")]) == 0
    results = json.loads((tmp_path / "coco.json").read_text())
    assert cli.main([*base, "--format", "coco-dataset", "--out", str(tmp_path / "doc.json")]) == 0
    doc = json.loads((tmp_path / "doc.json").read_text())
    assert [im["file_name"].rsplit("/", 1)[-1] for im in doc["images"]] == ["0.png", "1.png", "2.png"]
    assert doc["errors"] == [] and set(doc) == {"images", "annotations", "categories", "errors"}
    # The same numbers as the engine's own detections, converted by hand.
    want = []
    for i in range(3):
        for d in tiny_engine.locate(folder / f"{i}.png", "car", max_new_tokens=8).detections:
            x1, y1, *rest = d.box
            wh = [round(rest[0] - x1, 2), round(rest[1] - y1, 2)] if rest else [0.0, 0.0]
            want.append((i, [round(x1, 2), round(y1, 2), *wh]))
    assert [(r["image_id"], r["bbox"]) for r in results] == want
    assert isinstance(results, list) and all(set(r) >= {"image_id", "category_id", "bbox", "score"} for r in results)
    capsys.readouterr()

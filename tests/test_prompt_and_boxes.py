"""Prompt layout and the parsing of generated ids into detections."""

from __future__ import annotations

import pytest

from graphrt import InputError
from graphrt.boxes import parse_detections
from graphrt.prompt import normalize_query


def test_prompt_layout(tiny_engine):
    """The official worker's text (tests/test_tasks_and_prompts.py pins every task)."""
    prompts = tiny_engine.prompts
    p = prompts.build("person</c>car", 6)
    text = prompts.decode(p.ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n<|im_end|>\n<|im_start|>user\n"
                           "<image 1><img>")
    assert text.endswith("</img>Locate all the instances that matches the following description: person</c>car."
                         "<|im_end|>\n<|im_start|>assistant\n")
    image = tiny_engine.cfg.tokens.image
    assert p.ids[p.image_start : p.image_start + 6] == [image] * 6 and p.ids.count(image) == 6
    assert p.ids[p.prefix_len - 1] == prompts.img_end
    # Encoding the parts equals encoding the whole expanded text.
    whole = prompts.text("person</c>car").replace("<image-1>", "<image 1><img>" + "<IMG_CONTEXT>" * 6 + "</img>")
    assert prompts.tokenizer.encode(whole, add_special_tokens=False) == p.ids


def test_queries():
    assert normalize_query(["person", " car "]) == "person</c>car"
    for bad in ("", "   ", [], ["a", ""]):
        with pytest.raises(InputError):
            normalize_query(bad)


def test_parse_boxes_points_and_labels(tiny_engine):
    ids, prompts = tiny_engine.cfg.tokens, tiny_engine.prompts
    c = ids.coord_start
    label = prompts.tokenizer.encode("cat", add_special_tokens=False)
    seq = ([ids.ref_start] + label + [ids.ref_end, ids.box_start, c + 100, c + 200, c + 500, c + 1000, ids.box_end,
           ids.box_start, c + 10, c + 20, ids.box_end, ids.box_start, ids.none, ids.box_end,
           ids.box_start, c + 1, 77, ids.box_end, ids.im_end, ids.box_start, c, c, c, c, ids.box_end])
    parsed = parse_detections(seq, ids, prompts.decode, (200, 100))
    assert [(d.label, d.kind, d.box_norm) for d in parsed.detections] == [
        ("cat", "box", (100, 200, 500, 1000)), ("cat", "point", (10, 20))]
    assert parsed.detections[0].box == (20.0, 20.0, 100.0, 100.0) and parsed.detections[0].point is None
    point = parsed.detections[1]
    assert point.point == (2.0, 2.0) and point.point_norm == (10, 20) and point.to_dict()["point"] == (2.0, 2.0)
    assert parsed.detections[0].describe() == "cat: box (20.0, 20.0, 100.0, 100.0) px  norm [100, 200, 500, 1000]"
    assert parsed.empty_frames == 1 and parsed.malformed == 1

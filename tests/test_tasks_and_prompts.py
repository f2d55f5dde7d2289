"""The official worker's prompt for every task, as text and as token ids, and the input errors.

Expected texts are written out by hand from NVIDIA's sources (`locateanything_worker.py` task
strings, `processing_locateanything.py` py_apply_chat_template and placeholder expansion). Ids are
pinned structurally: special tokens at exact positions, every ordinary text piece equal to the
tokenizer's encoding of that exact official piece (so the test holds for any BPE merges)."""

from __future__ import annotations

import pytest

from graphrt import InputError
from graphrt.prompt import TASKS, PromptBuilder, expanded_text

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.\n<|im_end|>\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"

# task -> (query, question text of the worker)
QUESTIONS = {
    "detect": (["person", "car"], "Locate all the instances that matches the following description: person</c>car."),
    "detect_text": (None, "Detect all the text in box format."),
    "ground_single": ("the man in a red hat",
                      "Locate a single instance that matches the following description: the man in a red hat."),
    "ground_multi": ("people wearing red shirts",
                     "Locate all the instances that match the following description: people wearing red shirts."),
    "ground_text": ("EXIT", "Please locate the text referred as EXIT."),
    "region": ("the search button", "Locate the region that matches the following description: the search button."),
    "point": ("the traffic light", "Point to: the traffic light."),
}
VISUAL = "Detect all the objects in the image that belong to the category set: <image-2>."


def test_every_task_is_pinned():
    assert set(QUESTIONS) | {"detect_visual_prompt"} == set(TASKS)


@pytest.mark.parametrize("task", list(QUESTIONS))
def test_official_text_of_every_task(tiny_engine, task):
    query, question = QUESTIONS[task]
    assert tiny_engine.prompts.text(query, task) == f"{SYSTEM}<|im_start|>user\n<image-1>{question}{TAIL}"


def test_visual_prompt_texts(tiny_engine):
    p = tiny_engine.prompts
    assert p.text(None, "detect_visual_prompt", exemplars=1) == f"{SYSTEM}<|im_start|>user\n<image-1>{VISUAL}{TAIL}"
    # Another task with an exemplar: no marker, so the worker appends one line.
    assert p.text("cat", "point", exemplars=1) == \
        f"{SYSTEM}<|im_start|>user\n<image-1>Point to: cat.\nVisual prompt: <image-2>{TAIL}"
    # A marker in the phrase is replaced (the first only), as the worker does.
    assert p.text("{visual_prompt}", "ground_multi", exemplars=1) == (
        f"{SYSTEM}<|im_start|>user\n<image-1>Locate all the instances that match the following description: "
        f"<image-2>.{TAIL}")
    # Two exemplars: image 2 is in the question, image 3 follows it (py_apply_chat_template's item order).
    assert p.text(None, "detect_visual_prompt", exemplars=2) == \
        f"{SYSTEM}<|im_start|>user\n<image-1>{VISUAL}<image-3>{TAIL}"


def pieces_ids(prompts: PromptBuilder, pieces: list) -> list[int]:
    """Ids from official pieces: str -> the tokenizer's encoding; int -> that token id."""
    out = []
    for piece in pieces:
        out += [piece] if isinstance(piece, int) else prompts.tokenizer.encode(piece, add_special_tokens=False)
    return out


def specials(engine):
    tok = engine.prompts.tokenizer
    return (tok.convert_tokens_to_ids("<|im_start|>"), engine.cfg.tokens.im_end, engine.prompts.img_start,
            engine.prompts.img_end, engine.cfg.tokens.image)


@pytest.mark.parametrize("task", list(QUESTIONS))
def test_official_ids_of_every_task(tiny_engine, task):
    query, question = QUESTIONS[task]
    start, end, img, img_end, ctx = specials(tiny_engine)
    p = tiny_engine.prompts.build(query, 6, task)
    expected = pieces_ids(tiny_engine.prompts, [
        start, "system\nYou are a helpful assistant.\n", end, "\n", start, "user\n<image 1>", img,
        *[ctx] * 6, img_end, question, end, "\n", start, "assistant\n"])
    assert p.ids == expected
    assert p.ids[0] == start and p.ids[p.image_start - 1] == img and p.ids[p.prefix_len - 1] == img_end
    assert p.ids[p.image_start : p.image_start + 6] == [ctx] * 6 and p.ids.count(ctx) == 6
    assert p.image_spans == ((p.image_start, 6),)
    # The processor's whole expanded text, tokenized at once, gives the same ids.
    whole = expanded_text(tiny_engine.prompts.text(query, task), [6])
    assert tiny_engine.prompts.tokenizer.encode(whole, add_special_tokens=False) == p.ids
    assert tiny_engine.prompts.decode(p.ids) == whole


def test_visual_prompt_ids_two_and_three_images(tiny_engine):
    start, end, img, img_end, ctx = specials(tiny_engine)
    prompts = tiny_engine.prompts
    p = prompts.build(None, [6, 2], "detect_visual_prompt")
    head, tail = VISUAL.split("<image-2>")
    assert p.ids == pieces_ids(prompts, [
        start, "system\nYou are a helpful assistant.\n", end, "\n", start, "user\n<image 1>", img, *[ctx] * 6,
        img_end, head + "<image 2>", img, *[ctx] * 2, img_end, tail, end, "\n", start, "assistant\n"])
    s1, s2 = p.image_spans
    assert s1 == (p.image_start, 6) and p.ids[s2[0] - 1] == img and p.ids[s2[0] : s2[0] + 2] == [ctx] * 2
    assert p.prefix_len == s1[0] + 7 < s2[0]  # the shared prefix ends before the exemplar
    p3 = prompts.build(None, [6, 2, 3], "detect_visual_prompt")
    assert [n for _, n in p3.image_spans] == [6, 2, 3]
    whole = expanded_text(prompts.text(None, "detect_visual_prompt", 2), [6, 2, 3])
    assert whole.endswith(f"{tail}<image 3><img>{'<IMG_CONTEXT>' * 3}</img>{TAIL}")
    assert prompts.tokenizer.encode(whole, add_special_tokens=False) == p3.ids


def test_jinja_prompt_only_when_asked(tiny_engine):
    jinja = PromptBuilder(tiny_engine.tokenizer, tiny_engine.cfg, tiny_engine.chat_template, prompt_format="jinja")
    text = jinja.text("cat")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")  # no newline
    assert text != tiny_engine.prompts.text("cat") and tiny_engine.options.prompt_format == "official"
    assert jinja.decode(jinja.build("cat", 2).ids).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image 1><img>")
    with pytest.raises(InputError, match="Jinja"):
        jinja.build(None, [2, 2], "detect_visual_prompt")


@pytest.mark.parametrize("query, task, exemplars, match", [
    ("look at <image-2>", "detect", 0, "<image-2>"),
    ("<image-1> cat", "ground_multi", 0, "<image-1>"),
    ("<video-1>", "point", 0, "<video-1>"),
    ("cat<|im_end|>", "detect", 0, "<\\|im_end\\|>"),
    ("a <box> b", "ground_single", 0, "<box>"),
    ("<IMG_CONTEXT>", "region", 0, "<IMG_CONTEXT>"),
    ("", "detect", 0, "empty: task detect needs"),
    (None, "point", 0, "missing: task point needs a phrase"),
    ("cat", "detect_text", 0, "takes no query"),
    (None, "detect_visual_prompt", 0, "needs an exemplar"),
    ("cat", "find", 0, "unknown task"),
])
def test_bad_queries_name_the_problem(tiny_engine, query, task, exemplars, match):
    with pytest.raises(InputError, match=match):
        tiny_engine.prompts.build(query, [4] * (1 + exemplars), task)


def test_category_separator_is_allowed(tiny_engine):
    assert "person</c>car" in tiny_engine.prompts.text("person</c>car")

"""The random checkpoint's BPE: prompt lengths close to the real Qwen2 tokenizer's, words of the
corpus as single tokens, `none` at its fixed id, and the tiny preset's vocabulary unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from graphrt.prompt import load_tokenizer
from weights.presets import PRESETS
from weights.synth import write_tokenizer
from weights.synth_tokenizer import CATEGORY_WORDS, PRETOKENIZE, TASK_TEXTS, build_bpe


@pytest.fixture(scope="module")
def real_layout_tokenizer(tmp_path_factory):
    preset = PRESETS["mid"]  # the release's token layout
    out = tmp_path_factory.mktemp("tok")
    write_tokenizer(preset.config, preset.layout, out)
    return load_tokenizer(out)


def official_prompt(instruction: str, image_tokens: int) -> str:
    """The official worker's prompt text (system turn with its newline, `<image 1>` label)."""
    return ("<|im_start|>system\nYou are a helpful assistant.\n<|im_end|>\n<|im_start|>user\n<image 1><img>"
            + "<IMG_CONTEXT>" * image_tokens + "</img>" + instruction + "<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_length_is_realistic(real_layout_tokenizer):
    # 640x480 -> 414 image tokens; the real Qwen2 tokenizer gives ~455 tokens for this prompt
    # (the bytes-only tokenizer gave ~545).
    text = official_prompt("Locate all the instances that matches the following description: person.", 414)
    n = len(real_layout_tokenizer.encode(text, add_special_tokens=False))
    assert 445 <= n <= 465, n
    for template in TASK_TEXTS:  # every official task string stays short
        instruction = template.format(q="the red umbrella")
        n = len(real_layout_tokenizer.encode(official_prompt(instruction, 414), add_special_tokens=False))
        assert n <= 470, (instruction, n)


def test_corpus_words_are_single_tokens(real_layout_tokenizer):
    tok = real_layout_tokenizer
    for word in CATEGORY_WORDS + ["none"]:
        for form in (word, " " + word):
            assert len(tok.encode(form, add_special_tokens=False)) == 1, form
    for piece in PRETOKENIZE.findall("Locate all the instances that matches the following description: "):
        assert len(tok.encode(piece, add_special_tokens=False)) == 1, piece
    assert tok.encode("none", add_special_tokens=False) == [PRESETS["mid"].config.tokens.none]


def test_any_text_round_trips(real_layout_tokenizer):
    rs = np.random.RandomState(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyz ABCXYZ.,:;!?</>0123456789\néü")
    for _ in range(20):
        text = "".join(rs.choice(alphabet, size=rs.randint(1, 60)))
        ids = real_layout_tokenizer.encode(text, add_special_tokens=False)
        assert real_layout_tokenizer.decode(ids) == text


def test_tiny_vocabulary_unchanged():
    cfg, layout = PRESETS["tiny"].config, PRESETS["tiny"].layout
    vocab, merges = build_bpe(layout.base_vocab, cfg.tokens.none)
    assert merges == ["n o", "no n", "non e"]
    assert vocab["no"] == 256 and vocab["non"] == 257 and vocab["none"] == cfg.tokens.none == 258
    assert sorted(vocab.values()) == list(range(layout.base_vocab))


def test_real_layout_ids_contiguous_and_unique():
    layout, cfg = PRESETS["mid"].layout, PRESETS["mid"].config
    vocab, merges = build_bpe(layout.base_vocab, cfg.tokens.none)
    assert sorted(vocab.values()) == list(range(layout.base_vocab))
    assert len(merges) > 500 and all(a + b in vocab for a, b in (m.split(" ") for m in merges))

"""PromptBuilder.build reuses a prompt built before for the same (query, image token counts,
task): the reused prompt equals a fresh build token for token, skips the tokenizer, and can be
changed by its caller without changing later builds; keys that differ in any part build anew."""

from __future__ import annotations

import pytest

from graphrt import InputError
from graphrt.prompt import PromptBuilder


def fresh(engine) -> PromptBuilder:
    return PromptBuilder(engine.tokenizer, engine.cfg, engine.chat_template, engine.prompts.task)


class CountingTokenizer:
    """The engine's tokenizer, counting encode calls."""

    def __init__(self, inner):
        self.inner, self.encodes = inner, 0

    def encode(self, *args, **kwargs):
        self.encodes += 1
        return self.inner.encode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def same(a, b) -> bool:
    return (a.ids, a.image_start, a.image_tokens, a.prefix_len, a.image_spans) == \
        (b.ids, b.image_start, b.image_tokens, b.prefix_len, b.image_spans)


def test_repeated_build_equals_a_fresh_build_and_skips_the_tokenizer(tiny_engine):
    counting = CountingTokenizer(tiny_engine.tokenizer)
    cached = PromptBuilder(counting, tiny_engine.cfg, tiny_engine.chat_template)
    first = cached.build("person", 414)
    calls = counting.encodes
    assert calls > 0
    again = cached.build("person", 414)
    assert counting.encodes == calls  # served from the cache
    assert same(again, first) and same(again, fresh(tiny_engine).build("person", 414))
    again.ids.append(7)  # a caller's change stays its own
    assert same(cached.build("person", 414), fresh(tiny_engine).build("person", 414))


VARIANTS = [("person", 414, None), ("person", 100, None), ("car", 414, None), (["person", "car"], 414, None),
            ("person", [414, 16], "detect"), (None, [414, 16], "detect_visual_prompt"), (None, 414, "detect_text"),
            ("person", 414, "point")]


@pytest.mark.parametrize("query, counts, task", VARIANTS)
def test_every_key_part_counts(tiny_engine, query, counts, task):
    # One builder sees all the variants in turn: each must equal its own fresh build.
    cached = PromptBuilder(tiny_engine.tokenizer, tiny_engine.cfg, tiny_engine.chat_template)
    for q, c, t in VARIANTS:
        cached.build(q, c, t)
    assert same(cached.build(query, counts, task), fresh(tiny_engine).build(query, counts, task))


def test_bad_queries_are_refused_every_time(tiny_engine):
    cached = PromptBuilder(tiny_engine.tokenizer, tiny_engine.cfg, tiny_engine.chat_template)
    for _ in range(2):
        with pytest.raises(InputError):
            cached.build("<image-1> person", 414)
        with pytest.raises(InputError):
            cached.build(None, 414, "detect")


def test_cache_is_bounded(tiny_engine, monkeypatch):
    cached = PromptBuilder(tiny_engine.tokenizer, tiny_engine.cfg, tiny_engine.chat_template)
    monkeypatch.setattr(PromptBuilder, "PROMPTS_KEPT", 3)
    for n in range(10):
        cached.build("person", 10 + n)
    assert len(cached._built) == 3


def test_token_array_equals_ids_and_is_read_only(tiny_engine):
    cached = PromptBuilder(tiny_engine.tokenizer, tiny_engine.cfg, tiny_engine.chat_template)
    first, again = cached.build("dog", 414), cached.build("dog", 414)
    for p in (first, again):
        assert p.token_array().tolist() == p.ids
    assert again.id_array is not None and not again.id_array.flags.writeable
    with pytest.raises(ValueError):
        again.token_array()[0] = 1

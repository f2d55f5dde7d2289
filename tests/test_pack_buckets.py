"""The ladder sizes that fit a 640x480 image and its prompt without padding (capture/buckets.py).

A 640x480 image is 1,656 patches: it takes a slot of exactly that size. Its prompt with the merged
first round is a segment of its prompt tokens + 6 window slots; the default ladder holds 464 for
the 451-453-token prompts of short queries and keeps 480 for longer ones. The static path with a
slot and a segment length that leave no padding at all equals the eager path token for token
(random tiny weights: the tokens themselves mean nothing)."""

from __future__ import annotations

from capture import Buckets, GraphRuntime
from graphrt import GenerationConfig

from conftest import random_image
from test_static_path import eager_tokens, prepare

GEN = GenerationConfig(max_new_tokens=12)
IMAGE_TOKENS_640x480 = 414  # 36 x 46 patches merged 2x2
WINDOW = 6  # the MTP block: the merged first round's window slots in each prefill segment


def segment(prompt_tokens: int) -> int:
    """Slots of a merged-first-round prefill segment (capture/inputs.py: the whole prompt, then the
    window)."""
    return prompt_tokens + WINDOW


def test_default_ladder_fits_640x480_tightly(tiny_engine):
    b = Buckets()
    patches = tiny_engine.processor(random_image(640, 480)).num_patches
    assert patches == 1656 and Buckets.fit(b.patch_budgets, patches) == 1656
    assert Buckets.fit(b.patch_budgets, 1657) == 4144  # what the exact slot costs: 1657-1680 patches
    # 3B BPE prompts of the 640x480 benchmark (451-453 tokens, queries of 1-3 tokens) -> 464
    for prompt in (451, 453, 458):
        assert Buckets.fit(b.prefill_lengths, segment(prompt)) == 464
    for prompt in (459, 474):  # longer queries keep the 480 slot
        assert Buckets.fit(b.prefill_lengths, segment(prompt)) == 480
    assert b.fit_vision(32, 1656) == (32, 1656) and b.fit_prefill(32, 464) == (32, 464)


def test_unpadded_slot_and_segment_equal_eager(tiny_engine):
    """640x480 images in slots of exactly their patches, prompts in segments of exactly their
    length (merged first round), batched and single: the same tokens as the eager path."""
    pairs = [(random_image(640, 480, seed=5), "cat"), (random_image(640, 480, seed=6), "the red umbrella")]
    batch = prepare(tiny_engine, pairs)
    patches = {im.num_patches for im in batch.images}
    assert patches == {1656}
    longest = max(segment(len(r.prompt.ids)) for r in batch.rows)
    exact = Buckets(batch_sizes=(1, 2), patch_budgets=(1656,), prefill_lengths=(longest,), max_new_tokens=24)
    runtime = GraphRuntime(tiny_engine.model, exact, GEN, attention="emulated", use_graphs=False)
    want = eager_tokens(tiny_engine, batch, GEN)
    assert [r.tokens for r in runtime.run(batch, GEN)] == want
    for i in range(len(pairs)):
        single = prepare(tiny_engine, [pairs[i]])
        assert [r.tokens for r in runtime.run(single, GEN)] == [want[i]]

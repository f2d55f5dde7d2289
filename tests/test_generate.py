"""Eager MTP generation on the tiny random checkpoint (random weights: the tokens mean nothing;
the tests compare the loop with an independent cache-free run of the stock algorithm)."""

from __future__ import annotations

import pytest
import torch

from graphrt import GenerationConfig, InputError
from graphrt.generate import RowRequest, generate
from graphrt.attention.sdpa import lm_attention
from references import hf_qwen2, stock_pattern, stock_proposal
from test_attention_rule import stock_window_mask

from conftest import random_image


def request(engine, image, query):
    im = engine.processor(image)
    prompt = engine.prompts.build(query, im.num_tokens((2, 2)))
    return RowRequest(prompt.ids, engine.encode_images([im])[0], prompt.image_start)


@torch.no_grad()
def stock_loop_without_cache(engine, ckpt, req: RowRequest, max_new_tokens: int) -> list[int]:
    """The stock 'fast' loop, recomputing the whole sequence every round under the stock mask."""
    ref = hf_qwen2(engine, ckpt)
    ids, block = engine.cfg.tokens, engine.cfg.text.block_size
    generated: list[int] = []
    while len(generated) < max_new_tokens:
        seq = req.prompt + generated
        n = len(seq)
        seq = seq + [seq[-1]] + [ids.text_mask] * (block - 1)
        positions = list(range(n)) + list(range(n - 1, n - 1 + block))
        emb = ref.model.embed_tokens(torch.tensor(seq))
        emb[req.image_start : req.image_start + req.image_embeds.shape[0]] = req.image_embeds
        logits = ref(inputs_embeds=emb[None], attention_mask=stock_window_mask(len(seq), block)[None, None],
                     position_ids=torch.tensor([positions])).logits[0, -block:]
        probs = torch.softmax(logits, -1)
        proposal = stock_proposal(probs, probs.argmax(-1).tolist(), ids, "fast")
        kind, kept = stock_pattern(proposal, ids, "fast")
        generated += kept
        if kind == "im_end":
            break
    return generated


def test_eager_loop_equals_cache_free_stock_loop(tiny_engine, tiny_ckpt):
    req = request(tiny_engine, random_image(130, 96), "person</c>car")
    gen = GenerationConfig(max_new_tokens=30)
    ours = generate(tiny_engine.model, lm_attention, [req], gen)[0]
    want = stock_loop_without_cache(tiny_engine, tiny_ckpt, req, 30)
    assert ours.tokens == want
    assert ours.steps >= 5  # several steps, so the cache bookkeeping is exercised


def test_deterministic_and_respects_max_new_tokens(tiny_engine):
    img = random_image(100, 80)
    a = tiny_engine.locate(img, "dog", max_new_tokens=9)
    b = tiny_engine.locate(img, "dog", max_new_tokens=9)
    assert a.tokens == b.tokens
    if a.stop_reason == "max_new_tokens":
        assert 9 <= len(a.tokens) < 9 + 6  # a step may overshoot by at most 5, as the stock loop does
    else:
        assert a.tokens[-1] == tiny_engine.cfg.tokens.im_end


def test_batched_equals_one_by_one(tiny_engine):
    pairs = [(random_image(130, 96, seed=1), "person</c>car"), (random_image(60, 200, seed=2), "a red cup"),
             (random_image(130, 96, seed=1), "car")]
    batched = tiny_engine.locate_batch(pairs, max_new_tokens=20)
    for (img, q), got in zip(pairs, batched):
        assert tiny_engine.locate(img, q, max_new_tokens=20).tokens == got.tokens


@pytest.mark.parametrize("mode", ["hybrid", "slow"])
def test_other_modes_run(tiny_engine, mode):
    res = tiny_engine.locate(random_image(64, 64), "cat", mode=mode, max_new_tokens=8)
    assert res.stop_reason in ("end", "max_new_tokens") and res.tokens
    if mode == "slow":
        assert res.steps == len(res.tokens)  # one token per AR step


def test_sampling_is_seeded(tiny_engine):
    from graphrt import SamplingConfig

    img = random_image(64, 64)
    kw = dict(max_new_tokens=12, sampling=SamplingConfig(temperature=1.0, top_p=0.9), seed=5)
    assert tiny_engine.locate(img, "cat", **kw).tokens == tiny_engine.locate(img, "cat", **kw).tokens


def test_prompt_longer_than_context_is_refused(tiny_engine):
    with pytest.raises(InputError, match="does not fit the model context"):
        tiny_engine.locate(random_image(64, 64), "x " * 5000)


def test_bad_inputs_leave_the_engine_usable(tiny_engine, tmp_path):
    with pytest.raises(InputError):
        tiny_engine.locate(tmp_path / "missing.png", "cat")
    with pytest.raises(InputError):
        tiny_engine.locate(random_image(64, 64), "  ")
    assert tiny_engine.locate(random_image(64, 64), "cat", max_new_tokens=4).tokens


def test_random_test_model_depends_on_its_context(tiny_engine):
    """Guards the test checkpoints themselves: if the answer ignored image and query, the
    equivalence tests could not see a broken KV cache."""
    a, b = random_image(130, 96, seed=1), random_image(130, 96, seed=2)
    cat_a = tiny_engine.locate(a, "cat", max_new_tokens=12).tokens
    assert cat_a != tiny_engine.locate(a, "a dog", max_new_tokens=12).tokens
    assert cat_a != tiny_engine.locate(b, "cat", max_new_tokens=12).tokens

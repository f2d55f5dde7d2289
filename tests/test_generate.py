"""Eager MTP generation on the tiny random checkpoint (random weights: the tokens mean nothing;
the tests compare the loop with an independent cache-free run of the stock algorithm, with
engineered logits on top where a branch needs them, and sampled tokens with the reference
distribution)."""

from __future__ import annotations

import dataclasses
from unittest.mock import patch

import pytest
import torch

import graphrt.generate as G
from graphrt import GenerationConfig, InputError, SamplingConfig
from graphrt.attention.sdpa import lm_attention
from graphrt.generate import EagerBatch, generate
from graphrt.mtp import StepKind
from graphrt.request import Row
from references import hf_qwen2, stock_pattern, stock_proposal
from test_attention_rule import stock_window_mask

from conftest import random_image


def request(engine, image, query) -> EagerBatch:
    """One row about one image, ready for the eager decoder."""
    im = engine.processor(image)
    prompt = engine.prompts.build(query, im.num_tokens((2, 2)))
    return EagerBatch([Row.of_prompt(prompt)], [(engine.encode_images([im])[0],)])


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)


@torch.no_grad()
def stock_loop_without_cache(engine, ckpt, req: EagerBatch, max_new_tokens: int, mode: str = "fast",
                             penalty: float = 1.0, bias=None) -> list[int]:
    """The stock loop, recomputing the whole sequence every round under the stock mask: MTP rounds
    (window of block tokens) and, in 'hybrid' after a broken box, AR rounds (one next token) until
    </box> returns it to MTP or a token that is no coordinate/none/</box> ends it. The repetition
    penalty covers the unique ids of prompt + generated; `bias(width)`, when given, is added to
    the logits first (an engineered model on top of the random one)."""
    ref = hf_qwen2(engine, ckpt)
    ids, block = engine.cfg.tokens, engine.cfg.text.block_size
    prompt, (image,) = req.rows[0].prompt, req.images[0]
    generated: list[int] = []
    ar = False
    while len(generated) < max_new_tokens:
        seq = prompt.ids + generated
        n = len(seq)
        if ar:
            positions, mask = list(range(n)), causal_mask(n)
        else:
            seq = seq + [seq[-1]] + [ids.text_mask] * (block - 1)
            positions, mask = list(range(n)) + list(range(n - 1, n - 1 + block)), stock_window_mask(len(seq), block)
        emb = ref.model.embed_tokens(torch.tensor(seq))
        emb[prompt.image_start : prompt.image_start + image.shape[0]] = image
        width = 1 if ar else block
        logits = ref(inputs_embeds=emb[None], attention_mask=mask[None, None],
                     position_ids=torch.tensor([positions])).logits[0, -width:]
        if bias is not None:
            logits = logits + bias(width)
        if penalty != 1.0:
            for t in set(prompt.ids + generated):
                logits[:, t] = torch.where(logits[:, t] > 0, logits[:, t] / penalty, logits[:, t] * penalty)
        probs = torch.softmax(logits, -1)
        if ar:
            token = int(probs[0].argmax())
            generated.append(token)
            if token == ids.box_end:
                ar = False
            elif not (ids.is_coord(token) or token == ids.none):
                break
            continue
        proposal = stock_proposal(probs, probs.argmax(-1).tolist(), ids, mode)
        kind, kept = stock_pattern(proposal, ids, mode)
        generated += kept
        if kind == "im_end":
            break
        ar = mode == "hybrid" and kind == "error_box"
    return generated


def test_eager_loop_equals_cache_free_stock_loop(tiny_engine, tiny_ckpt):
    req = request(tiny_engine, random_image(130, 96), "person</c>car")
    gen = GenerationConfig(max_new_tokens=30)
    ours = generate(tiny_engine.model, lm_attention, req, gen)[0]
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
    """Same seed: same tokens; another seed: other tokens; and neither is the greedy answer (random
    weights give near-flat distributions at temperature 1, so equal tokens would mean no draw)."""
    img = random_image(64, 64)
    kw = dict(max_new_tokens=12, sampling=SamplingConfig(temperature=1.0, top_p=0.9))
    a = tiny_engine.locate(img, "cat", seed=5, **kw).tokens
    assert a == tiny_engine.locate(img, "cat", seed=5, **kw).tokens
    assert a != tiny_engine.locate(img, "cat", seed=6, **kw).tokens
    assert a != tiny_engine.locate(img, "cat", max_new_tokens=12).tokens


def hybrid_bias(engine):
    """Engineered logits on top of the random model so 'hybrid' takes its AR branch: the window's
    slot 0 says <box>, slots 1-4 coordinates, slot 5 nothing (no legal box: the raw proposal is a
    broken box); an AR step chooses between a coordinate (stay) and </box> (back to MTP) by the
    model's own logits."""
    ids, v = engine.cfg.tokens, engine.cfg.text.vocab_size
    coords = slice(ids.coord_start, ids.coord_end + 1)

    def bias(width: int) -> torch.Tensor:
        b = torch.zeros(width, v)
        if width == 1:
            b[0, coords], b[0, ids.box_end] = 8.0, 16.0
        else:
            b[0, ids.box_start], b[1:5, coords] = 30.0, 8.0
        return b

    return bias


def _all_hybrid_transitions(kinds) -> bool:
    """Broken box -> AR, AR coordinate -> AR, and AR </box> -> MTP all occur."""
    pairs = list(zip(kinds, kinds[1:]))
    return (any(a == StepKind.BROKEN_BOX and b == -1 for a, b in pairs) and any(a == -1 and b == -1 for a, b in pairs)
            and any(a == -1 and b != -1 for a, b in pairs))


def test_hybrid_enters_and_leaves_its_ar_phase_as_the_stock_loop(tiny_engine, tiny_ckpt):
    bias, real = hybrid_bias(tiny_engine), G.probabilities
    spy = lambda logits, *a, **k: real(logits + bias(logits.shape[1]), *a, **k)  # noqa: E731
    # Whether an AR step stays on a coordinate is the random model's own choice, so the case is the
    # first (image, query) whose answer takes every transition; each one tried must equal the stock loop.
    for seed, query in [(0, "cat"), (1, "cat"), (2, "dog"), (3, "person"), (4, "a red cup"), (5, "car")]:
        req = request(tiny_engine, random_image(100, 80, seed=seed), query)
        with patch.object(G, "probabilities", spy):
            ours = generate(tiny_engine.model, lm_attention, req,
                            GenerationConfig(max_new_tokens=40, mode="hybrid"))[0]
        assert ours.tokens == stock_loop_without_cache(tiny_engine, tiny_ckpt, req, 40, mode="hybrid", bias=bias)
        if _all_hybrid_transitions(ours.kinds):
            break
    else:
        pytest.fail("no case exercised every hybrid transition")
    assert tiny_engine.cfg.tokens.box_end in ours.tokens
    with patch.object(G, "probabilities", spy):  # 'fast' keeps the broken boxes and never goes AR
        fast = generate(tiny_engine.model, lm_attention, req, GenerationConfig(max_new_tokens=40))[0]
    assert -1 not in fast.kinds and fast.tokens == stock_loop_without_cache(tiny_engine, tiny_ckpt, req, 40,
                                                                            bias=bias)


def test_repetition_penalty_equals_the_stock_loop(tiny_engine, tiny_ckpt):
    """The penalty covers prompt + generated ids: with it, later steps avoid tokens of earlier steps."""
    req = request(tiny_engine, random_image(130, 96), "person</c>car")
    gen = GenerationConfig(max_new_tokens=30, sampling=SamplingConfig(repetition_penalty=5.0))
    ours = generate(tiny_engine.model, lm_attention, req, gen)[0]
    assert ours.tokens == stock_loop_without_cache(tiny_engine, tiny_ckpt, req, 30, penalty=5.0)
    plain = generate(tiny_engine.model, lm_attention, req, GenerationConfig(max_new_tokens=30))[0]
    assert ours.tokens != plain.tokens


@torch.no_grad()
def first_window_probs(engine, ckpt, req: EagerBatch) -> torch.Tensor:
    """fp32 logits of the first window (slot 0..5) from the transformers reference: [6, V]."""
    ref = hf_qwen2(engine, ckpt)
    ids, block = engine.cfg.tokens, engine.cfg.text.block_size
    prompt, (image,) = req.rows[0].prompt, req.images[0]
    n = len(prompt.ids)
    seq = prompt.ids + [prompt.ids[-1]] + [ids.text_mask] * (block - 1)
    emb = ref.model.embed_tokens(torch.tensor(seq))
    emb[prompt.image_start : prompt.image_start + image.shape[0]] = image
    return ref(inputs_embeds=emb[None], attention_mask=stock_window_mask(len(seq), block)[None, None],
               position_ids=torch.tensor([list(range(n)) + list(range(n - 1, n - 1 + block))])).logits[0, -block:]


def test_sampled_first_token_follows_the_reference_distribution(tiny_engine, tiny_ckpt):
    """800 rows of one request, one step each, at a temperature where the top token has p = 0.5:
    the first token's frequencies match softmax(reference logits / T) (greedy would give 1.0)."""
    req = request(tiny_engine, random_image(100, 80, seed=4), "cat")
    logits = first_window_probs(tiny_engine, tiny_ckpt, req)[0].double()
    lo, hi = 1e-3, 10.0
    for _ in range(60):  # bisect T so the top token has probability 0.5
        t = (lo * hi) ** 0.5
        lo, hi = (t, hi) if torch.softmax(logits / t, -1).max() > 0.5 else (lo, t)
    p = torch.softmax(logits / t, -1)
    ids = tiny_engine.cfg.tokens
    assert p[[ids.box_start, ids.ref_start, ids.null, ids.im_end]].max() < 0.05  # the raw proposal keeps x0[0]
    n, tokens = 800, []
    gen = GenerationConfig(fixed_steps=1, seed=9)
    for chunk in range(0, n, 100):
        rows = [dataclasses.replace(req.rows[0], temperature=t, index=chunk + i) for i in range(100)]
        batch = EagerBatch(rows, req.images * 100)
        tokens += [r.tokens[0] for r in generate(tiny_engine.model, lm_attention, batch, gen)]
    freq = torch.bincount(torch.tensor(tokens), minlength=p.numel()).double() / n
    bound = 5 * torch.sqrt(p * (1 - p) / n) + 1.0 / n
    assert ((freq - p).abs() <= bound).all(), ((freq - p).abs() / bound).max()
    assert len(set(tokens)) > 3


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

"""The eager path on CUDA (skipped without a GPU), against the fp32 CPU run of the same weights."""

from __future__ import annotations

import itertools
from unittest.mock import patch

import pytest
import torch

import graphrt.generate as G
from graphrt import Engine, EngineOptions, GenerationConfig
from graphrt.attention.sdpa import lm_attention
from graphrt.generate import EagerBatch, generate
from graphrt.request import Row

from conftest import random_image

pytestmark = pytest.mark.gpu


def test_cuda_fp32_tokens_equal_cpu(tiny_ckpt, tiny_engine):
    gpu = Engine.from_pretrained(tiny_ckpt, EngineOptions(device="cuda", dtype="float32", progress=False))
    pairs = [(random_image(130, 96, seed=1), "person</c>car"), (random_image(60, 200, seed=2), "a red cup")]
    for got, want in zip(gpu.locate_batch(pairs, max_new_tokens=24), tiny_engine.locate_batch(pairs, max_new_tokens=24)):
        assert got.tokens == want.tokens


def run_with_logits(engine, image, query, max_new_tokens):
    """Eager generation of one row, keeping each step's window logits (float32, CPU)."""
    im = engine.processor(image)
    prompt = engine.prompts.build(query, im.num_tokens((2, 2)))
    batch = EagerBatch([Row.of_prompt(prompt)], [(engine.encode_images([im])[0],)])
    seen, real = [], G.probabilities
    spy = lambda logits, *a, **k: (seen.append(logits[0].float().cpu()), real(logits, *a, **k))[1]  # noqa: E731
    with patch.object(G, "probabilities", spy):
        res = generate(engine.model, lm_attention, batch, GenerationConfig(max_new_tokens=max_new_tokens))[0]
    return res, seen, im


def test_cuda_bf16_follows_the_fp32_cpu_reference(tiny_ckpt, tiny_engine):
    """bf16 on the GPU: the first window's logits within bf16 error of fp32 on the CPU, and the
    tokens equal up to the first place where fp32's top-2 logits are closer than bf16 resolves."""
    gpu = Engine.from_pretrained(tiny_ckpt, EngineOptions(device="cuda", dtype="bfloat16", graphs="off",
                                                          progress=False))
    image = random_image(640, 480)
    got, got_logits, im = run_with_logits(gpu, image, "person", 16)
    want, want_logits, _ = run_with_logits(tiny_engine, image, "person", 16)
    assert im.num_tokens((2, 2)) == 414
    first, ref = got_logits[0], want_logits[0]
    err = (first - ref).abs().max().item() / ref.abs().max().item()
    assert err < 0.05, f"bf16 logits off by {err:.3f} of the largest logit"
    if got.tokens == want.tokens:
        return
    d = next(i for i, (a, b) in enumerate(zip(got.tokens + [-1], want.tokens + [-2])) if a != b)
    step = next(i for i, c in enumerate(itertools.accumulate(want.accepted)) if c > d)
    slot = d - sum(want.accepted[:step])
    top = want_logits[step][slot].topk(2).values
    assert float(top[0] - top[1]) < 4 * 2.0**-7 * float(top[0].abs()), f"diverges at token {d} without a near-tie"

"""The eager path on CUDA (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from graphrt import Engine, EngineOptions

from conftest import random_image

pytestmark = pytest.mark.gpu


def test_cuda_fp32_tokens_equal_cpu(tiny_ckpt, tiny_engine):
    gpu = Engine.from_pretrained(tiny_ckpt, EngineOptions(device="cuda", dtype="float32", progress=False))
    pairs = [(random_image(130, 96, seed=1), "person</c>car"), (random_image(60, 200, seed=2), "a red cup")]
    for got, want in zip(gpu.locate_batch(pairs, max_new_tokens=24), tiny_engine.locate_batch(pairs, max_new_tokens=24)):
        assert got.tokens == want.tokens


def test_cuda_bf16_runs_and_is_finite(tiny_ckpt):
    gpu = Engine.from_pretrained(tiny_ckpt, EngineOptions(device="cuda", dtype="bfloat16", graphs="off",
                                                          progress=False))
    res = gpu.locate(random_image(640, 480), "person", max_new_tokens=16)
    assert res.tokens and res.image_tokens == 414
    assert all(torch.isfinite(p).all() for p in gpu.model.parameters())

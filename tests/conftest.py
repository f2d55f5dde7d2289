"""Shared fixtures. Checkpoints here are random: their tokens are random, and tests never read
meaning into them; they compare paths and references on identical weights."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

if not torch.cuda.is_available():
    # Triton kernels (graphrt/kernels) run on CPU tensors in Triton's interpreter; read when a
    # kernel module is first imported, so set before graphrt (whose vision kernels import Triton) is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from graphrt import Engine, EngineOptions  # noqa: E402
from weights.synth import write_preset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_preset("tiny", tmp_path_factory.mktemp("tiny"), seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, EngineOptions(device="cpu", dtype="float32", progress=False))


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    arr = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)
    return Image.fromarray(arr)


# Lines 1-8 of a request JSONL with good and bad rows: bad are 2 (not JSON), 3 (missing image),
# 4 (empty query), 5 (no image field), 6 (an undecodable image); 1, 7 and 8 are good.
MIXED_ROWS = [
    {"image": "a.png", "query": "cat"},
    "this is not json",
    {"image": "missing.png", "query": "cat"},
    {"image": "a.png", "query": ""},
    {"query": "no image"},
    {"image": "broken.png", "query": "dog"},
    {"image": "b.png", "query": ["person", "car"]},
    {"image": "a.png", "query": "dog"},
]


def write_mixed_jsonl(root, extra_rows=()):
    """`root/req.jsonl` of MIXED_ROWS then `extra_rows`, with the images they name (a.png 90x70,
    b.png 50x110, broken.png not an image); returns the JSONL path."""
    random_image(90, 70, seed=1).save(root / "a.png")
    random_image(50, 110, seed=2).save(root / "b.png")
    (root / "broken.png").write_bytes(b"not an image")
    lines = [r if isinstance(r, str) else json.dumps(r) for r in [*MIXED_ROWS, *extra_rows]]
    (root / "req.jsonl").write_text("\n".join(lines) + "\n")
    return root / "req.jsonl"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

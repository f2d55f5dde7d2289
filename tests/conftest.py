"""Shared fixtures. Checkpoints here are random: their tokens are random, and tests never read
meaning into them; they compare paths and references on identical weights."""

from __future__ import annotations

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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

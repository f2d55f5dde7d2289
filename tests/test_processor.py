"""Image loading, the official resize rules and patch layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from graphrt import InputError
from graphrt.config import PreprocessorConfig
from graphrt.processor import ImageProcessor, load_image

from conftest import random_image

PROC = ImageProcessor(PreprocessorConfig())


@pytest.mark.parametrize("size, patches, tokens", [
    ((640, 480), 1656, 414), ((1024, 768), 4144, 1036), ((1024, 1024), 5476, 1369), ((336, 336), 576, 144),
])
def test_token_counts_of_public_measurements(size, patches, tokens):
    out = PROC(random_image(*size))
    assert out.num_patches == patches and out.num_tokens((2, 2)) == tokens
    assert out.pixels.shape == (patches, 3, 14, 14) and out.size == size


def test_patch_budget_caps_large_images():
    # 285 x 214 patches > 25600: scale by sqrt(25600 / 60990) to 2591 x 1943, then round up to 28.
    assert PROC.capped_size(4000, 3000) == (2591, 1943)
    assert PROC.target_size(4000, 3000) == (2604, 1960)


def test_patches_are_row_major_and_normalized():
    img = np.zeros((28, 56, 3), dtype=np.uint8)
    img[:14, 14:28] = 255  # patch (row 0, col 1) white
    out = PROC(img)
    assert out.grid == (2, 4)
    assert torch.allclose(out.pixels[1], torch.ones(3, 14, 14))
    assert torch.allclose(out.pixels[0], -torch.ones(3, 14, 14))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_modes_convert_to_rgb(mode):
    img = random_image(40, 30).convert(mode)
    assert load_image(img).mode == "RGB"


def test_transparency_composites_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


def test_numpy_inputs(rng):
    hwc = (rng.rand(30, 40, 3) * 255).astype(np.uint8)
    assert load_image(hwc).size == (40, 30)
    assert load_image(rng.rand(3, 30, 40).astype(np.float32)).size == (40, 30)
    assert load_image(rng.rand(30, 40)).size == (40, 30)


def test_bad_images_raise_input_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="unreadable"):
        load_image(bad)
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="zero size"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="unsupported image type"):
        load_image(42)

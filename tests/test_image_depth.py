"""16-bit and 32-bit integer images scale to 8 bits (full range -> 0..255) before the model sees
them: the same picture stored at 8 and at 16 bits gives the same patches (within one level)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from graphrt.config import PreprocessorConfig
from graphrt.processor import ImageProcessor

PROC = ImageProcessor(PreprocessorConfig())


def gray8() -> np.ndarray:
    rs = np.random.RandomState(0)
    return (rs.rand(56, 84) * 255).astype(np.uint8)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def sixteen_bit(g8: np.ndarray) -> Image.Image:
    image = Image.fromarray(g8.astype(np.uint16) * 257)  # 0..255 -> 0..65535
    assert image.mode == "I;16"
    return image


def same_picture(a, b) -> None:
    x, y = PROC(a).rgb.int(), PROC(b).rgb.int()
    assert x.shape == y.shape
    assert (x - y).abs().max().item() <= 1  # 255/65535 scaling may round one level differently


def test_16_bit_gray_scales_like_its_8_bit_original():
    g8 = gray8()
    same_picture(Image.fromarray(g8), sixteen_bit(g8))


def test_16_bit_png_file_scales_like_its_8_bit_original():
    g8 = gray8()
    same_picture(png_bytes(Image.fromarray(g8)), png_bytes(sixteen_bit(g8)))


def test_32_bit_integer_image_holding_16_bit_values_scales_like_its_8_bit_original():
    # Mode "I" is read as 0..65535 (the rule in docs/notes.md, input conventions), not by its maximum.
    g8 = gray8()
    g8[0, 0] = 255
    i32 = Image.fromarray((g8.astype(np.int32) * (255 * 257)) // 255)
    assert i32.mode == "I"
    x, y = PROC(Image.fromarray(g8)).rgb.int(), PROC(i32).rgb.int()
    assert (x - y).abs().max().item() <= 2  # integer division above loses up to one level
    assert PROC(i32).rgb.float().mean() > 100  # not clipped dark or saturated white

"""Bad and odd inputs over the public API: each case asserts its outcome (a graphrt error naming the
input, or an answer) and that the engine then still answers a good request with the same tokens as
before. Random weights: only "answered" and token equality are asserted, never meaning."""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from graphrt import CheckpointError, Engine, EngineOptions, GenerationState, GraphrtError, InputError, OptionError
from graphrt.processor import load_image
from weights.presets import PRESETS
from weights.synth import write_checkpoint

from conftest import random_image

GOOD = (random_image(64, 48, seed=3), "cat")


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine.with_options(max_new_tokens=8)


@pytest.fixture(scope="module")
def baseline(engine):
    result = engine.locate(*GOOD)
    assert result.error is None and result.tokens
    return result.tokens


@pytest.fixture
def serves(engine, baseline):
    """Call after a bad input: the next good request is answered, with the same tokens as before."""
    def check():
        result = engine.locate(*GOOD)
        assert result.error is None and result.tokens == baseline
    return check


def png_bytes(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width x height black pixels: ~50 KB on disk at 20000 x 20000, 400 Mpixel decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row * 500) for _ in range(height // 500)) + z.compress(row * (height % 500))
    body += z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    data = png_bomb(20000, 20000)
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(data)
    return path, data


# ---------------------------------------------------------------------------------------------- images


def test_bomb_as_path_and_bytes_is_refused_by_the_pixel_limit(engine, serves, bomb):
    path, data = bomb
    assert len(data) < 100_000  # tiny file, 400 Mpixel image
    with pytest.raises(InputError, match=r"bomb\.png.*max_image_pixels"):
        engine.locate(path, "cat")
    serves()
    with pytest.raises(InputError, match=r"image bytes .*max_image_pixels"):
        engine.locate(data, "cat")
    serves()
    results = engine.locate_batch([(path, "cat"), GOOD, (data, "dog")], errors="report")
    assert [r.error is None for r in results] == [False, True, False]
    assert "max_image_pixels" in results[0].error and "max_image_pixels" in results[2].error


def test_pixel_limit_is_an_option_read_before_decoding(engine, serves):
    small = engine.with_options(max_image_pixels=64 * 48 - 1)
    for image in (GOOD[0], png_bytes(GOOD[0]), np.asarray(GOOD[0])):
        with pytest.raises(InputError, match=r"64x48 = 3,072 pixels, over the limit of 3,071"):
            small.locate(image, "cat")
    # Under Pillow's own bomb limit but over ours: refused from the header (the IDAT is never inflated).
    with pytest.raises(InputError, match=r"9000x9000 = 81,000,000 pixels"):
        engine.locate(png_bomb(9000, 9000), "cat")
    assert engine.with_options(max_image_pixels=None).locate(*GOOD).error is None
    serves()


@pytest.mark.parametrize("case, match", [
    ("garbage", "not a recognized image format"),
    ("truncated_png", "unreadable image"),
    ("truncated_jpeg", "unreadable image"),
    ("zero_bytes", "empty"),
    ("directory", "is a directory"),
    ("missing", "not found"),
])
def test_unreadable_files(engine, serves, tmp_path, case, match):
    good_png, good_jpeg = png_bytes(GOOD[0]), png_bytes(GOOD[0], "JPEG")
    path = tmp_path / f"{case}.img"
    if case == "garbage":
        path.write_bytes(b"\x00\x01not an image at all" * 10)
    elif case == "truncated_png":
        path.write_bytes(good_png[: len(good_png) // 2])
    elif case == "truncated_jpeg":
        path.write_bytes(good_jpeg[: len(good_jpeg) // 2])
    elif case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    with pytest.raises(InputError, match=match) as err:
        engine.locate(path, "cat")
    assert str(path) in str(err.value)  # the error names the input
    serves()
    if case in ("garbage", "truncated_png", "truncated_jpeg", "zero_bytes"):
        with pytest.raises(InputError, match=r"image bytes"):
            engine.locate(path.read_bytes(), "cat")
        serves()


def test_closed_and_odd_objects(engine, serves):
    closed = GOOD[0].copy()
    closed.close()
    with pytest.raises(InputError, match="closed"):
        engine.locate(closed, "cat")
    serves()
    for thing in (42, None, torch.zeros(3, 8, 8), {"image": "x.png"}):
        with pytest.raises(InputError, match="unsupported image type"):
            engine.locate(thing, "cat")
    serves()


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (600, 400)])
def test_extreme_sizes_are_answered(engine, serves, size):
    result = engine.locate(np.full(size[::-1], 128, np.uint8), "cat")
    assert result.error is None and result.image_size == size
    serves()


def test_huge_image_is_capped_then_checked_against_the_context(engine, serves):
    # 3000 x 2200 is capped to 25,600 patches = 6,400 image tokens: over the tiny model's 4,096-token
    # context (the 3B model's 32,768 takes it), so a clear InputError here, and nothing else breaks.
    with pytest.raises(InputError, match="does not fit the model context of 4096"):
        engine.locate(np.full((2200, 3000, 3), 90, np.uint8), "cat")
    serves()


@pytest.mark.parametrize("size", [(1, 10000), (10000, 1)])
def test_extreme_aspect_ratio_is_refused_clearly(engine, serves, size):
    # 10000 px resize to 358 patches of 28: over the 512-patch side of the vision position table.
    with pytest.raises(InputError, match="vision position table"):
        engine.locate(np.full(size[::-1], 128, np.uint8), "cat")
    serves()


def test_animated_image_gives_its_first_frame(engine, serves, tmp_path):
    frames = [Image.new("RGB", (56, 42), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    frames[0].paste(random_image(20, 20, seed=5), (10, 10))
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as img:
        assert getattr(img, "n_frames", 1) == 3
    first = np.asarray(frames[0])
    assert np.array_equal(np.asarray(load_image(path)), first)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), first)
    assert engine.locate(path, "cat").tokens == engine.locate(first, "cat").tokens
    serves()


# ---------------------------------------------------------------------------------------------- PIL modes

def _rgb_array(seed=0, size=(7, 5)):
    return (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)


def _composite(rgb, alpha):
    """Straight alpha over white, rounded to nearest (independent of Pillow's compositor)."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1 - a)


def test_every_pil_mode_converts_to_the_expected_rgb():
    rgb = _rgb_array()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = np.linspace(0, 255, gray.size).reshape(gray.shape).astype(np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255

    def check(image, want, tol=0):
        got = np.asarray(load_image(image)).astype(np.int64)
        assert load_image(image).mode == "RGB" and got.shape == want.shape
        assert np.abs(got - np.asarray(want, dtype=np.float64)).max() <= tol, image.mode

    rgb3 = lambda g: np.repeat(np.asarray(g)[..., None], 3, axis=2)  # noqa: E731
    check(Image.fromarray(rgb), rgb)
    check(Image.fromarray(gray), rgb3(gray))
    check(Image.fromarray(gray > 127), rgb3((gray > 127) * 255))  # mode "1"
    assert Image.fromarray(gray > 127).mode == "1"
    check(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), _composite(rgb, alpha), tol=1)
    check(Image.fromarray(np.dstack([gray, alpha]), "LA"), _composite(rgb3(gray), alpha), tol=1)
    # Premultiplied alpha (La, RGBa) is un-premultiplied first: values are within rounding of straight alpha.
    check(Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("RGBa"), _composite(rgb, alpha), tol=3)
    check(Image.fromarray(np.dstack([gray, alpha]), "LA").convert("La"), _composite(rgb3(gray), alpha), tol=3)
    # Palette with a transparent index: that index becomes white.
    pal = Image.fromarray(rgb).quantize(8)
    idx = np.asarray(pal)
    pal.info["transparency"] = int(idx[0, 0])
    palette = np.array(pal.getpalette()[: 3 * 8]).reshape(8, 3)
    want = palette[idx].astype(np.float64)
    want[idx == idx[0, 0]] = 255
    check(pal, want)
    pa = Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("PA")
    pa_idx, pa_alpha = np.asarray(pa)[..., 0], np.asarray(pa)[..., 1]
    pa_pal = np.array(pa.getpalette()).reshape(-1, 3)
    check(pa, _composite(pa_pal[pa_idx], pa_alpha), tol=1)
    # Colour spaces: Pillow's conversions, within rounding of the original RGB.
    for mode, tol in (("RGBX", 0), ("CMYK", 0), ("YCbCr", 3), ("HSV", 4), ("LAB", 12)):  # LAB: 8-bit L*a*b* rounding
        check(Image.fromarray(rgb).convert(mode), rgb, tol)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16_bit_modes_scale_to_8_bit(mode):
    values = np.array([[0, 1, 128, 129, 257, 32768, 65534, 65535]], dtype=np.int64)
    layout = {"I": "<i4", "I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
    image = Image.frombytes(mode, (values.shape[1], 1), values.astype(layout).tobytes())
    assert image.mode == mode
    want = [round(v * 255 / 65535) for v in values[0]]
    got = np.asarray(load_image(image))[0, :, 0].tolist()
    assert got == want and np.asarray(load_image(image)).dtype == np.uint8
    if mode == "I;16":  # a 16-bit grayscale PNG file decodes to the same values
        assert np.asarray(load_image(png_bytes(image)))[0, :, 0].tolist() == want


def test_mode_i_and_f_out_of_range_are_refused():
    with pytest.raises(InputError, match="16-bit values"):
        load_image(Image.frombytes("I", (2, 1), np.array([-1, 70000], "<i4").tobytes()))
    as_f = lambda values: Image.frombytes("F", (len(values), 1), np.array(values, "<f4").tobytes())  # noqa: E731
    assert np.asarray(load_image(as_f([0.0, 0.5, 1.0])))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(InputError, match="0..1"):
        load_image(as_f([0.0, 200.0]))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                                  "LAB", "HSV", "I", "I;16", "F"])
def test_every_pil_mode_is_answered(engine, serves, mode):
    image = random_image(40, 30, seed=1).convert(mode) if mode != "F" \
        else Image.frombytes("F", (40, 30), np.random.RandomState(1).rand(30, 40).astype("<f4").tobytes())
    result = engine.locate(image, "cat")
    assert result.error is None and result.image_size == (40, 30)
    serves()


# ---------------------------------------------------------------------------------------------- EXIF

@pytest.fixture
def rotated_jpeg(tmp_path):
    """A JPEG stored 60 x 30 with EXIF Orientation 6 (turn 90 degrees clockwise to display: 30 x 60)."""
    stored = Image.fromarray(_rgb_array(seed=7, size=(60, 30)))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif, quality=95)
    with Image.open(path) as img:
        img.load()
        decoded = np.asarray(img.convert("RGB"))  # the stored pixels, as the JPEG decoder gives them
    return path, decoded


def test_one_exif_rule_for_path_bytes_and_pil(rotated_jpeg):
    path, decoded = rotated_jpeg
    displayed = np.rot90(decoded, k=-1)  # clockwise: what a viewer shows
    assert displayed.shape[:2] == (60, 30)
    with Image.open(path) as opened:
        inputs = {"path": path, "str": str(path), "bytes": path.read_bytes(), "pil": opened,
                  "numpy": displayed.copy()}
        for name, image in inputs.items():
            assert np.array_equal(np.asarray(load_image(image)), displayed), name
        assert opened.getexif().get(0x0112) == 6  # the caller's image is not changed
    # A PIL image the caller already turned upright (exif_transpose drops the tag) is not turned twice.
    from PIL import ImageOps

    with Image.open(path) as opened:
        upright = ImageOps.exif_transpose(opened)
    assert np.array_equal(np.asarray(load_image(upright)), displayed)
    # Arrays carry no EXIF: the stored orientation stays stored.
    assert np.asarray(load_image(decoded)).shape[:2] == (30, 60)


def test_exif_boxes_are_in_displayed_coordinates(engine, serves, rotated_jpeg):
    path, decoded = rotated_jpeg
    displayed = np.ascontiguousarray(np.rot90(decoded, k=-1))
    want = engine.locate(displayed, "cat")
    assert want.image_size == (30, 60)
    with Image.open(path) as opened:
        for image in (path, path.read_bytes(), opened):
            got = engine.locate(image, "cat")
            assert got.image_size == (30, 60) and got.tokens == want.tokens
    serves()


# ---------------------------------------------------------------------------------------------- arrays

def test_array_conventions_accepted():
    rgb = _rgb_array(seed=2)
    gray = rgb[..., 0]
    alpha = np.full(gray.shape, 255, np.uint8)
    same = lambda image, want: np.array_equal(np.asarray(load_image(image)), want)  # noqa: E731
    assert same(rgb, rgb)
    assert same(np.dstack([rgb, alpha]), rgb)  # opaque RGBA
    assert same(gray, np.dstack([gray] * 3)) and same(gray[..., None], np.dstack([gray] * 3))
    assert same(rgb.astype(np.float32) / 255.0, rgb) and same(rgb / 255.0, rgb)  # float 0..1 -> same bytes
    assert same(rgb.astype(np.float16) / np.float16(255), rgb)
    big = _rgb_array(seed=2, size=(9, 6))
    assert same(np.moveaxis(big, -1, 0), big)  # CHW (torch layout)
    assert same(big[:, ::-1], np.ascontiguousarray(big[:, ::-1]))  # views with negative strides


@pytest.mark.parametrize("array, match", [
    (np.full((6, 7, 3), 200.0), r"float pixels must be in 0..1; found 200..200 \(0..255 floats"),
    (np.full((6, 7, 3), -0.5), "found -0.5"),
    (np.full((6, 7), np.nan), "NaN or infinite"),
    (np.full((6, 7, 3), np.inf, np.float32), "NaN or infinite"),
    (np.zeros((6, 7, 3), np.int32), "dtype int32 is not accepted"),
    (np.zeros((6, 7, 3), np.uint16), "dtype uint16 is not accepted"),
    (np.zeros((6, 7), bool), "dtype bool is not accepted"),
    (np.zeros((6, 7, 2), np.uint8), "expected HW, HWC"),
    (np.zeros((6, 7, 5), np.uint8), "expected HW, HWC"),
    (np.zeros((2, 6, 7, 3), np.uint8), "expected HW, HWC"),
    (np.zeros(7, np.uint8), "expected HW, HWC"),
    (np.zeros((0, 7, 3), np.uint8), "zero size"),
])
def test_array_conventions_refused(engine, serves, array, match):
    with pytest.raises(InputError, match=match) as err:
        engine.locate(array, "cat")
    assert "image array (shape" in str(err.value)
    serves()


# ---------------------------------------------------------------------------------------------- queries

@pytest.mark.parametrize("query, match", [
    ("", "empty"), ("   \t\n", "empty"), (["cat", " "], "empty category"), ([], "non-empty"),
    (None, "non-empty string"), (42, "non-empty string"), (["cat", 3], "non-empty string"), (b"cat", "non-empty"),
    ("x" * 20_000, r"20,000 characters is over EngineOptions.max_query_chars = 16,384"),
])
def test_bad_queries(engine, serves, query, match):
    with pytest.raises(InputError, match=match):
        engine.locate(GOOD[0], query)
    serves()


def test_query_over_the_context_is_an_input_error(engine, serves):
    with pytest.raises(InputError, match="context"):
        engine.with_options(max_query_chars=None).locate(GOOD[0], "cat " * 5000)
    serves()


@pytest.mark.parametrize("query", ["猫 и café 🐱", "person</c>car", "a" * 1000])
def test_odd_but_valid_queries_are_answered(engine, serves, query):
    assert engine.locate(GOOD[0], query).error is None
    serves()


def test_special_token_text_in_a_query_does_not_break_the_engine(engine, serves):
    # Answered, or refused as an InputError: never another error type, never a broken engine.
    for query in ("<|im_end|><|im_start|>assistant", "<box><0><1></box>", "</img><IMG_CONTEXT>"):
        try:
            assert engine.locate(GOOD[0], query).error is None
        except InputError:
            pass
        serves()


def test_image_placeholder_in_a_query_is_an_input_error(engine, serves):
    # A query may not place images itself: the prompt builder refuses `<image-N>` text by name.
    with pytest.raises(InputError, match="<image-1>"):
        engine.locate(GOOD[0], "find <image-1> here")
    serves()


# ---------------------------------------------------------------------------------------------- rows

def test_plain_strings_instead_of_pairs(engine, serves):
    with pytest.raises(InputError, match=r"pair 0: expected an \(image, query\) or \(image, query, options\) pair, found str"):
        engine.locate_batch(["a.png", "b.png"])
    with pytest.raises(InputError, match="pair 1"):
        engine.locate_batch([GOOD, (GOOD[0], "cat", 0.5)])
    serves()


def test_wrong_containers(engine, serves):
    with pytest.raises(InputError, match="pairs must be a list of"):
        engine.locate_batch("a.png")
    with pytest.raises(InputError, match="pairs must be a list of"):
        engine.locate_batch(42)
    with pytest.raises(InputError, match="temperatures must be a list"):
        engine.locate_batch([GOOD], 0.5)
    with pytest.raises(InputError, match="temperatures must have one entry per pair"):
        engine.locate_batch([GOOD], [0.5, 0.5])
    with pytest.raises(InputError, match="queries must be a list"):
        engine.locate_many(GOOD[0], None)
    serves()


def test_nan_default_temperature_is_an_option_error(engine, serves):
    from graphrt import GenerationConfig, SamplingConfig

    bad = GenerationConfig(sampling=SamplingConfig(temperature=math.nan))
    with pytest.raises(OptionError, match="temperature"):
        EngineOptions(generation=bad)
    with pytest.raises(OptionError, match="temperature"):
        engine.locate_batch([GOOD], sampling=bad.sampling)
    serves()


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -0.5, "hot", True])
def test_bad_temperatures(engine, serves, temperature):
    with pytest.raises(InputError, match="temperature"):
        engine.locate(*GOOD, temperature=temperature)
    serves()


def test_report_mode_gives_every_bad_row_its_own_error_and_answers_every_good_row(engine, bomb, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"junk")
    other = random_image(50, 40, seed=9)
    rows = [
        (GOOD, None, None),
        ("just a string", None, "expected an (image, query)"),
        ((bomb[0], "cat"), None, "max_image_pixels"),
        ((other, "dog"), None, None),
        ((GOOD[0], ""), None, "empty"),
        ((np.full((4, 4, 3), 9.0), "cat"), None, "0..1"),
        ((broken, "cat"), None, "not a recognized image format"),
        ((GOOD[0], "x" * 20_000), None, "max_query_chars"),
        ((GOOD[0], "cat"), math.nan, "temperature"),
        ((other, "cat"), -1.0, "temperature"),
        ((other, "person</c>car"), None, None),
        ((GOOD[0], None), None, "query"),
    ]
    pairs, temps = [r[0] for r in rows], [r[1] for r in rows]
    results = engine.locate_batch(pairs, temps, errors="report")
    assert len(results) == len(rows)
    for (pair, _, match), result in zip(rows, results):
        if match is None:
            assert result.error is None and result.tokens == engine.locate(*pair).tokens
        else:
            assert result.error is not None and match in result.error, (match, result.error)
    with pytest.raises(InputError):
        engine.locate_batch(pairs, temps)
    assert engine.locate(*GOOD).error is None


def test_max_rows_per_call(engine, serves):
    small = engine.with_options(max_rows=2)
    with pytest.raises(InputError, match=r"3 pairs, over EngineOptions.max_rows = 2"):
        small.locate_batch([GOOD] * 3)
    assert len(dict(small.locate_stream([GOOD] * 3))) == 3  # the streaming call takes any number
    serves()


# ---------------------------------------------------------------------------------------------- options

@pytest.mark.parametrize("options, match", [
    (dict(device="tpu"), "device 'tpu'"), (dict(device="cuda:x"), "device 'cuda:x'"),
    (dict(dtype="int8"), "dtype 'int8'"), (dict(task="segment"), "task 'segment'"),
    (dict(graphs="maybe"), "graphs 'maybe'"), (dict(eager_batch=0), "eager_batch"),
    (dict(preprocess_workers=-1), "preprocess_workers"), (dict(max_image_pixels=0), "max_image_pixels"),
    (dict(max_query_chars=1.5), "max_query_chars"), (dict(max_rows="many"), "max_rows"),
])
def test_bad_options_name_the_option(engine, serves, options, match):
    with pytest.raises(OptionError, match=match):
        EngineOptions(**options)
    with pytest.raises(OptionError, match=match):
        engine.with_options(**options)
    serves()


def test_unknown_option_and_errors_mode(engine, serves):
    with pytest.raises(OptionError, match="colour"):
        engine.with_options(colour="red")
    with pytest.raises(OptionError, match="errors"):
        engine.locate_batch([GOOD], errors="ignore")
    assert issubclass(OptionError, ValueError) and issubclass(OptionError, GraphrtError)
    serves()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_cuda_without_cuda(tiny_ckpt, serves):
    with pytest.raises(OptionError, match="CUDA is not available"):
        Engine.from_pretrained(tiny_ckpt, device="cuda", progress=False)
    serves()


# ---------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture
def ckpt(tiny_ckpt, tmp_path):
    """A writable copy of the tiny checkpoint."""
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, out)
    return out


def _load(path):
    return Engine.from_pretrained(path, device="cpu", dtype="float32", progress=False)


def _edit_json(path, edit):
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(edit(raw)))


def _set(section, key, value):
    def edit(raw):
        (raw if section is None else raw[section])[key] = value
        return raw
    return edit


@pytest.mark.parametrize("case, match", [
    ("empty_dir", "no config.json"),
    ("config_invalid_json", r"config.json: invalid JSON"),
    ("config_list", r"config.json: expected a JSON object, found list"),
    ("config_wrong_type", r"config.json: text_config.hidden_size must be a positive integer, found 'big'"),
    ("config_negative", r"config.json: vision_config.num_hidden_layers must be a positive integer, found -2"),
    ("config_bool", r"text_config.tie_word_embeddings must be true or false, found 'yes'"),
    ("config_token_id", r"config.json: box_start_token_id must be a non-negative integer token id, found '265'"),
    ("preprocessor_invalid_json", r"preprocessor_config.json: invalid JSON"),
    ("preprocessor_list", r"preprocessor_config.json: expected a JSON object"),
    ("preprocessor_wrong_type", r"preprocessor_config.json.patch_size must be a positive integer, found '14'"),
    ("preprocessor_mean", r"preprocessor_config.json.image_mean must be a list of 3 numbers"),
    ("preprocessor_std", r"image_std must be positive"),
    ("preprocessor_mismatch", r"patch_size 16 .* differ from config.json"),
    ("chat_template_list", r"chat_template.json: unreadable chat template"),
    # the tokenizer loads on a thread beside the weights: its error still reaches the caller
    ("tokenizer_vocab_garbage", r"cannot load the tokenizer"),
    ("no_weights", "no safetensors weights"),
    ("truncated_safetensors", r"model.safetensors: not a readable safetensors file"),
    ("zero_byte_safetensors", r"model.safetensors: not a readable safetensors file"),
    ("wrong_shape", r"wrong shape: language_model.model.norm.weight \[7\] \(expected \[64\]\)"),
    ("int_weights", r"tensor language_model.model.norm.weight has dtype I64"),
])
def test_broken_checkpoints(ckpt, serves, case, match):
    cfg_path, pre_path = ckpt / "config.json", ckpt / "preprocessor_config.json"
    weights = ckpt / "model.safetensors"
    if case == "empty_dir":
        shutil.rmtree(ckpt)
        ckpt.mkdir()
    elif case == "config_invalid_json":
        cfg_path.write_text('{"model_type": "locateanything",')
    elif case == "config_list":
        cfg_path.write_text("[1, 2]")
    elif case == "config_wrong_type":
        _edit_json(cfg_path, _set("text_config", "hidden_size", "big"))
    elif case == "config_negative":
        _edit_json(cfg_path, _set("vision_config", "num_hidden_layers", -2))
    elif case == "config_bool":
        _edit_json(cfg_path, _set("text_config", "tie_word_embeddings", "yes"))
    elif case == "config_token_id":
        _edit_json(cfg_path, _set(None, "box_start_token_id", "265"))
    elif case == "preprocessor_invalid_json":
        pre_path.write_text("{nope")
    elif case == "preprocessor_list":
        pre_path.write_text("[]")
    elif case == "preprocessor_wrong_type":
        _edit_json(pre_path, _set(None, "patch_size", "14"))
    elif case == "preprocessor_mean":
        _edit_json(pre_path, _set(None, "image_mean", [0.5, 0.5]))
    elif case == "preprocessor_std":
        _edit_json(pre_path, _set(None, "image_std", [0.5, 0.0, 0.5]))
    elif case == "preprocessor_mismatch":
        _edit_json(pre_path, _set(None, "patch_size", 16))
    elif case == "chat_template_list":
        (ckpt / "chat_template.json").write_text("[]")
    elif case == "tokenizer_vocab_garbage":
        (ckpt / "vocab.json").write_text("{nope")
    elif case == "no_weights":
        weights.unlink()
    elif case == "truncated_safetensors":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif case == "zero_byte_safetensors":
        weights.write_bytes(b"")
    elif case in ("wrong_shape", "int_weights"):
        tensors = load_file(str(weights))
        tensors["language_model.model.norm.weight"] = torch.zeros(7) if case == "wrong_shape" \
            else torch.zeros(64, dtype=torch.int64)
        save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=match) as err:
        _load(ckpt)
    assert "\n" not in str(err.value)
    serves()


@pytest.mark.parametrize("case, match", [
    ("missing_shard", r"shard .* listed in the index is missing"),
    ("truncated_shard", r"model-0000\d-of-0000\d.safetensors: not a readable safetensors file"),
    ("index_invalid_json", r"model.safetensors.index.json: unreadable index"),
    ("index_wrong_type", r"weight_map must map tensor names to shard file names"),
])
def test_broken_sharded_checkpoints(tiny_ckpt, tmp_path, serves, case, match):
    preset = PRESETS["tiny"]
    write_checkpoint(preset.config, preset.layout, tmp_path, seed=0, max_shard_bytes=200_000, progress=False)
    index = tmp_path / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    assert len(shards) > 1
    if case == "missing_shard":
        (tmp_path / shards[1]).unlink()
    elif case == "truncated_shard":
        data = (tmp_path / shards[0]).read_bytes()
        (tmp_path / shards[0]).write_bytes(data[: len(data) // 2])
    elif case == "index_invalid_json":
        index.write_text("{")
    elif case == "index_wrong_type":
        index.write_text(json.dumps({"weight_map": ["a", "b"]}))
    with pytest.raises(CheckpointError, match=match):
        _load(tmp_path)
    serves()


# ---------------------------------------------------------------------------------------------- resume

@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the garbage bytes
@pytest.mark.parametrize("case, match", [
    ("garbage", "not a file written by GenerationState.save"),
    ("empty", "not a file written by GenerationState.save"),
    ("a_list", r"holds list"),
    ("wrong_keys", r"holds \['colour'\]"),
    ("bad_backend", "malformed"),
    ("missing", "no such file"),
])
def test_garbage_given_to_resume(engine, serves, tmp_path, case, match):
    path = tmp_path / "state.pt"
    if case == "garbage":
        path.write_bytes(b"\x80\x04garbage" * 50)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "a_list":
        torch.save([1, 2, 3], str(path))
    elif case == "wrong_keys":
        torch.save({"colour": 1}, str(path))
    elif case == "bad_backend":
        torch.save({"backend": "tpu", "generation": {}, "rows": []}, str(path))
    with pytest.raises(InputError, match=match) as err:
        GenerationState.load(path)
    assert str(path) in str(err.value)
    serves()


def test_a_real_state_still_resumes(engine, tmp_path):
    path = tmp_path / "state.pt"
    run = engine.start([GOOD])
    run.advance(1)
    run.pause().save(path)
    assert [r.tokens for r in engine.resume(GenerationState.load(path)).finish()] == [engine.locate(*GOOD).tokens]

"""The tensor bicubic resize equals PIL's 8-bit bicubic bit for bit: the pad-up resize of the
processor over 240 random sizes, downscales (both sides, one side, up/down mixes, large ratios)
over 240 more in the installed Pillow's pass order, and the processor's output on the device path
(both resizes on the device, no PIL resize) equals its PIL path."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from graphrt.config import PreprocessorConfig
from graphrt import gpu_resize
from graphrt.gpu_resize import resize_bicubic, vertical_first
from graphrt.processor import ImageProcessor

from conftest import random_image


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small int32 ops: torch's CPU threads only add overhead (and contend on a shared host).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def torch_path_on_cpu(request, monkeypatch):
    # The tests suite runs with TRITON_INTERPRET=1 on CPU (conftest); the interpreter is far too
    # slow for hundreds of sizes, so CPU tensors take the int32 torch path here, and the Triton
    # kernel's arithmetic has its own interpreted test below.
    if not request.node.name.startswith("test_interp_"):
        monkeypatch.setattr(gpu_resize, "_use_triton", lambda x, use=gpu_resize._use_triton: x.is_cuda and use(x))


def pil_resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC))


def random_pixels(rs, width: int, height: int) -> np.ndarray:
    # Smooth gradients plus noise: edges and flat areas both (clipping at 0/255 is exercised).
    base = rs.randint(0, 256, size=(height, width, 3)).astype(np.float64)
    ramp = np.linspace(-80, 80, width)[None, :, None]
    return np.clip(base + ramp, 0, 255).astype(np.uint8)


def devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", devices())
def test_pad_up_resize_equals_pil_on_240_sizes(device):
    rs = np.random.RandomState(13)
    proc = ImageProcessor(PreprocessorConfig())
    for _ in range(240):
        w, h = (int(v) for v in rs.randint(14, 400, size=2))
        target = proc.rounded_size(w, h)  # each side up to a multiple of 28 (or unchanged)
        arr = random_pixels(rs, w, h)
        out = resize_bicubic(torch.from_numpy(arr).to(device), target).cpu().numpy()
        np.testing.assert_array_equal(out, pil_resize(arr, target), err_msg=f"{w}x{h} -> {target}")


@pytest.mark.parametrize("device", devices())
def test_general_resizes_equal_pil(device):
    """Up in both sides, down in width only, down in height only (one pass), strong shrinks in
    one side: the cases where every Pillow version runs horizontal then vertical."""
    rs = np.random.RandomState(7)
    for _ in range(60):
        w, h = (int(v) for v in rs.randint(2, 200, size=2))
        kind = rs.randint(4)
        if kind == 0:
            size = (w + int(rs.randint(1, 150)), h + int(rs.randint(1, 150)))
        elif kind == 1:
            size = (max(1, w // int(rs.randint(1, 6))), h + int(rs.randint(0, 100)))
        elif kind == 2:
            size = (w, max(1, h // int(rs.randint(1, 8))))
        else:
            size = (max(1, int(rs.randint(1, w + 1))), h)
        arr = random_pixels(rs, w, h)
        out = resize_bicubic(torch.from_numpy(arr).to(device), size).cpu().numpy()
        np.testing.assert_array_equal(out, pil_resize(arr, size), err_msg=f"{w}x{h} -> {size}")


@pytest.mark.parametrize("device", devices())
def test_processor_device_path_equals_pil_path(device):
    # A small patch budget makes the downscale step run on small images too.
    cfg = PreprocessorConfig(in_token_limit=300)
    host, dev = ImageProcessor(cfg), ImageProcessor(cfg, resize_device=device)
    # (200, 900) and (150, 1200) shrink mostly in height: Pillow 13 runs their vertical pass first.
    sizes = [(640, 480), (333, 129), (56, 28), (500, 90), (97, 301), (20, 20), (200, 900), (150, 1200)]
    for i, size in enumerate(sizes):
        image = random_image(*size, seed=i)
        a, b = host(image), dev(image)
        assert a.grid == b.grid and a.size == b.size
        assert b.rgb.device.type == torch.device(device).type
        assert torch.equal(a.rgb, b.rgb.cpu()), size


def downscale_cases(rs, n: int):
    """(w, h, (out_w, out_h)): both sides shrink, one side only, one shrinks while the other grows,
    and large ratios (support widened 10-60x), in turn."""
    for i in range(n):
        w, h = (int(v) for v in rs.randint(2, 360, size=2))
        kind = i % 5
        if kind == 0:
            size = (int(rs.randint(1, w + 1)), int(rs.randint(1, h + 1)))
        elif kind == 1:
            size = (max(1, w // int(rs.randint(10, 60))), max(1, h // int(rs.randint(10, 60))))
        elif kind == 2:
            size = (w, int(rs.randint(1, h + 1))) if rs.rand() < 0.5 else (int(rs.randint(1, w + 1)), h)
        elif kind == 3:  # one side shrinks, the other grows
            size = ((int(rs.randint(1, w + 1)), h + int(rs.randint(1, 200))) if rs.rand() < 0.5
                    else (w + int(rs.randint(1, 200)), int(rs.randint(1, h + 1))))
        else:  # tall or wide strips shrinking mostly along their length
            size = (int(rs.randint(max(1, w - 20), w + 1)), max(1, h // int(rs.randint(2, 30))))
            if rs.rand() < 0.5:
                w, h, size = h, w, (size[1], size[0])
        yield w, h, size


@pytest.mark.parametrize("device", devices())
def test_downscales_equal_pil_on_240_sizes(device):
    rs = np.random.RandomState(23)
    orders = set()
    for w, h, size in downscale_cases(rs, 240):
        arr = random_pixels(rs, w, h)
        out = resize_bicubic(torch.from_numpy(arr).to(device), size).cpu().numpy()
        np.testing.assert_array_equal(out, pil_resize(arr, size), err_msg=f"{w}x{h} -> {size}")
        orders.add(vertical_first((w, h), size))
    assert orders == ({False, True} if gpu_resize.PILLOW_ORDERS_PASSES else {False})


@pytest.mark.parametrize("device", devices())
def test_pass_order_is_the_installed_pillows(device):
    """Sizes where the two orders give different bits: only the installed Pillow's order matches."""
    rs = np.random.RandomState(5)
    for w, h, size in [(12, 123, (2, 98)), (42, 153, (6, 67)), (60, 60, (59, 20)), (325, 217, (167, 152)),
                       (115, 36, (83, 21)), (90, 40, (120, 30))]:
        arr = random_pixels(rs, w, h)
        x = torch.from_numpy(arr).to(device)
        ref = pil_resize(arr, size)
        mine = resize_bicubic(x, size).cpu().numpy()
        other = resize_bicubic(x, size, by_size=not gpu_resize.PILLOW_ORDERS_PASSES).cpu().numpy()
        np.testing.assert_array_equal(mine, ref, err_msg=f"{w}x{h} -> {size}")
        if vertical_first((w, h), size, by_size=True):  # the orders differ here: the other one must miss
            assert not np.array_equal(other, ref), f"{w}x{h} -> {size}"


def test_vertical_first_rule():
    # Pillow 13: vertical first when the height shrinks by more than twice the width's shrink.
    assert vertical_first((100, 100), (60, 19), by_size=True)  # 81 > 2 * 40
    assert not vertical_first((100, 100), (60, 20), by_size=True)  # 80 == 2 * 40: horizontal first
    assert vertical_first((60, 60), (200, 59), by_size=True)  # the width grows, the height shrinks
    assert not vertical_first((60, 60), (200, 61), by_size=True)  # both grow
    assert not vertical_first((100, 100), (100, 10), by_size=True)  # one pass only
    assert not vertical_first((100, 100), (60, 19), by_size=False)  # Pillow <= 12
    assert gpu_resize.PILLOW_ORDERS_PASSES == (int(PIL.__version__.split(".")[0]) >= 13)


def test_device_path_does_not_call_pil_resize(monkeypatch):
    cfg = PreprocessorConfig(in_token_limit=300)
    host = ImageProcessor(cfg)(random_image(500, 380, seed=1))  # downscale and pad-up, in PIL

    def refuse(*args, **kwargs):
        raise AssertionError("PIL resize called on the device path")

    monkeypatch.setattr(Image.Image, "resize", refuse)
    dev = ImageProcessor(cfg, resize_device="cpu")(random_image(500, 380, seed=1))
    assert torch.equal(host.rgb, dev.rgb)


def test_bad_arguments():
    with pytest.raises(ValueError):
        resize_bicubic(torch.zeros(4, 4, 3), (2, 2))  # float, not uint8
    with pytest.raises(ValueError):
        resize_bicubic(torch.zeros(4, 4, 3, dtype=torch.uint8), (0, 2))


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernels in the gpu tests")
def test_interp_triton_resize_equals_pil():
    rs = np.random.RandomState(3)
    for w, h, size in [(30, 20, (56, 28)), (17, 45, (28, 56)), (40, 33, (20, 33)), (28, 28, (28, 14)),
                       (12, 60, (10, 30)), (50, 14, (9, 5))]:  # (12, 60): vertical pass first on Pillow 13
        arr = random_pixels(rs, w, h)
        t = torch.from_numpy(arr)
        assert gpu_resize._use_triton(t)
        np.testing.assert_array_equal(resize_bicubic(t, size).numpy(), pil_resize(arr, size), err_msg=f"{w}x{h}")


@pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernels in the gpu tests")
def test_interp_triton_batched_rgbx_resize_equals_pil():
    """The kernel on a batch of RGBX images, keeping RGB (the first pass skips the pad byte):
    each image equals PIL's resize of its RGB pixels, in either pass order."""
    rs = np.random.RandomState(5)
    for w, h, size in [(30, 20, (56, 28)), (12, 60, (10, 30)), (28, 28, (28, 28))]:
        arrs = [random_pixels(rs, w, h) for _ in range(2)]
        rgbx = torch.from_numpy(np.stack([np.concatenate([a, rs.randint(0, 256, (h, w, 1), dtype=np.uint8)], 2)
                                          for a in arrs]))
        out = resize_bicubic(rgbx, size, channels=3)
        assert out.shape == (2, size[1], size[0], 3) and out.is_contiguous()
        for a, o in zip(arrs, out):
            np.testing.assert_array_equal(o.numpy(), pil_resize(a, size), err_msg=f"{w}x{h}")


def test_pil_rgbx_view_is_pils_pixels():
    """The zero-copy view of PIL's RGBX memory holds the image's pixels (pad byte aside); images
    Pillow cannot export in one block (over 16 MB) or modes other than RGB give None."""
    from graphrt.processor import host_pixels, pil_rgbx

    rs = np.random.RandomState(4)
    for w, h in [(640, 480), (1, 1), (1, 37), (333, 129), (2000, 1999)]:  # 2000x1999x4 < 16 MB
        image = Image.fromarray(random_pixels(rs, w, h))
        with pil_rgbx(image) as rgbx:
            assert rgbx is not None, (w, h)
            assert rgbx.shape == (h, w, 4)
            assert torch.equal(rgbx[..., :3], host_pixels(image)), (w, h)
    with pil_rgbx(Image.new("RGB", (2100, 2100))) as rgbx:  # 17.6 MB: two blocks
        assert rgbx is None
    with pil_rgbx(Image.new("L", (64, 64))) as rgbx:
        assert rgbx is None


@pytest.mark.parametrize("device", devices())
def test_processor_device_path_without_and_with_rgbx_export(device, monkeypatch):
    """The device path gives PIL's pixels whether it reads PIL's memory directly or packs a copy."""
    from graphrt import processor

    cfg = PreprocessorConfig(in_token_limit=300)
    host, dev = ImageProcessor(cfg), ImageProcessor(cfg, resize_device=device)
    images = [random_image(*size, seed=i) for i, size in enumerate([(640, 480), (56, 56), (97, 301), (2100, 2100)])]
    direct = [dev(im).rgb.cpu() for im in images]

    @contextlib.contextmanager
    def no_export(image):
        yield None

    monkeypatch.setattr(processor, "pil_rgbx", no_export)
    packed = [dev(im).rgb.cpu() for im in images]
    for im, a, b in zip(images, direct, packed):
        ref = host(im).rgb
        assert torch.equal(a, ref) and torch.equal(b, ref), im.size


@pytest.mark.parametrize("device", devices())
def test_batched_resize_equals_each_image_and_pil(device):
    """A batch of equal-size images resizes in the same launches as one image, each image exactly
    as alone (and as PIL): up, down, one side down and one up, the vertical-first order of
    Pillow 13, a strip, a batch of one."""
    rs = np.random.RandomState(21)
    for (w, h), size, k in [((640, 480), (644, 504), 5), ((300, 200), (140, 84), 3), ((97, 301), (112, 140), 4),
                            ((60, 300), (56, 60), 3), ((640, 480), (644, 504), 1), ((1, 37), (28, 56), 2)]:
        arrs = [random_pixels(rs, w, h) for _ in range(k)]
        batch = torch.from_numpy(np.stack(arrs)).to(device)
        out = resize_bicubic(batch, size)
        assert out.shape == (k, size[1], size[0], 3)
        pad = torch.from_numpy(rs.randint(0, 256, (k, h, w, 1), dtype=np.uint8)).to(device)
        assert torch.equal(resize_bicubic(torch.cat([batch, pad], 3), size, channels=3), out)  # RGBX read as RGB
        for i, arr in enumerate(arrs):
            alone = resize_bicubic(torch.from_numpy(arr).to(device), size)
            assert torch.equal(out[i], alone), ((w, h), size, i)
            np.testing.assert_array_equal(out[i].cpu().numpy(), pil_resize(arr, size), err_msg=f"{(w, h)} -> {size}")


@pytest.mark.parametrize("rgbx", [True, False], ids=["rgbx", "packed"])
@pytest.mark.parametrize("device", devices())
def test_process_loaded_equals_one_by_one_and_pil(device, rgbx, monkeypatch):
    """process_loaded resizes equal-size images together (one rescale_many_on_device per size,
    whatever the order of the list) and gives every image PIL's pixels, bit for bit, as the
    processor gives it alone; an image too large for the position table fails in its own place."""
    from graphrt import processor

    if not rgbx:
        @contextlib.contextmanager
        def no_export(image):
            yield None

        monkeypatch.setattr(processor, "pil_rgbx", no_export)
    cfg = PreprocessorConfig(in_token_limit=300)
    host, dev = ImageProcessor(cfg), ImageProcessor(cfg, resize_device=device)
    sizes = [(640, 480), (56, 56), (640, 480), (97, 301), (640, 480), (56, 56), (300, 260)]
    images = [random_image(*size, seed=i) for i, size in enumerate(sizes)]
    too_large = Image.new("RGB", (14 * 512, 10))  # no whole patch row: never capped, 512 columns
    images.insert(3, too_large)
    calls = []
    many = ImageProcessor.rescale_many_on_device
    monkeypatch.setattr(ImageProcessor, "rescale_many_on_device",
                        lambda self, ims, d: calls.append(len(ims)) or many(self, ims, d))
    out = dev.process_loaded([processor.load_image(im) for im in images])
    assert sorted(calls) == [1, 1, 2, 3], calls  # one call per size: 3x 640x480, 2x 56x56, two alone
    assert isinstance(out[3], processor.InputError) and "position table" in str(out[3])
    for im, got in zip(images, out):
        if im is too_large:
            continue
        ref = host(im)
        assert got.rgb.device.type == torch.device(device).type
        assert torch.equal(got.rgb.cpu(), ref.rgb), im.size
        assert (got.grid, got.size, got.mean, got.std) == (ref.grid, ref.size, ref.mean, ref.std)
        assert torch.equal(dev(im).rgb.cpu(), ref.rgb), im.size  # one image alone: the same


@pytest.mark.gpu
def test_non_blocking_uploads_keep_each_batch_its_pixels():
    """Pageable non-blocking uploads: the views are released right after each copy returns, and
    batches queued back to back (before any synchronization) keep PIL's pixels each."""
    cfg = PreprocessorConfig(in_token_limit=300)
    host, dev = ImageProcessor(cfg), ImageProcessor(cfg, resize_device="cuda")
    batches = [[random_image(120, 90, seed=10 * b + i) for i in range(3)] for b in range(3)]
    outs = [dev.process_loaded(images) for images in batches]
    torch.cuda.synchronize()
    for images, out in zip(batches, outs):
        for im, got in zip(images, out):
            assert torch.equal(got.rgb.cpu(), host(im).rgb), im.size

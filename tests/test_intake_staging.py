"""Host pixels staged through the pinned ring (graphrt/host_staging.py) give exactly what the
pageable path gives: the same bytes per image for any batch size, chunking over the blocks and
row pieces over the threads; resized frames equal PIL's; a batch never overwrites a block whose
upload is still queued (GPU test: the upload held behind a long kernel); images too large for a
block fall back to the pageable path; the engine's tokens are equal with the option on and off.
CPU tests run the same code with plain blocks and synchronous copies."""

from __future__ import annotations

import pytest
import torch

from graphrt import EngineOptions, OptionError, gpu_resize, host_staging
from graphrt.config import PreprocessorConfig
from graphrt.host_staging import PinnedStaging
from graphrt.processor import ImageProcessor, host_pixels, pil_rgbx

from conftest import random_image

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def stage_small_batches(monkeypatch):
    monkeypatch.setattr(host_staging, "MIN_STAGE_BYTES", 0)  # test frames are small


@pytest.fixture(autouse=True)
def torch_resize_on_cpu(monkeypatch):
    # CPU tensors take gpu_resize's int32 torch path (the interpreter is slow and not thread-safe).
    monkeypatch.setattr(gpu_resize, "_use_triton", lambda x, use=gpu_resize._use_triton: x.is_cuda and use(x))


def frames(n: int, h: int, w: int, c: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, c), dtype=torch.uint8, generator=g) for _ in range(n)]


@pytest.mark.parametrize("n, slot_images, slots, threads", [
    (1, 1, 1, 1), (1, 3, 2, 4), (5, 2, 2, 3), (7, 1, 3, 2), (32, 13, 4, 8), (9, 4, 1, 1)])
def test_upload_equals_stack(monkeypatch, n, slot_images, slots, threads):
    """Every image's bytes land in its own row of the batch, whatever the chunking (images per
    block, blocks reused within one call) and the row pieces per thread."""
    monkeypatch.setattr(host_staging, "MIN_PIECE_BYTES", 64)  # pieces even for small test frames
    views = frames(n, 12, 10, seed=n)
    staging = PinnedStaging("cpu", threads, slot_bytes=slot_images * views[0].numel() + 5, slots=slots)
    for _ in range(2):  # a second call reuses the blocks
        assert torch.equal(staging.upload(views), torch.stack(views))
    staging.close()


def test_shares_span_images_and_keep_bytes(monkeypatch):
    """A chunk's bytes cut into one share per thread, shares crossing image boundaries (3 images
    over 4 threads) and one image cut in four (the B=1 case): every byte once, in place."""
    monkeypatch.setattr(host_staging, "MIN_PIECE_BYTES", 100)
    for n in (3, 1):
        seen = []
        staging = PinnedStaging("cpu", 4, slot_bytes=1 << 16)
        staging._start()
        submit = staging._pool.submit
        monkeypatch.setattr(staging._pool, "submit", lambda fn, segs: seen.append(segs) or submit(fn, segs))
        views = frames(n, 13, 9, seed=n)
        assert torch.equal(staging.upload(views), torch.stack(views))
        assert len(seen) == 4 and sum(b for segs in seen for _, _, b in segs) == n * 13 * 9 * 4
        assert (n == 1) == all(len(segs) == 1 for segs in seen)
        staging.close()


def test_small_batches_and_strided_views(monkeypatch):
    """Below MIN_STAGE_BYTES the processor keeps the pageable path; a strided view is packed first."""
    monkeypatch.setattr(host_staging, "MIN_STAGE_BYTES", 1000)
    staging = PinnedStaging("cpu", 2, slot_bytes=1 << 16)
    assert not staging.wants(frames(1, 10, 10, c=3)) and staging.wants(frames(1, 20, 20))
    strided = [f[:, ::2] for f in frames(3, 8, 12)]
    assert torch.equal(staging.upload(strided), torch.stack(strided))
    staging.close()


def test_upload_refuses_mixed_or_large():
    staging = PinnedStaging("cpu", 2, slot_bytes=1000)
    with pytest.raises(ValueError, match="one shape"):
        staging.upload(frames(1, 4, 4) + frames(1, 4, 5))
    big = frames(1, 20, 20)  # 1600 bytes
    assert not staging.fits(big[0])
    with pytest.raises(ValueError, match="does not fit"):
        staging.upload(big)
    with pytest.raises(ValueError, match=">= 1"):
        PinnedStaging("cpu", 0)


def test_processor_with_staging_equals_pageable_and_pil(monkeypatch):
    """process_loaded through the staging (CPU 'device') = without it = PIL, bit for bit; an
    image too large for a block takes the pageable path and still equals PIL."""
    cfg = PreprocessorConfig(in_token_limit=120)
    host = ImageProcessor(cfg)
    staging = PinnedStaging("cpu", 3, slot_bytes=2 * 100 * 80 * 4, slots=2)
    plain = ImageProcessor(cfg, resize_device="cpu")
    staged = ImageProcessor(cfg, resize_device="cpu", staging=staging)
    images = [random_image(100, 80, seed=k) for k in range(5)] + [random_image(300, 200, seed=9)]
    calls = []
    upload = staging.upload
    monkeypatch.setattr(staging, "upload", lambda views: calls.append(len(views)) or upload(views))
    got, ref = staged.process_loaded(images), plain.process_loaded(images)
    assert calls == [5]  # the large one did not fit a block
    for im, a, b in zip(images, got, ref):
        assert torch.equal(a.rgb, b.rgb) and torch.equal(a.rgb, host(im).rgb), im.size
    staging.close()


def test_views_of_pil_memory_and_packed_copies_both_stage():
    """The RGBX view of PIL's memory and host_pixels' packed copy both go through the blocks."""
    im = random_image(64, 48, seed=3)
    staging = PinnedStaging("cpu", 2, slot_bytes=64 * 48 * 4)
    with pil_rgbx(im) as view:
        if view is not None:
            assert torch.equal(staging.upload([view])[0][..., :3], host_pixels(im))
    assert torch.equal(staging.upload([host_pixels(im)])[0], host_pixels(im))
    staging.close()


def test_pinned_intake_option_is_checked():
    with pytest.raises(OptionError, match="pinned_intake"):
        EngineOptions(pinned_intake=1)
    assert EngineOptions().pinned_intake is True


@pytest.mark.gpu
@gpu
def test_block_not_overwritten_while_its_upload_is_queued():
    """Two blocks, one image each; the first batch's uploads are queued behind a long kernel, then
    a second batch takes the same blocks: the wait on each block's event keeps the first batch's
    pixels (without it the second batch's bytes would be uploaded twice)."""
    views_a, views_b = frames(4, 64, 64, seed=1), frames(4, 64, 64, seed=2)
    staging = PinnedStaging("cuda", 2, slot_bytes=64 * 64 * 4, slots=2)
    staging.upload(views_a[:1])  # blocks allocated and warm
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time ahead of the uploads
    a = staging.upload(views_a)
    b = staging.upload(views_b)
    torch.cuda.synchronize()
    assert torch.equal(a.cpu(), torch.stack(views_a))
    assert torch.equal(b.cpu(), torch.stack(views_b))
    staging.close()


@pytest.mark.gpu
@gpu
def test_gpu_processor_staged_equals_pil():
    cfg = PreprocessorConfig(in_token_limit=300)
    host = ImageProcessor(cfg)
    staged = ImageProcessor(cfg, resize_device="cuda", staging=PinnedStaging("cuda", 4, slot_bytes=3 * 120 * 90 * 4))
    batches = [[random_image(120, 90, seed=10 * b + i) for i in range(7)] for b in range(3)]
    outs = [staged.process_loaded(images) for images in batches]  # queued back to back
    torch.cuda.synchronize()
    for images, out in zip(batches, outs):
        for im, got in zip(images, out):
            assert torch.equal(got.rgb.cpu(), host(im).rgb), im.size

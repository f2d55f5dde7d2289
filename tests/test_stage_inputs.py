"""StageInputs.fill_vision writes every image's slot of the vision inputs (patch-ordered pixels,
RoPE cos/sin, position rows, merge order, lengths) exactly as one image at a time would, for
batches mixing grids in runs (the fill copies the per-grid tables once per run of equal grids)."""

from __future__ import annotations

import torch

from capture import GraphRuntime
from graphrt.processor import ImageProcessor, patchify

from conftest import random_image
from test_static_path import BUCKETS, GEN

P = 256  # the bucket's patches per slot


def expected_slot(runtime, image):
    """What slot i must hold for `image`, from the per-grid tables directly."""
    cos, sin, order, pos = runtime.inputs.grid_geometry(image.grid)
    pixels = patchify(image.rgb, image.grid).reshape(image.num_patches, -1)
    return pixels, cos, sin, pos, torch.as_tensor(order)


def test_fill_vision_equals_per_image_tables(tiny_engine):
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, use_graphs=False)
    proc = ImageProcessor(tiny_engine.preprocessor_config)
    # grids (rows, cols) of 14-px patches: runs of equal grids, singles, and a repeat after a break
    sizes = [(112, 84), (112, 84), (56, 140), (112, 84), (84, 84), (84, 84), (84, 84), (140, 56)]
    images = [proc(random_image(w, h, seed=k)) for k, (w, h) in enumerate(sizes)]
    assert all(im.num_patches <= P for im in images) and len({im.grid for im in images}) == 4
    pipe = runtime.pipe
    for t in (pipe.cos, pipe.sin, pipe.pos, pipe.pixels_u8):
        t.fill_(7)  # stale values from an earlier batch
    runtime.inputs.fill_vision(images, len(images), P)
    check_slots(runtime, images, len(images), P)


def check_slots(runtime, images, bv, p):
    pipe = runtime.pipe
    merge = pipe.merge_index.cpu()
    for i, im in enumerate(images):
        n, start = im.num_patches, i * p
        pixels, cos, sin, pos, order = expected_slot(runtime, im)
        assert torch.equal(pipe.pixels_u8[start : start + n].cpu(), pixels), i
        assert torch.equal(pipe.cos[start : start + n].cpu(), cos.cpu()), i
        assert torch.equal(pipe.sin[start : start + n].cpu(), sin.cpu()), i
        assert torch.equal(pipe.pos[start : start + n].cpu(), pos.cpu()), i
        assert torch.equal(merge[start : start + n], order + start), i
        assert torch.equal(merge[start + n : start + p], torch.full((p - n,), start)), i
        assert int(pipe.v_seqused[i]) == n
    for i in range(len(images), bv):
        assert torch.equal(merge[i * p : (i + 1) * p], torch.full((p,), i * p)) and int(pipe.v_seqused[i]) == p


def test_fill_vision_rewrites_only_what_changed_and_stays_exact(tiny_engine):
    """Consecutive fills skip the tables and lengths their slots already hold (a robot loop's
    equal frames), gather frames resized together in one run, and still leave every slot exactly
    as the per-image tables say: after equal calls, grids moving between slots, another slot
    width, a larger batch bucket, and the pipeline's reset_state (warm-up values)."""
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, use_graphs=False)
    host = ImageProcessor(tiny_engine.preprocessor_config)
    dev = ImageProcessor(tiny_engine.preprocessor_config, resize_device="cpu")  # frames of one size: one batch tensor
    frames = dev.process_loaded([random_image(112, 84, seed=k) for k in range(3)])
    assert frames[1].rgb.data_ptr() == frames[0].rgb.data_ptr() + frames[0].rgb.numel()  # back to back
    a, b = host(random_image(56, 140, seed=7)), host(random_image(84, 84, seed=8))
    big = host(random_image(168, 168, seed=9))  # 144 patches: its slot 0 at P covers slot 1 at 128
    assert 128 < big.num_patches <= P
    writes = []
    copy_ = torch.Tensor.copy_
    calls = [(frames, 3, P), (frames, 3, P), (frames, 4, P), ([b] + frames[:2], 4, P), ([b] + frames[:2], 4, P),
             (frames[1:] + [a], 3, 128), (frames, 3, P), ("reset", 0, 0), (frames, 3, P),
             (frames[:2], 2, 128), ([big], 1, P), ([b, frames[1]], 2, 128)]
    for n, (images, bv, p) in enumerate(calls):
        if isinstance(images, str):
            runtime.pipe.reset_state()
            continue
        writes.clear()
        torch.Tensor.copy_ = lambda self, src, *a, **k: writes.append(self.shape) or copy_(self, src, *a, **k)
        try:
            runtime.inputs.fill_vision(images, bv, p)
        finally:
            torch.Tensor.copy_ = copy_
        check_slots(runtime, images, bv, p)
        if n in (1, 6):  # the same frames as the call before (6: as the first ones, after others)
            assert len(writes) == (1 if n == 1 else 6), writes  # 1: the frames' one gathered run
        if n in (0, 8):  # all rewritten: pixels, 3 tables, 2 length buffers (0: the normalization's 2 too)
            assert len(writes) == (8 if n == 0 else 6), writes

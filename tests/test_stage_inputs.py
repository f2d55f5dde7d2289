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
    merge = pipe.merge_index.cpu()
    for i, im in enumerate(images):
        n, start = im.num_patches, i * P
        pixels, cos, sin, pos, order = expected_slot(runtime, im)
        assert torch.equal(pipe.pixels_u8[start : start + n].cpu(), pixels), i
        assert torch.equal(pipe.cos[start : start + n].cpu(), cos.cpu()), i
        assert torch.equal(pipe.sin[start : start + n].cpu(), sin.cpu()), i
        assert torch.equal(pipe.pos[start : start + n].cpu(), pos.cpu()), i
        assert torch.equal(merge[start : start + n], order + start), i
        assert int(pipe.v_seqused[i]) == n

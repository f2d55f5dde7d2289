"""The split intake on CUDA graphs (mid checkpoint, real widths, bf16, random weights; skipped
without a GPU): 16 images (14 of 640x480, 2 of 320x240) prepared in chunks of 4, 4 and 8, each
chunk's vision replayed ahead of the batch's admission (smaller vision buckets than the unsplit
B=16 replay), its pixels uploaded through the pinned ring on a side stream while the tower runs
the chunk before: the same tokens as the unsplit graphs and as the eager engine."""

from __future__ import annotations

import pytest

from capture import Buckets, GraphRuntime
from graphrt import Engine, GenerationConfig

from conftest import random_image

pytestmark = pytest.mark.gpu

GEN = GenerationConfig(max_new_tokens=24)
QUERIES = ["cat", "the red umbrella", "person", "car", "dog", "a bicycle", "bus", "cup"]


def test_split_graphs_equal_unsplit_and_eager(tmp_path, monkeypatch):
    from weights.synth import write_preset

    ckpt = write_preset("mid", tmp_path / "mid", device="cuda", progress=False)
    eager = Engine.from_pretrained(ckpt, device="cuda", dtype="bfloat16", progress=False, generation=GEN,
                                   graphs="off")
    sizes = [(640, 480)] * 7 + [(320, 240)] + [(640, 480)] * 7 + [(320, 240)]
    pairs = [(random_image(w, h, seed=i), QUERIES[i % len(QUERIES)]) for i, (w, h) in enumerate(sizes)]
    buckets = Buckets(batch_sizes=(1, 2, 4, 8, 16), patch_budgets=(1024, 1656), prefill_lengths=(64, 512, 640),
                      max_new_tokens=40)
    split = eager.with_options(graphs="on", strict=True, buckets=buckets, memory_gb=None, split_intake=4)
    whole = split.with_options(split_intake=0)
    ahead, encode = [], GraphRuntime.encode_ahead
    monkeypatch.setattr(GraphRuntime, "encode_ahead",
                        lambda self, images, first: ahead.append(len(images)) or encode(self, images, first))
    want = [r.tokens for r in eager.locate_batch(pairs)]
    unsplit = [r.tokens for r in whole.locate_batch(pairs)]
    assert ahead == []
    for _ in range(2):  # twice: the second call reuses the ring's blocks and the side stream's memory
        got = [r.tokens for r in split.locate_batch(pairs)]
        assert got == unsplit
    assert ahead == [4, 4, 8] * 2
    assert split.processor.staging is not None and split.processor.staging.side_stream
    assert unsplit == want

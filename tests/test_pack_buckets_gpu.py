"""640x480 images on CUDA graphs whose slots leave no padding (capture/buckets.py's 1,656-patch
slot, a prefill length of exactly prompt + window): the same tokens as the eager engine, batched
and single (mid checkpoint, real widths, bf16, random weights; skipped without a GPU)."""

from __future__ import annotations

import pytest

from capture import Buckets
from graphrt import Engine, GenerationConfig

from conftest import random_image
from test_pack_buckets import segment

pytestmark = pytest.mark.gpu

GEN = GenerationConfig(max_new_tokens=24)
QUERIES = ["cat", "the red umbrella", "person", "a very long description of a small object near the door"]


def test_unpadded_graphs_equal_eager(tmp_path):
    from weights.synth import write_preset

    ckpt = write_preset("mid", tmp_path / "mid", device="cuda", progress=False)
    eager = Engine.from_pretrained(ckpt, device="cuda", dtype="bfloat16", progress=False, generation=GEN,
                                   graphs="off")
    pairs = [(random_image(640, 480, seed=i), q) for i, q in enumerate(QUERIES)]
    lengths = sorted({segment(len(eager.prompts.build(q, 414).ids)) for q in QUERIES})
    # the longest query alone in a larger slot, the three short ones in a slot of exactly their length
    buckets = Buckets(batch_sizes=(1, 4), patch_budgets=(1656,), prefill_lengths=(lengths[-2], lengths[-1] + 16),
                      max_new_tokens=40)
    graphs = eager.with_options(graphs="on", strict=True, buckets=buckets, memory_gb=None)
    want = [r.tokens for r in eager.locate_batch(pairs)]
    assert [r.tokens for r in graphs.locate_batch(pairs)] == want
    assert [graphs.locate(*p).tokens for p in pairs] == want

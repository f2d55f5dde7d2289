"""Large images on CUDA graphs (issue 14) against the eager generator, token for token, on the tiny
(fp16) and mid (bf16, real widths) checkpoints: a 2240x2240 image (25,600 patches; mid only), a
1080p frame, a 1600x1200 and a 640x480 image in one batch, admitted in chunks that each fit one vision replay. Replays
must equal the same bodies uncaptured exactly; against eager a row may differ only at a provable
near-tie (as in test_graphs_gpu)."""

from __future__ import annotations

import pytest

from capture import Buckets, GraphRuntime
from graphrt import GenerationConfig

from conftest import random_image
from test_graphs_gpu import assert_uncaptured_and_eager_agree, mid_gpu, tiny_gpu  # noqa: F401 (fixtures)
from test_static_path import prepare

pytestmark = pytest.mark.gpu

GEN = GenerationConfig(max_new_tokens=12)
BUCKETS = Buckets(batch_sizes=(1, 2, 4), patch_budgets=(1680, 10816, 26676), prefill_lengths=(64, 480, 2816, 6944),
                  max_new_tokens=16, vision_budget=26676, prefill_budget=6944)
BIG, FRAME, SMALL = random_image(2240, 2240, seed=7), random_image(1920, 1080, seed=8), random_image(640, 480, seed=9)
WIDE = random_image(1600, 1200, seed=10)
# The tiny checkpoint's context (4096 positions) is too short for a 2240x2240 image (6,400 image tokens).
CASES = {"tiny": ([(FRAME, "person</c>car"), (WIDE, "dog"), (SMALL, "cat"), (FRAME, "a red cup on the table")],
                  (10764, 9976), 1),
         "mid": ([(BIG, "person</c>car"), (FRAME, "dog"), (SMALL, "cat"), (BIG, "a red cup on the table")],
                 (25600, 10764), 2)}  # mid: BIG alone, then FRAME and SMALL


@pytest.mark.parametrize("which", ["tiny", "mid"])
def test_large_images_on_graphs_equal_eager(request, which):
    engine = request.getfixturevalue(f"{which}_gpu")
    pairs, patches, chunks = CASES[which]
    batch = prepare(engine, pairs)
    assert (batch.images[0].num_patches, batch.images[1].num_patches) == patches
    graphs = GraphRuntime(engine.model, BUCKETS, GEN, attention="torch-fa2", strict=True)
    graphs.warmup(progress=False)
    assert graphs.unsupported(batch, GEN) is None
    replayed = [r.tokens for r in graphs.run(batch, GEN)]
    assert graphs.last_timings_ms["admission_chunks"] == chunks
    assert_uncaptured_and_eager_agree(engine, BUCKETS, batch, GEN, replayed, which)

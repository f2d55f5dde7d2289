"""Images beyond the small buckets on the static path (issue 14), against the eager path token for token.

On CPU the stage bodies run uncaptured (emulated kernel, fp32, tiny checkpoint). The bucket ladder
is scaled down so that the same code paths run fast: a "large" image of 1024 patches fits only at
batch 1 (vision_budget 1024), so a batch of two large images is admitted in two chunks, and
images and prompts of different buckets take separate vision and prefill replays.
"""

from __future__ import annotations

import pytest

from capture import Buckets, GraphRuntime
from graphrt import GenerationConfig

from conftest import random_image
from test_static_path import eager_tokens, prepare, with_rows

GEN = GenerationConfig(max_new_tokens=18)
SMALL_BUDGET = Buckets(batch_sizes=(1, 2, 4), patch_budgets=(64, 128, 1024), prefill_lengths=(64, 96, 224, 448),
                       max_new_tokens=24, vision_budget=1024, prefill_budget=896)
BIG1, BIG2 = random_image(448, 448, seed=4), random_image(440, 430, seed=5)  # 1024 and 992 patches
SMALL = random_image(100, 90, seed=6)


def run_static(engine, pairs, buckets=SMALL_BUDGET, share_prefix=True):
    batch = prepare(engine, pairs)
    runtime = GraphRuntime(engine.model, buckets, GEN, attention="emulated", use_graphs=False)
    assert runtime.unsupported(batch, GEN) is None
    got = [r.tokens for r in runtime.run(batch, GEN, share_prefix=share_prefix)]
    return got, eager_tokens(engine, batch, GEN), runtime.last_timings_ms


def test_budget_keys():
    b = SMALL_BUDGET
    assert b.vision_keys() == [(1, 64), (1, 128), (1, 1024), (2, 64), (2, 128), (4, 64), (4, 128)]
    assert (1, 448) in b.prefill_keys() and (2, 448) in b.prefill_keys() and (4, 448) not in b.prefill_keys()
    assert b.vision_capacity == 1024 and b.prefill_capacity == 896
    assert b.fit_vision(1, 900) == (1, 1024) and b.fit_vision(2, 900) is None and b.fit_vision(3, 100) == (4, 128)
    with pytest.raises(ValueError, match="vision_budget"):
        Buckets(patch_budgets=(64, 1024), vision_budget=512)


def test_one_large_image_equals_eager(tiny_engine):
    got, want, laps = run_static(tiny_engine, [(BIG1, "person</c>car")])
    assert got == want
    assert laps["bucket_vision"] == (1, 1024) and laps["admission_chunks"] == 1


@pytest.mark.parametrize("share_prefix", [True, False])
def test_large_and_small_images_in_chunks_equal_eager(tiny_engine, share_prefix):
    pairs = [(BIG1, "cat"), (SMALL, "a red car"), (BIG2, "dog"), (BIG1, "the tallest person in the picture")]
    got, want, laps = run_static(tiny_engine, pairs, share_prefix=share_prefix)
    assert got == want
    assert len({tuple(t) for t in got}) > 1  # the rows answer differently (their images and queries reach them)
    # no two of the images fit one vision replay (1024 patches): three admission chunks (BIG1 with both its rows)
    assert laps["admission_chunks"] == 3 and laps["vision_passes"] == 3
    assert laps["prefill_passes"] >= 3


def test_two_vision_passes_in_one_admission_equal_eager(tiny_engine):
    """A 484-patch image (bucket 1024) and a small one (bucket 64) in one admission: two vision
    replays, the first one's features moved to the feature rows while the second runs."""
    medium = random_image(300, 300, seed=12)
    got, want, laps = run_static(tiny_engine, [(medium, "cat"), (SMALL, "dog"), (medium, "a red car")])
    assert got == want
    assert laps["admission_chunks"] == 1 and laps["vision_passes"] == 2 and laps["bucket_vision"] == (1, 1024)


def test_default_buckets_take_every_image_the_processor_accepts(tiny_engine):
    """The default buckets reach the processor's in_token_limit (25,600 patches): a 2240x2240
    image and a 1080p frame fit, at batch 1 and beside small images, with no eager fallback."""
    runtime = GraphRuntime(tiny_engine.model, Buckets(), GEN, attention="emulated", use_graphs=False)
    limit = tiny_engine.processor.cfg.in_token_limit
    big, frame = random_image(2240, 2240), random_image(1920, 1080)
    batch = prepare(tiny_engine, [(big, "cat"), (frame, "dog"), (SMALL, "x")])
    assert batch.images[0].num_patches == limit
    assert runtime.unsupported(batch, GEN) is None
    assert len(batch.rows[0].prompt.ids) - 1 <= runtime.buckets.max_prefill
    huge = prepare(tiny_engine, [(random_image(4000, 4000), "cat")])  # capped by the processor
    assert runtime.unsupported(huge, GEN) is None


def test_largest_bucket_is_the_most_the_processor_makes(tiny_engine):
    """The processor caps whole patches at in_token_limit, then rounds each side up to a multiple
    of 28, so an image may exceed the limit (4000x4000 -> 26,244 patches). Every width in patches,
    with the largest height the cap allows and the largest pixel remainder: the maximum is the
    default buckets' largest patch size."""
    from graphrt.processor import MAX_GRID_SIDE

    proc, p = tiny_engine.processor, 14
    most = 0
    for wp in range(1, MAX_GRID_SIDE):
        hp = min(proc.cfg.in_token_limit // wp, MAX_GRID_SIDE - 1)
        w, h = proc.target_size(wp * p + p - 1, hp * p + p - 1)
        if w // p < MAX_GRID_SIDE and h // p < MAX_GRID_SIDE:
            most = max(most, (w // p) * (h // p))
    assert most == Buckets().max_patches


def test_scheduler_admits_by_token_budget(tiny_engine):
    """Continuous batching over large and small images: each admission holds at most one vision
    replay's patches (1024 here), so the large images are admitted alone and the small ones
    together; every answer equals the job run alone."""
    from capture.scheduler import run_jobs
    from graphrt.request import ImageJob, Row

    runtime = GraphRuntime(tiny_engine.model, SMALL_BUDGET, GEN, attention="emulated", use_graphs=False)
    cases = [(BIG1, "cat", 6), (SMALL, "dog", 3), (random_image(90, 100, seed=11), "x", 3), (BIG2, "car", 5)]
    expected, jobs = [], []
    for i, (image, query, cap) in enumerate(cases):
        batch = prepare(tiny_engine, [(image, query)])
        expected.append(runtime.run(with_rows(batch, max_new_tokens=[cap]), GEN)[0].tokens)
        jobs.append(ImageJob(batch.images[0], [Row(i, query, "detect", batch.rows[0].prompt, max_new_tokens=cap)]))
    admissions = []
    admit = runtime.admit
    runtime.admit = lambda batch, *a, **k: admissions.append(sum(im.num_patches for im in batch.images)) or admit(batch, *a, **k)
    done = list(run_jobs(runtime, jobs, GEN, batch=4))
    assert sorted(j.rows[0].index for j in done) == [0, 1, 2, 3]
    for job in done:
        assert job.results[0].tokens == expected[job.rows[0].index]
    assert max(admissions) <= SMALL_BUDGET.vision_capacity
    assert len(admissions) == 3  # BIG1; the two small images together; BIG2

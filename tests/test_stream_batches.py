"""A stream (more pairs than one batch) prepares its images batch by batch on a thread of its own
(batch_intake, the default) and the scheduler admits whole batches: the same answers as image by
image on the pool, batches of at most max_batch rows in pair order, groups never split."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from graphrt import gpu_resize
from graphrt.engine import Engine
from graphrt.intake import batch_groups
from graphrt.prefetch import NOT_READY, Flattened, Prefetcher
from graphrt.processor import ImageProcessor

from conftest import random_image


@pytest.fixture(autouse=True)
def torch_resize_on_cpu(monkeypatch):
    # the int32 torch resize on CPU tensors (the interpreter is slow and not thread-safe)
    monkeypatch.setattr(gpu_resize, "_use_triton", lambda x, use=gpu_resize._use_triton: x.is_cuda and use(x))


def test_batch_groups_cut_by_rows_in_order():
    groups = [[0], [1, 2], [3], [4, 5, 6], [7], [8, 9, 10, 11, 12], [13]]
    batches = batch_groups(groups, 4)
    assert batches == [[[0], [1, 2], [3]], [[4, 5, 6], [7]], [[8, 9, 10, 11, 12]], [[13]]]
    assert [g for b in batches for g in b] == groups  # every group once, in order, none split
    assert batch_groups([], 4) == []
    assert batch_groups([[0], [1]], 1) == [[[0]], [[1]]]


def test_flattened_gives_items_of_ready_batches():
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)

    def make(batch):
        if batch == "slow":
            gate.wait(10)
            return ["s1", "s2"]
        return list(batch)

    with Flattened(Prefetcher(make, ["ab", "", "slow", "c"], pool, ahead=4)) as items:
        assert items.wait() == "a"
        assert items.poll() == "b"  # the rest of a ready batch, without waiting
        assert items.poll() is NOT_READY  # the empty batch is skipped; "slow" is not ready
        gate.set()
        assert [items.wait(), items.wait(), items.wait()] == ["s1", "s2", "c"]
        assert items.wait() is None and items.poll() is None
    pool.shutdown()


def test_stream_prepares_whole_batches_with_the_same_answers(tiny_engine, monkeypatch):
    images = [random_image(60 + 4 * (i % 3), 50, seed=i) for i in range(9)]
    pairs = [(images[i % 9], q) for i, q in enumerate(["cat", "dog", "car", "person", "bus", "cat</c>dog"] * 3)]
    seen = []
    prepare = Engine._prepare_batch

    def spy(self, intake, pairs_, groups, *rest):
        seen.append((threading.current_thread().name, [list(g) for g in groups]))
        return prepare(self, intake, pairs_, groups, *rest)

    monkeypatch.setattr(Engine, "_prepare_batch", spy)
    answers = {}
    for on in (True, False):
        engine = tiny_engine.with_options(batch_intake=on, eager_batch=4, preprocess_workers=2)
        engine.processor = ImageProcessor(engine.preprocessor_config, engine.options.max_image_pixels,
                                          resize_device="cpu")
        seen.clear()
        answers[on] = engine.locate_batch(pairs, max_new_tokens=6)
        if on:
            # images 0-8 twice (pairs 9-17 repeat them): one group per image of up to 4 rows
            groups = [g for _, batch in seen for g in batch]
            assert sorted(i for g in groups for i in g) == list(range(len(pairs)))
            assert all(sum(map(len, batch)) <= 4 for _, batch in seen)
            assert len(seen) == 5 and {name for name, _ in seen} == {"graphrt-batch_0"}
        else:
            assert seen == []  # image by image through Intake.prepare on the pool
    for a, b in zip(answers[True], answers[False]):
        assert (a.tokens, a.error, a.image_size, a.prompt_tokens) == (b.tokens, b.error, b.image_size, b.prompt_tokens)

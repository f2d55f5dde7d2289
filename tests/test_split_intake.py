"""The split intake (EngineOptions.split_intake): a large batch's images prepared in chunks, each
chunk's vision run ahead of the batch's admission (GraphRuntime.encode_ahead) and parked in
vision_out's feature rows, then one prefill for the whole batch. On CPU the graph runtime runs its
stage bodies directly (no timing here; tests/test_split_intake_gpu.py runs the CUDA graphs): the
chunked flow must give every image its own features (the rows the prefill reads hold exactly what
an unsplit admission puts there) and the same tokens as the unsplit flow and the eager path
(random tiny weights: the tokens mean nothing, only their equality does)."""

from __future__ import annotations

import pytest
import torch

import graphrt.engine as engine_module
from capture import Buckets, GraphRuntime
from capture.inputs import StageInputs
from graphrt import GenerationConfig, gpu_resize
from graphrt.intake import split_sizes
from graphrt.errors import OptionError

from conftest import random_image
from test_static_path import eager_tokens, prepare

GEN = GenerationConfig(max_new_tokens=12)
BUCKETS = Buckets(batch_sizes=(1, 2, 4, 8), patch_budgets=(16, 64), prefill_lengths=(64, 192), max_new_tokens=24)


@pytest.fixture(autouse=True)
def torch_resize_on_cpu(monkeypatch):
    # the device resize path on CPU tensors takes the torch ops (as tests/test_intake_batch.py)
    monkeypatch.setattr(gpu_resize, "_use_triton", lambda x, use=gpu_resize._use_triton: x.is_cuda and use(x))


def test_split_sizes():
    assert split_sizes(32, 8) == [8, 8, 16]
    assert split_sizes(32, 16) == [16, 16]
    assert split_sizes(32, 4) == [4, 4, 8, 16]
    assert split_sizes(20, 8) == [8, 8, 4]
    assert split_sizes(9, 8) == [8, 1]
    assert split_sizes(8, 8) == [8] and split_sizes(3, 8) == [3]
    for n in range(1, 70):
        for first in (1, 2, 3, 8):
            sizes = split_sizes(n, first)
            assert sum(sizes) == n and all(s >= 1 for s in sizes)
            # each chunk is at most everything before it: its host work hides under their vision
            assert all(s <= sum(sizes[:k]) for k, s in enumerate(sizes) if k)
    with pytest.raises(ValueError):
        split_sizes(4, 0)


def features_read(monkeypatch, runtime, tokens: list[int]) -> list:
    """Per prefill fill: each batch image's feature rows as the prefill reads them (vision_out at
    `image_base`, `tokens[k]` rows for image k), copied when the fill runs."""
    seen, fill = [], StageInputs.fill_prefill

    def spy(self, segments, bb, t, image_base, gen):
        if self is runtime.inputs:
            out = self.pipe.vision_out
            seen.append([out[b:b + n].clone() for b, n in zip(image_base, tokens)])
        return fill(self, segments, bb, t, image_base, gen)

    monkeypatch.setattr(StageInputs, "fill_prefill", spy)
    return seen


def test_encode_ahead_puts_each_image_in_its_own_rows(tiny_engine, monkeypatch):
    """Chunks run ahead (with an image of another size, so a chunk takes two passes and padded
    slots) give the prefill the rows an unsplit admission gives it, and the same tokens."""
    sizes = [(56, 56), (112, 56), (56, 56), (56, 112), (56, 56), (112, 112), (56, 56)]
    pairs = [(random_image(w, h, seed=10 + i), q) for i, ((w, h), q) in
             enumerate(zip(sizes, ["cat", "dog", "car", "person", "bus", "bird", "cup"]))]
    batch = prepare(tiny_engine, pairs)
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    seen = features_read(monkeypatch, runtime, [im.num_patches // 4 for im in batch.images])
    whole = [r.tokens for r in runtime.run(batch, GEN)]
    for chunks in ([2, 2, 3], [1, 6], [7]):
        at = 0
        for k, n in enumerate(chunks):
            runtime.encode_ahead(batch.images[at:at + n], first=k == 0)
            at += n
        runtime.begin()
        laps = runtime.admit(batch, list(range(len(pairs))), GEN)
        assert laps["vision_passes"] >= len(chunks)
        assert not runtime._ahead  # consumed by the admission
        runtime.decode(8)
        assert [r.tokens for r in runtime.collect(list(range(len(pairs))))] == whole, chunks
        for a, b in zip(seen[0], seen[-1]):
            assert torch.equal(a, b), chunks
    assert whole == eager_tokens(tiny_engine, batch, GEN)


def test_stale_ahead_features_are_not_read(tiny_engine):
    """Features run ahead for other images (a call that failed before its admission) are dropped:
    the next admission encodes its own images."""
    pairs = [(random_image(56, 56, seed=30 + i), q) for i, q in enumerate(["cat", "dog", "car"])]
    batch = prepare(tiny_engine, pairs)
    other = prepare(tiny_engine, [(random_image(56, 56, seed=40 + i), "x") for i in range(3)])
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    want = [r.tokens for r in runtime.run(batch, GEN)]
    runtime.encode_ahead(other.images, first=True)
    runtime.encode_ahead(batch.images[:1], first=False)  # one of this batch's, beside the stale ones
    assert [r.tokens for r in runtime.run(batch, GEN)] == want
    assert not runtime._ahead


def split_engine(tiny_engine, split: int):
    engine = tiny_engine.with_options(graphs="on", buckets=BUCKETS, max_new_tokens=12, split_intake=split)
    engine.processor.resize_device = torch.device("cpu")  # the batched (device) intake, on CPU tensors
    return engine


def test_engine_split_equals_unsplit_and_eager(tiny_engine, monkeypatch):
    """locate_batch through the chunked intake (3 chunks, a bad image and a shared image among
    them) gives the results of the unsplit intake and of the eager path; the chunks' vision ran
    ahead of the admission."""
    shared = random_image(56, 56, seed=50)
    pairs = [(random_image(56, 56, seed=51), "cat"), (shared, "dog"), (random_image(112, 56, seed=52), "car"),
             (b"not an image", "x"), (shared, "person"), (random_image(56, 56, seed=53), "bus"),
             (random_image(56, 112, seed=54), "bird"), (random_image(56, 56, seed=55), "cup")]
    split, whole = split_engine(tiny_engine, 2), split_engine(tiny_engine, 0)
    ahead, encode = [], GraphRuntime.encode_ahead
    monkeypatch.setattr(GraphRuntime, "encode_ahead",
                        lambda self, images, first: ahead.append(len(images)) or encode(self, images, first))
    got = split.locate_batch(pairs, errors="report")
    assert ahead == [2, 1, 3]  # 7 image groups (the shared image's two rows one): 2, 2 (one bad), 3
    ahead.clear()
    want = whole.locate_batch(pairs, errors="report")
    assert ahead == []
    eager = tiny_engine.with_options(max_new_tokens=12).locate_batch(pairs, errors="report")
    assert got[3].error and want[3].error
    for g, w, e in zip(got, want, eager):
        assert (g.tokens, g.error, g.image_size) == (w.tokens, w.error, w.image_size)
        assert g.tokens == e.tokens
    monkeypatch.setenv("GRAPHRT_SPLIT_INTAKE", "4")  # 7 groups: 4, 3 (one bad)
    assert [r.tokens for r in whole.locate_batch(pairs, errors="report")] == [r.tokens for r in want]
    assert ahead == [3, 3]
    ahead.clear()
    monkeypatch.setenv("GRAPHRT_SPLIT_INTAKE", "off")
    assert [r.tokens for r in split.locate_batch(pairs, errors="report")] == [r.tokens for r in want]
    assert ahead == []
    monkeypatch.setenv("GRAPHRT_SPLIT_INTAKE", "maybe")
    with pytest.raises(OptionError, match="GRAPHRT_SPLIT_INTAKE"):
        whole.locate_batch(pairs, errors="report")


def test_split_option_checked():
    for bad in ("yes", -1, True, 2.0):
        with pytest.raises(OptionError, match="split_intake"):
            engine_module.EngineOptions(split_intake=bad)

"""The engine API on CUDA graphs (skipped without a GPU): shared prefixes, the refilling
scheduler (prefill into arbitrary, non-increasing cache rows through FA2), pause/resume, and
locate / locate_batch / locate_many agreeing, all token for token on the mid checkpoint (real
widths, bf16)."""

from __future__ import annotations

import dataclasses

import pytest

from capture import Buckets, GraphRuntime
from graphrt import Engine, GenerationConfig, GenerationState
from test_engine_api import check_refills
from conftest import random_image
from test_static_path import A, B, C, prepare
from weights.synth import write_preset

pytestmark = pytest.mark.gpu

GEN = GenerationConfig(max_new_tokens=24)
BUCKETS = Buckets(batch_sizes=(1, 2, 4, 8), patch_budgets=(128, 256), prefill_lengths=(64, 192, 320),
                  max_new_tokens=40)
QUERIES = ["cat", "a red car on the left", "person</c>car", "x"]


@pytest.fixture(scope="module")
def mid_ckpt(tmp_path_factory):
    return write_preset("mid", tmp_path_factory.mktemp("mid"), device="cuda", progress=False)


@pytest.fixture(scope="module")
def graph_engine(mid_ckpt):
    return Engine.from_pretrained(mid_ckpt, device="cuda", dtype="bfloat16", buckets=BUCKETS, progress=False,
                                  generation=GEN, strict=True)


def small(img):
    return img.resize((min(img.width, 160), min(img.height, 160)))


def tokens(results):
    return [r.tokens for r in results]


def test_locate_batch_many_agree_on_graphs(graph_engine):
    a, b = small(A), small(B)
    single = [graph_engine.locate(a, q) for q in QUERIES]
    assert all(r.backend == "graphs" for r in single)
    assert tokens(graph_engine.locate_many(a, QUERIES)) == tokens(single)
    mixed = tokens(graph_engine.locate_batch([(a, QUERIES[0]), (b, "dog"), (a, QUERIES[1])]))
    assert [mixed[0], mixed[2]] == tokens(single[:2]) and mixed[1] == graph_engine.locate(b, "dog").tokens


def test_shared_prefix_equals_unshared_on_graphs(graph_engine):
    a, b = small(A), small(B)
    batch = prepare(graph_engine, [(a, q) for q in QUERIES] + [(b, "dog"), (b, "y")])
    rt = graph_engine.runtime
    shared = tokens(rt.run(batch, GEN, share_prefix=True))
    assert rt.last_timings_ms["shared_rows"] == 4
    assert tokens(rt.run(batch, GEN, share_prefix=False)) == shared


def test_scheduler_refills_on_graphs(graph_engine):
    a, b, c = small(A), small(B), small(C)
    check_refills(graph_engine, graph_engine.runtime, [(a, "cat", 3), (b, "dog", 20), (c, "a very long description", 7),
                                                       (a, "b", 1), (b, "x", 12), (c, "y", 5)])


def test_pause_resume_on_graphs(graph_engine, tmp_path):
    a, b = small(A), small(B)
    pairs = [(a, "cat"), (b, "dog"), (a, "x")]
    want = tokens(graph_engine.locate_batch(pairs))
    run = graph_engine.start(pairs)
    assert run.backend == "graphs"
    run.advance(2)
    state = run.pause()
    graph_engine.locate(small(C), "other work while paused")
    state.save(tmp_path / "state.pt")
    assert tokens(graph_engine.resume(GenerationState.load(tmp_path / "state.pt")).finish()) == want


def test_fixed_steps_on_graphs(graph_engine):
    results = graph_engine.locate_batch([(small(A), "cat"), (small(B), "dog")], fixed_steps=3)
    assert [r.steps for r in results] == [3, 3] and {r.stop_reason for r in results} == {"fixed_steps"}


def test_scheduled_stream_equals_single_batches(mid_ckpt):
    """More rows than the largest bucket: the engine streams them through the scheduler."""
    engine = Engine.from_pretrained(mid_ckpt, device="cuda", dtype="bfloat16", progress=False, generation=GEN,
                                    buckets=dataclasses.replace(BUCKETS, batch_sizes=(1, 2, 4)), strict=True)
    imgs = [small(A), small(B), small(C)]
    pairs = [(imgs[i % 3], q) for i, q in enumerate("abcdefghij")]
    assert tokens(engine.locate_batch(pairs)) == [engine.locate(im, q).tokens for im, q in pairs]
    assert isinstance(engine.runtime, GraphRuntime)


def test_stream_of_frames_prepared_by_batch(mid_ckpt):
    """A scan of distinct equal-size frames, more than the largest bucket: each batch is prepared
    whole (one upload, one set of resize launches) on the engine's batch thread while the GPU
    runs the rows before it; every row's tokens equal a single call's."""
    engine = Engine.from_pretrained(mid_ckpt, device="cuda", dtype="bfloat16", progress=False, generation=GEN,
                                    buckets=dataclasses.replace(BUCKETS, batch_sizes=(1, 2, 4)), strict=True)
    frames = [random_image(150, 120, seed=s) for s in range(10)]
    streamed = engine.locate_batch([(f, "cat") for f in frames])
    assert all(r.backend == "graphs" for r in streamed)
    assert tokens(streamed) == [engine.locate(f, "cat").tokens for f in frames]

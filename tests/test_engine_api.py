"""The public Engine API: locate / locate_batch / locate_many agree; shared prefixes equal
unshared ones; the scheduler refills rows without changing answers; bad rows are reported;
fixed-step runs; pause and resume. Random weights: only equality between paths is asserted."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from capture import GraphRuntime
from capture.scheduler import run_jobs
from graphrt import Engine, EngineOptions, GenerationConfig, GenerationState, InputError
from graphrt.attention.sdpa import lm_attention
from graphrt.decode import PAUSED_TENSORS
from graphrt.generate import EagerBatch, generate
from graphrt.generation import STATE_FORMAT
from graphrt.request import ImageJob, Row

from conftest import random_image
from test_static_path import BUCKETS, CASES, GEN, A, B, C, prepare, with_rows

QUERIES = ["cat", "a red car on the left", "person</c>car", "x"]


def tokens(results):
    return [r.tokens for r in results]


@pytest.fixture(scope="module")
def static_engine(tiny_ckpt):
    """The graph runtime's static path on CPU (bodies run uncaptured, emulated varlen kernel)."""
    return Engine.from_pretrained(tiny_ckpt, device="cpu", dtype="float32", progress=False, graphs="on",
                                  buckets=BUCKETS, max_new_tokens=24, eager_batch=4)


@pytest.fixture(scope="module")
def eager_engine(tiny_engine):
    return tiny_engine.with_options(eager_batch=3, generation=GEN, preprocess_workers=2)


@pytest.mark.parametrize("which", ["eager_engine", "static_engine"])
def test_locate_batch_many_agree(request, which):
    engine = request.getfixturevalue(which)
    single = [engine.locate(A, q).tokens for q in QUERIES]
    assert tokens(engine.locate_many(A, QUERIES)) == single
    mixed = [(A, QUERIES[0]), (B, "dog"), (A, QUERIES[1]), (C, "y"), (A, QUERIES[2])]
    got = tokens(engine.locate_batch(mixed))
    assert [got[0], got[2], got[4]] == single[:3]
    assert got[1] == engine.locate(B, "dog").tokens and got[3] == engine.locate(C, "y").tokens


def test_shared_prefix_equals_unshared_eager(tiny_engine):
    batch = prepare(tiny_engine, CASES["same image, two queries"] + [(B, "dog"), (A, "x")])
    embeds = tiny_engine.encode_images(batch.images)
    plain = generate(tiny_engine.model, lm_attention, EagerBatch.of(batch, embeds), GEN)
    shared = EagerBatch.of(batch, embeds, share_prefix=True)
    assert shared.prefix_owner == [None, 0, None, 0]
    assert tokens(generate(tiny_engine.model, lm_attention, shared, GEN)) == tokens(plain)


def test_shared_prefix_equals_unshared_static(tiny_engine):
    batch = prepare(tiny_engine, [(A, "cat"), (B, "dog"), (A, "a red car on the left"), (A, "x"), (B, "y")])
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    shared = tokens(runtime.run(batch, GEN, share_prefix=True))
    assert runtime.last_timings_ms["shared_rows"] == 3
    assert tokens(runtime.run(batch, GEN, share_prefix=False)) == shared


def test_engine_share_prefix_switch(static_engine, eager_engine):
    pairs = [(A, q) for q in QUERIES]
    for engine in (static_engine, eager_engine):
        unshared = engine.with_options(share_prefix=False)
        assert tokens(engine.locate_batch(pairs)) == tokens(unshared.locate_batch(pairs))


def check_refills(engine, runtime, cases):
    """Jobs of one row each through the scheduler at batch 2 equal one run per job, and short jobs
    overtake long ones (their rows were freed and refilled while the other row decoded)."""
    expected = []
    for image, query, cap in cases:
        batch = prepare(engine, [(image, query)])
        expected.append(runtime.run(with_rows(batch, max_new_tokens=[cap]), GEN)[0].tokens)
    jobs = []
    for i, (image, query, cap) in enumerate(cases):
        im = engine.processor(image)
        jobs.append(ImageJob(im, [Row(i, query, "detect", engine.prompts.build(query, im.num_tokens((2, 2))),
                                      max_new_tokens=cap)]))
    done = list(run_jobs(runtime, jobs, GEN, batch=2))
    tags = [j.rows[0].index for j in done]
    assert sorted(tags) == list(range(len(cases)))
    assert tags != list(range(len(cases)))  # short jobs overtook long ones
    for job in done:
        assert job.results[0].tokens == expected[job.rows[0].index], f"job {job.rows[0].index}"


def test_scheduler_refills_rows(tiny_engine):
    """Batch 2 over five jobs with different budgets: rows free at different steps and are
    refilled (cache rows reused while the other row decodes); every answer equals its own run."""
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    check_refills(tiny_engine, runtime, [(A, "cat", 3), (B, "dog", 20), (C, "a very long description", 7),
                                         (A, "b", 1), (B, "x", 12)])


def test_scheduler_multi_query_jobs(tiny_engine):
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    im_a, im_b = tiny_engine.processor(A), tiny_engine.processor(B)
    def make_job(im, queries, caps, first):
        return ImageJob(im, [Row(first + k, q, "detect", tiny_engine.prompts.build(q, im.num_tokens((2, 2))),
                                 max_new_tokens=c) for k, (q, c) in enumerate(zip(queries, caps))])

    jobs = [make_job(im_a, QUERIES[:3], [None, 5, 9], 0), make_job(im_b, ["dog", "y"], [4, None], 3)]
    done = {"a" if j.rows[0].index == 0 else "b": j for j in run_jobs(runtime, jobs, GEN, batch=4)}
    for job, image in ((done["a"], A), (done["b"], B)):
        queries = [r.query for r in job.rows]
        assert queries == (QUERIES[:3] if job is done["a"] else ["dog", "y"])
        batch = prepare(tiny_engine, [(image, q) for q in queries])
        batch = with_rows(batch, max_new_tokens=[row.max_new_tokens for row in job.rows])
        assert tokens(job.results) == tokens(runtime.run(batch, GEN))


def test_large_batches_stream(static_engine, eager_engine):
    """More rows than the largest bucket: the graph engine streams through the scheduler, the
    eager one runs micro-batches; both equal one call per pair."""
    images = [random_image(50 + 7 * i, 60 + 5 * i, seed=10 + i) for i in range(7)]
    pairs = [(images[i % 7], q) for i, q in enumerate(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])]
    for engine in (static_engine, eager_engine):
        want = [engine.locate(im, q).tokens for im, q in pairs]
        assert tokens(engine.locate_batch(pairs)) == want


def test_bad_rows_reported(eager_engine, tmp_path):
    bad_file = tmp_path / "broken.png"
    bad_file.write_bytes(b"not an image")
    pairs = [(A, "cat"), (tmp_path / "missing.png", "cat"), (B, ""), (bad_file, "dog"), (C, "y")]
    results = eager_engine.locate_batch(pairs, errors="report")
    assert [r.error is None for r in results] == [True, False, False, False, True]
    assert "not found" in results[1].error and "empty" in results[2].error
    assert results[0].tokens == eager_engine.locate(A, "cat").tokens
    with pytest.raises(InputError):
        eager_engine.locate_batch(pairs)


@pytest.mark.parametrize("which", ["eager_engine", "static_engine"])
def test_fixed_steps(request, which):
    engine = request.getfixturevalue(which)
    results = engine.locate_batch([(A, "cat"), (B, "dog")], fixed_steps=3)
    assert [r.steps for r in results] == [3, 3]
    assert all(r.stop_reason == "fixed_steps" for r in results)


@pytest.mark.parametrize("which", ["eager_engine", "static_engine"])
def test_pause_resume(request, which, tmp_path):
    engine = request.getfixturevalue(which)
    pairs = [(A, "cat"), (B, "dog"), (A, "x", {"task": "point"})]
    direct = engine.locate_batch(pairs)
    run = engine.start(pairs)
    run.advance(2)
    state = run.pause()
    engine.locate(C, "displaces the buffers")  # other work while paused
    state.save(tmp_path / "state.pt")
    resumed = engine.resume(GenerationState.load(tmp_path / "state.pt")).finish()
    assert tokens(resumed) == tokens(direct)
    assert [r.task for r in resumed] == [r.task for r in direct] == ["detect", "detect", "point"]


def test_one_pause_format(static_engine, eager_engine):
    """Both backends pause into the same per-row tensors (graphrt.decode.PAUSED_TENSORS): the same
    dtypes, and after the same steps the same values (pending tokens right-aligned; the graphs'
    padding column of `seen` and their wider token buffer aside)."""
    pairs = [(A, "cat"), (B, "dog"), (A, "x", {"task": "point"})]
    paused = []
    for engine in (static_engine, eager_engine):
        run = engine.start(pairs)
        run.advance(2)
        paused.append(run.pause())
    graphs, eager = paused
    assert (graphs.backend, eager.backend) == ("graphs", "eager") and graphs.format == eager.format == STATE_FORMAT
    g, e = graphs.tensors, eager.tensors
    count = e["pending_count"]
    assert torch.equal(g["pending_count"], count) and count.min() >= 1
    vocab = static_engine.cfg.text.vocab_size
    for name in PAUSED_TENSORS:
        assert g[name].dtype == e[name].dtype and g[name].shape[0] == e[name].shape[0] == len(pairs), name
        if name == "pending":
            for row, k in enumerate(count.tolist()):
                assert torch.equal(g[name][row, -k:], e[name][row, -k:]), f"pending of row {row}"
        elif name == "out_tokens":
            for row, n in enumerate(e["n_gen"].tolist()):
                assert torch.equal(g[name][row, :n], e[name][row, :n]), f"tokens of row {row}"
        elif name == "seen":
            assert torch.equal(g[name][:, :vocab], e[name][:, :vocab])
        else:
            assert torch.equal(g[name], e[name]), name
    assert e["n_gen"].min() > 0  # the rows did decode


def test_old_state_format_refused(eager_engine, tmp_path):
    state = eager_engine.start([(A, "cat")]).pause()
    old = dataclasses.asdict(state)
    del old["format"]  # format 1 files have no such key
    torch.save(old, str(tmp_path / "old.pt"))
    with pytest.raises(InputError, match="format 1 .*run the request again"):
        GenerationState.load(tmp_path / "old.pt")


def test_displaced_generation_raises(static_engine):
    run = static_engine.start([(A, "cat")])
    static_engine.locate(B, "dog")
    with pytest.raises(InputError, match="displaced"):
        run.advance()


def test_options_overrides(tiny_engine):
    engine = tiny_engine.with_options(max_new_tokens=7, share_prefix=False)
    assert engine.options.generation.max_new_tokens == 7 and not engine.options.share_prefix
    assert engine.model is tiny_engine.model  # same weights, no reload
    assert tiny_engine.options.generation.max_new_tokens == EngineOptions().generation.max_new_tokens
    with pytest.raises(ValueError):
        GenerationConfig(fixed_steps=0)

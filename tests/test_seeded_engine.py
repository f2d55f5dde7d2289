"""`seed` through the public API on both paths: the static (graph-shaped) path and the eager loop
draw the same seeded numbers for the caller's row index, so with the same seed they give the same
tokens, one batch or streamed through the scheduler, and another seed gives other tokens. (On CPU
the static path runs its bodies uncaptured; tests/test_graphs_gpu.py replays them as graphs.)"""

from __future__ import annotations

import pytest

from capture import Buckets

from conftest import random_image

BUCKETS = Buckets(batch_sizes=(1, 2, 4), patch_budgets=(64, 128), prefill_lengths=(96, 192), max_new_tokens=40)
PAIRS = [(random_image(130, 96, seed=1), "cat"), (random_image(60, 100, seed=2), "dog"),
         (random_image(100, 100, seed=3), "person</c>car")]


@pytest.fixture(scope="module")
def engines(tiny_engine):
    static = tiny_engine.with_options(graphs="on", buckets=BUCKETS, sampling_graphs=True, max_new_tokens=16)
    eager = tiny_engine.with_options(max_new_tokens=16)
    return static, eager


def tokens(results):
    return [r.tokens for r in results]


@pytest.mark.parametrize("n", [3, 7])  # one batch; more rows than the largest bucket (the scheduler)
def test_static_and_eager_engines_agree_under_one_seed(engines, n):
    static, eager = engines
    pairs = (PAIRS * 3)[:n]
    temps = [1.0, 0.0, 0.8, 1.0, 0.0, 1.2, 1.0][:n]
    got = static.locate_batch(pairs, temps, seed=21)
    assert {r.backend for r in got} == {"graphs"}
    want = eager.locate_batch(pairs, temps, seed=21)
    assert {r.backend for r in want} == {"eager"}
    assert tokens(got) == tokens(want)
    other = tokens(static.locate_batch(pairs, temps, seed=22))
    assert [a != b for a, b in zip(tokens(got), other)] == [t > 0 for t in temps]


def test_rows_keep_their_stream_whatever_their_batch(engines):
    """A row's draws depend on (seed, its index in the call), not on which other rows run with it."""
    static, _ = engines
    alone = static.locate_batch(PAIRS[:1], [1.0], seed=8)[0].tokens
    assert static.locate_batch(PAIRS, [1.0, 1.0, 1.0], seed=8)[0].tokens == alone


@pytest.mark.parametrize("which", [0, 1])  # static, eager
def test_paused_sampled_generation_resumes_on_its_stream(engines, tmp_path, which):
    from graphrt.generation import GenerationState

    engine = engines[which]
    temps = [1.0, 0.0, 0.9]
    whole = tokens(engine.locate_batch(PAIRS, temps, seed=13))
    run = engine.start(PAIRS, temps, seed=13)
    run.advance(2)
    run.pause().save(tmp_path / "state.pt")
    engine.locate(PAIRS[0][0], "something else", temperature=1.0, seed=99)  # other draws in between
    assert tokens(engine.resume(GenerationState.load(tmp_path / "state.pt")).finish()) == whole

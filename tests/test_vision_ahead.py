"""The next admission's vision queued behind a step (capture/scheduler.py, vision_ahead): those
jobs are admitted with their prefill only, every answer equals the scheduler without it and the
job run alone; an encode that another vision replay overwrote is not reused. The graph runtime's
static path on CPU (bodies uncaptured, emulated varlen kernel); random weights: equality only."""

from __future__ import annotations

import dataclasses

import pytest

from capture import GraphRuntime
from capture.scheduler import run_jobs
from graphrt import EngineOptions, OptionError
from graphrt.request import Batch, ImageJob, Row

from conftest import random_image
from test_static_path import GEN as BASE_GEN
from test_static_path import BUCKETS, A, B, C, prepare, with_rows

# End tokens ignored (random weights end rows at once): rows run 1-4 MTP rounds of 6 tokens, capped
# per row, so rows free at different steps and most admissions happen behind a step.
GEN = dataclasses.replace(BASE_GEN, fixed_steps=4)
CASES = [(A, "cat", 6), (B, "dog", 24), (C, "a long description", 12), (A, "b", 6), (B, "x", 18), (C, "y", 12),
         (A, "z", 24), (B, "w", 12)]


@pytest.fixture(scope="module")
def runtime(tiny_engine):
    return GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)


def jobs_of(engine, cases):
    out = []
    for i, (image, query, cap) in enumerate(cases):
        batch = prepare(engine, [(image, query)])
        out.append(ImageJob(batch.images[0], [Row(i, query, "detect", batch.rows[0].prompt, max_new_tokens=cap)]))
    return out


def spied(runtime, monkeypatch):
    """Record each admission's vision passes and each encode's image count."""
    log = []
    admit, encode = runtime.admit, runtime.encode

    def on_admit(batch, *a, **k):
        laps = admit(batch, *a, **k)
        log.append(("admit", len(batch.images), laps["vision_passes"]))
        return laps

    monkeypatch.setattr(runtime, "admit", on_admit)
    monkeypatch.setattr(runtime, "encode", lambda batch: log.append(("encode", len(batch.images))) or encode(batch))
    return log


def test_vision_ahead_admits_with_prefill_only_and_same_answers(tiny_engine, runtime, monkeypatch):
    alone = [runtime.run(with_rows(prepare(tiny_engine, [(im, q)]), max_new_tokens=[cap]), GEN)[0].tokens
             for im, q, cap in CASES]
    log = spied(runtime, monkeypatch)
    results = {}
    for ahead in (True, False):
        log.clear()
        done = list(run_jobs(runtime, jobs_of(tiny_engine, CASES), GEN, batch=2, vision_ahead=ahead))
        results[ahead] = {j.rows[0].index: j.results[0].tokens for j in done}
        assert all(j.timings_ms["vision_ms"] >= 0 and "_vision_clock" not in j.timings_ms for j in done)
        encoded = sum(e[1] for e in log if e[0] == "encode")
        admits = [e for e in log if e[0] == "admit"]
        if ahead:
            # every encoded image is admitted with no vision pass of its own
            assert encoded >= 4 and encoded == sum(n for _, n, passes in admits if passes == 0), log
        else:
            assert encoded == 0 and all(passes >= 1 for *_, passes in admits), log
    assert results[True] == results[False] == dict(enumerate(alone))


def test_overwritten_encode_is_not_reused(tiny_engine, runtime, monkeypatch):
    """encode(X), then an admission of other images (its vision overwrites X's), then X: X's
    admission must run its vision again; its answer equals X run alone."""
    x, y = jobs_of(tiny_engine, [(A, "cat", 4), (random_image(90, 70, seed=5), "dog", 4)])
    want = runtime.run(with_rows(prepare(tiny_engine, [(A, "cat")]), max_new_tokens=[4]), GEN)[0].tokens
    log = spied(runtime, monkeypatch)
    runtime.begin()
    runtime.encode(Batch.of([x]))
    runtime.admit(Batch.of([y]), [1], GEN)
    runtime.admit(Batch.of([x]), [0], GEN)
    assert [e for e in log if e[0] == "admit"] == [("admit", 1, 1), ("admit", 1, 1)]
    runtime.decode(2)
    assert runtime.collect([0])[0].tokens == want


def test_vision_ahead_option_is_checked():
    assert EngineOptions().vision_ahead is True
    with pytest.raises(OptionError, match="vision_ahead"):
        EngineOptions(vision_ahead="no")

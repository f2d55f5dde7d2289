"""The host's read-back copy of the rows' facts (capture/readback.py), queued behind each replay:
collect and the done checks read it instead of the device, and give what a device read gives;
a replay or a state write makes it stale, and stale reads go to the device."""

from __future__ import annotations

import dataclasses

from capture import GraphRuntime

from test_static_path import BUCKETS, CASES, GEN, prepare


def test_collect_from_the_read_back_equals_a_device_read(tiny_engine):
    rt = GraphRuntime(tiny_engine.model, BUCKETS, GEN, use_graphs=False)
    batch = prepare(tiny_engine, CASES["ragged five"])
    gen = dataclasses.replace(GEN, max_new_tokens=12)
    results = rt.run(batch, gen)  # collected from the copy queued behind the last step
    n = len(batch.rows)
    assert rt.readback.rows >= n and rt.all_done()
    picks = [3, 0, 4]
    from_copy = rt.collect(picks)
    finished = rt.finished(n)
    rt.readback.invalidate()
    assert rt.collect(list(range(n))) == results  # the same rows read from the device
    assert rt.collect(picks) == from_copy == [results[i] for i in picks]
    assert rt.finished(n) == finished == [True] * n
    assert len({tuple(r.tokens) for r in results}) > 1  # rows differ (random weights), so picks must map right


def test_read_back_goes_stale_on_replays_and_state_writes(tiny_engine):
    rt = GraphRuntime(tiny_engine.model, BUCKETS, GEN, use_graphs=False)
    batch = prepare(tiny_engine, CASES["single"])
    rt.run(batch, GEN)
    assert rt.readback.rows
    rt.begin()
    assert rt.readback.rows == 0  # a new batch: nothing of the old one is read from the copy
    tensors = rt.snapshot([0])
    rt.readback.enqueue(1)
    rt.restore(tensors, [0])
    assert rt.readback.rows == 0
    rt.readback.enqueue(1)
    rt.step(1)
    assert rt.readback.rows == 1  # the step's own copy, queued behind it

"""The first MTP round inside the prefill (first_round="merged", NVIDIA's loop: prompt + first window
in one forward) against the separate form (prefill of prompt[:-1], round 1 as the first step) and
the eager generator in both forms, token for token, on CPU (stage bodies uncaptured, emulated
varlen kernel; the fused bodies through Triton's interpreter). Shared prefixes, exemplar rows,
refills, sampled rows, rows that finish inside the prefill, a prompt too long to merge, pause and
resume. Random weights: only equality between paths is asserted."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from capture import GraphRuntime
from capture.runtime import first_round_choice
from graphrt.attention.sdpa import lm_attention
from graphrt.generate import EagerBatch, generate

from test_static_path import BUCKETS, CASES, GEN, A, B, C, prepare, with_rows


def runtime(engine, first_round, gen=GEN, **kw):
    return GraphRuntime(engine.model, kw.pop("buckets", BUCKETS), gen, attention="emulated", use_graphs=False,
                        first_round=first_round, **kw)


def eager(engine, batch, gen=GEN, merged=True, share=False):
    eager_batch = EagerBatch.of(batch, engine.encode_images(batch.images), share_prefix=share)
    return [r.tokens for r in generate(engine.model, lm_attention, eager_batch, gen, merged=merged)]


def run(rt, batch, gen=GEN, **kw):
    return [r.tokens for r in rt.run(batch, gen, **kw)]


@pytest.mark.parametrize("name", list(CASES))
def test_merged_equals_separate_and_eager(tiny_engine, name):
    batch = prepare(tiny_engine, CASES[name])
    merged, separate = runtime(tiny_engine, "merged"), runtime(tiny_engine, "separate")
    got = run(merged, batch)
    assert got == run(separate, batch) == eager(tiny_engine, batch)
    assert got == eager(tiny_engine, batch, merged=False)
    # rows run to the budget: every round after the first is a step replay, one fewer when merged
    assert merged.last_timings_ms["steps"] == separate.last_timings_ms["steps"] - 1


def test_eager_merged_equals_split_with_shared_prefixes_and_modes(tiny_engine):
    batch = prepare(tiny_engine, CASES["ragged five"] + [(A, "a red car on the left")])
    for mode in ("fast", "hybrid", "slow"):
        gen = dataclasses.replace(GEN, mode=mode)
        want = eager(tiny_engine, batch, gen, merged=False)
        assert eager(tiny_engine, batch, gen) == want, mode
        assert eager(tiny_engine, batch, gen, share=True) == want, mode


def test_rows_finishing_in_the_prefill(tiny_engine):
    """fixed_steps=1 and one-round budgets: the merged prefill finishes every row, no step replays;
    mixed budgets: rows finished by the prefill stay put while the others step."""
    batch = prepare(tiny_engine, CASES["ragged five"])
    merged, separate = runtime(tiny_engine, "merged"), runtime(tiny_engine, "separate")
    one = dataclasses.replace(GEN, fixed_steps=1)
    assert run(merged, batch, one) == run(separate, batch, one)
    assert merged.last_timings_ms["steps"] == 0 and separate.last_timings_ms["steps"] == 1
    assert all(r.steps == 1 and r.stop_reason == "fixed_steps" for r in merged.run(batch, one))
    capped = with_rows(batch, max_new_tokens=[2, 30, 6, 1, 13])
    assert run(merged, capped) == run(separate, capped) == eager(tiny_engine, capped)


def test_shared_prefix_tails_and_heads(tiny_engine):
    """Rows of one image: the owner's head segment has no window, every tail has one."""
    batch = prepare(tiny_engine, [(A, "cat"), (B, "dog"), (A, "a red car on the left"), (A, "x"),
                                         (B, "y")])
    rt = runtime(tiny_engine, "merged")
    shared = run(rt, batch, share_prefix=True)
    assert rt.last_timings_ms["shared_rows"] == 3
    assert shared == run(rt, batch, share_prefix=False) == eager(tiny_engine, batch)


def test_prompt_too_long_to_merge_keeps_its_first_step(tiny_engine):
    """A prompt one token longer than the largest prefill bucket allows merged: its first round
    stays a step, beside rows that merge, with the same tokens."""
    batch = prepare(tiny_engine, CASES["different images and prompt lengths"])
    longest = max(len(r.prompt.ids) for r in batch.rows)  # its window would need longest + 6 slots
    buckets = dataclasses.replace(BUCKETS, prefill_lengths=(64, longest + 5))
    rt = runtime(tiny_engine, "merged", buckets=buckets)
    segments = []
    original = rt.inputs.fill_prefill
    rt.inputs.fill_prefill = lambda segs, *a: (segments.extend(segs), original(segs, *a))[1]
    assert run(rt, batch) == eager(tiny_engine, batch)
    assert sorted(s.window for s in segments) == [False, True, True]


def test_sampled_rows_merged(tiny_engine):
    batch = prepare(tiny_engine, [(A, "cat"), (B, "dog"), (A, "a red car on the left"), (C, "x")])
    batch = with_rows(batch, temperature=[0.0, 0.8, 0.0, 1.5])
    gen = dataclasses.replace(GEN, seed=5)
    out = [run(runtime(tiny_engine, how, gen, sampling_graphs=True), batch, gen) for how in ("merged", "separate")]
    assert out[0] == out[1] == eager(tiny_engine, batch, gen)


def test_refills_collect_rows_finished_in_the_prefill(tiny_engine):
    from test_engine_api import check_refills

    # cap 3 finishes in the prefill: its row is collected and refilled before any step
    check_refills(tiny_engine, runtime(tiny_engine, "merged"), [(A, "cat", 3), (B, "dog", 20), (C, "a long one", 7),
                                                                (A, "b", 1), (B, "x", 12)])


def test_switch_and_env_override(tiny_engine, monkeypatch):
    assert runtime(tiny_engine, "merged").first_round == "merged"
    assert first_round_choice("merged") == "merged"
    monkeypatch.setenv("GRAPHRT_FIRST_ROUND", "separate")
    assert runtime(tiny_engine, "merged").first_round == "separate"
    monkeypatch.setenv("GRAPHRT_FIRST_ROUND", "fused")
    with pytest.raises(ValueError, match="GRAPHRT_FIRST_ROUND"):
        runtime(tiny_engine, "merged")
    monkeypatch.delenv("GRAPHRT_FIRST_ROUND")
    with pytest.raises(ValueError, match="first_round"):
        runtime(tiny_engine, "both")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton's CPU interpreter (TRITON_INTERPRET=1)")
def test_fused_merged_equals_fused_separate(tiny_engine):
    """The fused bodies (rope+write over prompt and window, the prefill kernel's window mode, the
    step tail over mapped rows): merged equals separate equals eager; with the torch tail too."""
    batch = prepare(tiny_engine, CASES["same image, queries swapped"] + [(B, "dog")])
    batch = with_rows(batch, max_new_tokens=[24, 4, 12])
    want = eager(tiny_engine, batch)
    for tail in ("fused", "torch"):
        os.environ["GRAPHRT_STEP_TAIL"] = tail
        try:
            for how in ("merged", "separate"):
                assert run(runtime(tiny_engine, how, kernels="fused"), batch) == want, (tail, how)
        finally:
            del os.environ["GRAPHRT_STEP_TAIL"]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton's CPU interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("tiles", [(16, 16, 4, 1), (32, 16, 4, 1), (16, 64, 4, 3), (16, 16, 4, 1, 2, True)])
@pytest.mark.parametrize("t", [40, 50])
def test_prefill_kernel_window_rows_equal_dense_rule(tiles, t):
    """Segments of t query slots: pads, then m prompt tokens after a cached prefix of c keys, then
    the 6 window rows (keys c+m .. c+m+5). The prefill kernel's window mode against the dense rule
    of graphrt/attention/plan.py (PlanBuilder.add_step with the prompt as the accepted tokens),
    for prompt ends around key-block edges and 16-row tiles that split the window (t = 50)."""
    from graphrt.attention.plan import PlanBuilder, dense_mask
    from graphrt.kernels.prefill_attention import prefill_attention

    g = torch.Generator().manual_seed(t)
    segs = [(0, 1), (0, 10), (5, 10), (16, 1), (30, 3), (0, t - 6), (40, 20), (60, 4)]  # (cached c, prompt m)
    slots, hq, hkv, d, w = 128, 4, 2, 32, 6
    b = len(segs)
    q = torch.randn(b * t, hq, d, generator=g)
    k, v = torch.randn(b * slots, hkv, d, generator=g), torch.randn(b * slots, hkv, d, generator=g)
    rows = torch.randperm(b, generator=g)  # segments read any cache row
    cu_q = (torch.arange(b + 1) * t).int()
    cu_k = torch.cat([rows * slots, torch.tensor([b * slots])]).int()
    used = torch.tensor([c + m + w for c, m in segs], dtype=torch.int32)
    got = prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, True, window=w, tiles=tiles)
    for i, (c, m) in enumerate(segs):
        plan = PlanBuilder()
        plan.add_step(0, c, m, w)
        p = plan.build("cpu")
        mask = dense_mask(p.q_hi, p.q_blocked, c + m + w)  # [m + w, keys]
        keys = k[rows[i] * slots : rows[i] * slots + c + m + w].repeat_interleave(hq // hkv, 1)
        vals = v[rows[i] * slots : rows[i] * slots + c + m + w].repeat_interleave(hq // hkv, 1)
        qi = q[i * t + t - m - w : (i + 1) * t]
        s = torch.einsum("qhd,khd->hqk", qi.double(), keys.double()) * d ** -0.5
        want = torch.einsum("hqk,khd->qhd", s.masked_fill(~mask[None], float("-inf")).softmax(-1), vals.double())
        torch.testing.assert_close(got[i * t + t - m - w : (i + 1) * t].double(), want, rtol=1e-4, atol=1e-4)
        blind = max(0, t - (c + m + w))  # pad rows that see no key (causal, bottom-right): zeros
        assert not got[i * t : i * t + blind].any()


def test_pause_resume_after_a_merged_prefill(tiny_engine, tmp_path):
    """start() leaves rows after round 1 on both backends (merged prefill / eager round 1); a pause
    right there resumes to the same tokens."""
    from graphrt import Engine, GenerationState

    engine = Engine.from_pretrained(tiny_engine.checkpoint_dir, device="cpu", dtype="float32", progress=False,
                                    graphs="on", buckets=BUCKETS, max_new_tokens=24)
    pairs = [(A, "cat"), (B, "dog"), (A, "x", {"task": "point"})]
    for e in (engine, tiny_engine):
        direct = e.locate_batch(pairs)
        state = e.start(pairs).pause()
        assert state.tensors["steps"].tolist() == [1, 1, 1]  # round 1 is done at start
        state.save(tmp_path / "state.pt")
        resumed = e.resume(GenerationState.load(tmp_path / "state.pt")).finish()
        assert [r.tokens for r in resumed] == [r.tokens for r in direct]

"""The merged first round (prompt + first window in the prefill replay) on CUDA graphs, both kernel
sets, tiny (fp16) and mid (bf16) random checkpoints: each replay equals its bodies run uncaptured
exactly; merged and separate graphs each equal the eager generator except at most one row that
diverges at a provable near-tie, and agree with each other likewise; merged runs one step replay
fewer. Skipped without a GPU."""

from __future__ import annotations

import dataclasses

import pytest

from capture import GraphRuntime
from test_graphs_gpu import GEN, MID_BUCKETS, TINY_BUCKETS, near_tie_or_fail
from test_static_path import CASES, eager_tokens, prepare

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_gpu(tiny_ckpt):
    from test_graphs_gpu import engine_on_gpu

    return engine_on_gpu(tiny_ckpt, "float16")


@pytest.fixture(scope="module")
def mid_gpu(tmp_path_factory):
    from test_graphs_gpu import engine_on_gpu
    from weights.synth import write_preset

    return engine_on_gpu(write_preset("mid", tmp_path_factory.mktemp("mid"), device="cuda", progress=False))


@pytest.mark.parametrize("kernels", ["fused", "torch"])
@pytest.mark.parametrize("which, name", [("tiny", "same image, two queries"), ("mid", "ragged five")])
def test_merged_first_round_on_graphs(request, which, name, kernels):
    engine = request.getfixturevalue(f"{which}_gpu")
    buckets = TINY_BUCKETS if which == "tiny" else MID_BUCKETS
    pairs = [(img.resize((min(img.width, 160), min(img.height, 160))), q) for img, q in CASES[name]]
    batch = prepare(engine, pairs)
    out, steps = {}, {}
    for how in ("merged", "separate"):
        kw = dict(attention="torch-fa2", strict=True, kernels=kernels, first_round=how)
        rt = GraphRuntime(engine.model, buckets, GEN, **kw)
        rt.warmup(progress=False)
        out[how] = [r.tokens for r in rt.run(batch, GEN)]
        steps[how] = rt.last_timings_ms["steps"]
        bare = GraphRuntime(engine.model, buckets, GEN, use_graphs=False, **kw)
        assert out[how] == [r.tokens for r in bare.run(batch, GEN)], how  # capture changes nothing
        assert all(len(t) >= GEN.max_new_tokens for t in out[how])  # random weights: rows run to the budget
    assert steps["merged"] == steps["separate"] - 1
    eager = eager_tokens(engine, batch, GEN)
    half = "float16" if which == "tiny" else "bfloat16"
    for how in ("merged", "separate"):
        ties = [near_tie_or_fail(engine, batch, r, got, want, half)
                for r, (got, want) in enumerate(zip(out[how], eager)) if got != want]
        assert len(ties) <= 1, f"{how}: several rows diverge: {ties}"
    apart = [r for r, (a, b) in enumerate(zip(out["merged"], out["separate"])) if a != b]
    assert len(apart) <= 1, f"merged and separate disagree on rows {apart}"


def test_merged_rows_finishing_in_the_prefill_on_graphs(tiny_gpu):
    """fixed_steps=1: every row finishes in the merged prefill replay, no step replay runs."""
    batch = prepare(tiny_gpu, CASES["ragged five"])
    one = dataclasses.replace(GEN, fixed_steps=1)
    out = {}
    for how in ("merged", "separate"):
        rt = GraphRuntime(tiny_gpu.model, TINY_BUCKETS, one, attention="torch-fa2", strict=True, first_round=how)
        rt.warmup(progress=False)
        out[how] = [r.tokens for r in rt.run(batch, one)]
        assert rt.last_timings_ms["steps"] == (0 if how == "merged" else 1)
    apart = [r for r, (a, b) in enumerate(zip(out["merged"], out["separate"])) if a != b]
    assert len(apart) <= 1, apart

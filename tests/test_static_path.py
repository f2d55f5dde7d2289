"""The static (graph-shaped) path against the eager path, token for token, greedy.

On CPU the stage bodies run directly with the emulated varlen kernel; the GPU tests replay the
same bodies as CUDA graphs with FlashAttention (tests/test_graphs_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from capture import Buckets, GraphRuntime
from capture.runtime import GraphRow
from graphrt import GenerationConfig, SamplingConfig
from graphrt.attention.sdpa import lm_attention
from graphrt.generate import EmbeddedRow, generate

from conftest import random_image

BUCKETS = Buckets(batch_sizes=(1, 2, 4, 8), patch_budgets=(64, 128, 256), prefill_lengths=(96, 160, 256),
                  max_new_tokens=40)
GEN = GenerationConfig(max_new_tokens=24)


def prepare(engine, pairs):
    images, rows, seen = [], [], {}
    for image, query in pairs:
        key = id(image)
        if key not in seen:
            seen[key] = len(images)
            images.append(engine.processor(image))
        im = images[seen[key]]
        rows.append(GraphRow(engine.prompts.build(query, im.num_tokens((2, 2))), seen[key]))
    return images, rows


def eager_tokens(engine, images, rows, gen=GEN):
    embeds = engine.encode_images(images)
    reqs = [EmbeddedRow(r.prompt.ids, embeds[r.image], r.prompt.image_start, r.temperature, r.max_new_tokens)
            for r in rows]
    return [r.tokens for r in generate(engine.model, lm_attention, reqs, gen)]


def static_tokens(engine, images, rows, buckets=BUCKETS, gen=GEN, runtime=None, window_plan="shifted"):
    runtime = runtime or GraphRuntime(engine.model, buckets, gen, attention="emulated", use_graphs=False,
                                      window_plan=window_plan)
    return [r.tokens for r in runtime.run(images, rows, gen)], runtime


A, B, C = random_image(130, 96, seed=1), random_image(60, 200, seed=2), random_image(100, 100, seed=3)

CASES = {
    "single": [(A, "person</c>car")],
    "identical rows": [(A, "cat"), (A, "cat")],
    "same image, two queries": [(A, "cat"), (A, "a red car on the left")],
    "same image, queries swapped": [(A, "a red car on the left"), (A, "cat")],
    "different images and prompt lengths": [(A, "cat"), (B, "the tallest person in the picture"), (C, "x")],
    "ragged five": [(A, "cat"), (B, "dog"), (C, "a very long description of a small object"), (A, "b"),
                    (B, "person</c>car</c>bike")],
}


@pytest.mark.parametrize("window_plan", ["shifted", "lse"])
@pytest.mark.parametrize("name", list(CASES))
def test_static_path_equals_eager(tiny_engine, name, window_plan):
    images, rows = prepare(tiny_engine, CASES[name])
    got, runtime = static_tokens(tiny_engine, images, rows, window_plan=window_plan)
    assert got == eager_tokens(tiny_engine, images, rows)
    assert all(len(t) >= GEN.max_new_tokens for t in got)  # random weights: rows stop on the budget


def test_rows_finish_at_different_steps(tiny_engine):
    import dataclasses

    images, rows = prepare(tiny_engine, CASES["ragged five"])
    rows = [dataclasses.replace(r, max_new_tokens=n) for r, n in zip(rows, (3, 30, 12, 1, 20))]
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    results = runtime.run(images, rows, GEN)
    assert len({r.steps for r in results}) >= 4
    assert [r.tokens for r in results] == eager_tokens(tiny_engine, images, rows)


def test_padded_bucket_equals_exact_bucket(tiny_engine):
    images, rows = prepare(tiny_engine, CASES["different images and prompt lengths"])
    # exact for the merged first round: a segment holds the whole prompt and the 6 window slots
    exact = Buckets(batch_sizes=(3,), patch_budgets=(max(im.num_patches for im in images) + 3 & ~3,),
                    prefill_lengths=(max(len(r.prompt.ids) for r in rows) + 6,), max_new_tokens=40)
    padded = Buckets(batch_sizes=(8,), patch_budgets=(256,), prefill_lengths=(256,), max_new_tokens=40)
    assert static_tokens(tiny_engine, images, rows, exact)[0] == static_tokens(tiny_engine, images, rows, padded)[0]


def test_small_prefill_bucket_with_several_rows(tiny_engine):
    """Rows in a prefill bucket shorter than the largest one (each row owns T, not max T, slots)."""
    images, rows = prepare(tiny_engine, CASES["ragged five"])
    longest = max(len(r.prompt.ids) - 1 for r in rows)
    buckets = Buckets(batch_sizes=(8,), patch_budgets=(256,), prefill_lengths=(longest, longest + 100),
                      max_new_tokens=40)
    assert static_tokens(tiny_engine, images, rows, buckets)[0] == eager_tokens(tiny_engine, images, rows)


def test_runtime_is_reusable_across_batches(tiny_engine):
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    for name in ("ragged five", "single", "identical rows"):
        images, rows = prepare(tiny_engine, CASES[name])
        assert static_tokens(tiny_engine, images, rows, runtime=runtime)[0] == eager_tokens(tiny_engine, images, rows)


def test_unsupported_batches_say_why(tiny_engine):
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    images, rows = prepare(tiny_engine, CASES["single"])
    assert "mode" in runtime.unsupported(images, rows, GenerationConfig(mode="hybrid"))
    assert "max_new_tokens" in runtime.unsupported(images, rows, GenerationConfig(max_new_tokens=500))
    big, big_rows = prepare(tiny_engine, [(random_image(400, 400), "cat")])
    assert "patches" in runtime.unsupported(big, big_rows, GEN)


def test_bucket_expansion():
    b = Buckets(batch_sizes=(4, 1), patch_budgets=(64,), prefill_lengths=(96, 160), max_new_tokens=8)
    assert b.batch_sizes == (1, 4)
    assert b.expand() == {"vision": [(1, 64), (4, 64)], "prefill": [(1, 96), (1, 160), (4, 96), (4, 160)],
                          "step": [(1,), (4,)]}
    assert Buckets.fit(b.batch_sizes, 2) == 4 and Buckets.fit(b.batch_sizes, 5) is None
    with pytest.raises(ValueError):
        Buckets(patch_budgets=(66,))


def test_emulated_kernel_bottom_right_causal_and_empty_rows():
    from capture.varlen import emulated

    q = torch.randn(6, 2, 8)
    k = torch.randn(20, 1, 8)
    cu_q = torch.tensor([0, 3, 6], dtype=torch.int32)
    cu_k = torch.tensor([0, 10, 20], dtype=torch.int32)
    used = torch.tensor([5, 1], dtype=torch.int32)
    out = emulated(q, k, k, cu_q, cu_k, 3, 10, used, True)
    # Row 1 has one key: its first two queries see nothing (zeros), the last sees key 10.
    assert torch.all(out[3:5] == 0)
    torch.testing.assert_close(out[5], k[10].expand(2, 8))


def test_kernel_selection_rules():
    from capture.varlen import select_kernel

    assert select_kernel("auto", "cpu")[0] == "emulated"
    with pytest.raises(RuntimeError, match="needs CUDA"):
        select_kernel("torch-fa2", "cpu")
    with pytest.raises(RuntimeError, match="no attention kernel"):
        select_kernel("auto", "cpu", strict=True)


# ---------------------------------------------------------------- sampling and penalty on the static path

MIXED = [(A, "cat"), (B, "dog"), (A, "a red car on the left"), (C, "person</c>car")]


def sampled_runtime(engine, gen):
    return GraphRuntime(engine.model, BUCKETS, gen, attention="emulated", use_graphs=False, sampling_graphs=True)


def with_temperatures(rows, temps):
    import dataclasses

    return [dataclasses.replace(r, temperature=t) for r, t in zip(rows, temps)]


def test_static_sampling_equals_eager_per_row_temperatures(tiny_engine):
    """Rows at temperatures 0, 0.8, 0 and 1.5 in one batch: the static step draws the same seeded
    numbers as the eager loop, so both agree token for token; greedy rows stay greedy, sampled
    rows leave the greedy answer."""
    images, rows = prepare(tiny_engine, MIXED)
    rows = with_temperatures(rows, [0.0, 0.8, 0.0, 1.5])
    gen = GenerationConfig(max_new_tokens=24, seed=3)
    got, runtime = static_tokens(tiny_engine, images, rows, gen=gen, runtime=sampled_runtime(tiny_engine, gen))
    assert got == eager_tokens(tiny_engine, images, rows, gen)
    greedy = eager_tokens(tiny_engine, images, with_temperatures(rows, [0.0] * 4), gen)
    assert [g == w for g, w in zip(got, greedy)] == [True, False, True, False]


def test_seed_is_honoured_on_the_static_path(tiny_engine):
    images, rows = prepare(tiny_engine, MIXED)
    rows = with_temperatures(rows, [1.0] * 4)
    runs = {}
    for seed in (3, 3, 4):
        gen = GenerationConfig(max_new_tokens=24, seed=seed)
        runtime = sampled_runtime(tiny_engine, gen)
        runs.setdefault(seed, []).append(static_tokens(tiny_engine, images, rows, gen=gen, runtime=runtime)[0])
    assert runs[3][0] == runs[3][1]
    assert all(a != b for a, b in zip(runs[3][0], runs[4][0]))  # every row draws another stream


def test_seed_reseeds_a_reused_runtime_without_recapture(tiny_engine):
    """One runtime (one set of buffers / graphs) answers seed 3, seed 4, then seed 3 again."""
    images, rows = prepare(tiny_engine, MIXED[:2])
    rows = with_temperatures(rows, [1.0, 1.0])
    runtime = sampled_runtime(tiny_engine, GenerationConfig(max_new_tokens=24))
    out = [[r.tokens for r in runtime.run(images, rows, GenerationConfig(max_new_tokens=24, seed=s))]
           for s in (3, 4, 3)]
    assert out[0] == out[2] and out[0] != out[1]


def test_static_repetition_penalty_equals_eager(tiny_engine):
    images, rows = prepare(tiny_engine, CASES["ragged five"])
    gen = GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(repetition_penalty=5.0))
    got, _ = static_tokens(tiny_engine, images, rows, gen=gen)
    assert got == eager_tokens(tiny_engine, images, rows, gen)
    assert got != eager_tokens(tiny_engine, images, rows, GEN)  # the penalty changes the answer

"""The static (graph-shaped) path against the eager path, token for token, greedy.

On CPU the stage bodies run directly with the emulated varlen kernel; the GPU tests replay the
same bodies as CUDA graphs with FlashAttention (tests/test_graphs_gpu.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from capture import Buckets, GraphRuntime
from graphrt import GenerationConfig, SamplingConfig
from graphrt.attention.sdpa import lm_attention
from graphrt.generate import EagerBatch, generate
from graphrt.request import Batch, Row

from conftest import random_image

BUCKETS = Buckets(batch_sizes=(1, 2, 4, 8), patch_budgets=(64, 128, 256), prefill_lengths=(96, 160, 256),
                  max_new_tokens=40)
GEN = GenerationConfig(max_new_tokens=24)


def prepare(engine, pairs) -> Batch:
    """A batch of (image, query) pairs in order, each distinct image once; row i's stream is i."""
    images, rows, row_images, seen = [], [], [], {}
    for image, query in pairs:
        key = id(image)
        if key not in seen:
            seen[key] = len(images)
            images.append(engine.processor(image))
        im = images[seen[key]]
        rows.append(Row.of_prompt(engine.prompts.build(query, im.num_tokens((2, 2))), len(rows)))
        row_images.append((seen[key],))
    return Batch(images, rows, row_images)


def with_rows(batch: Batch, **per_row) -> Batch:
    """The batch with fresh rows, each field named given one value per row (e.g. temperature=[...])."""
    rows = [dataclasses.replace(r, **{k: v[i] for k, v in per_row.items()}) for i, r in enumerate(batch.rows)]
    return dataclasses.replace(batch, rows=rows)


def eager_tokens(engine, batch: Batch, gen=GEN):
    eager = EagerBatch.of(batch, engine.encode_images(batch.images))
    return [r.tokens for r in generate(engine.model, lm_attention, eager, gen)]


def static_tokens(engine, batch: Batch, buckets=BUCKETS, gen=GEN, runtime=None, window_plan="shifted"):
    runtime = runtime or GraphRuntime(engine.model, buckets, gen, attention="emulated", use_graphs=False,
                                      window_plan=window_plan)
    return [r.tokens for r in runtime.run(batch, gen)], runtime


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
    batch = prepare(tiny_engine, CASES[name])
    got, runtime = static_tokens(tiny_engine, batch, window_plan=window_plan)
    assert got == eager_tokens(tiny_engine, batch)
    assert all(len(t) >= GEN.max_new_tokens for t in got)  # random weights: rows stop on the budget


def test_rows_finish_at_different_steps(tiny_engine):
    batch = with_rows(prepare(tiny_engine, CASES["ragged five"]), max_new_tokens=(3, 30, 12, 1, 20))
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    results = runtime.run(batch, GEN)
    assert len({r.steps for r in results}) >= 4
    assert [r.tokens for r in results] == eager_tokens(tiny_engine, batch)


def test_padded_bucket_equals_exact_bucket(tiny_engine):
    batch = prepare(tiny_engine, CASES["different images and prompt lengths"])
    # exact for the merged first round: a segment holds the whole prompt and the 6 window slots
    exact = Buckets(batch_sizes=(3,), patch_budgets=(max(im.num_patches for im in batch.images) + 3 & ~3,),
                    prefill_lengths=(max(len(r.prompt.ids) for r in batch.rows) + 6,), max_new_tokens=40)
    padded = Buckets(batch_sizes=(8,), patch_budgets=(256,), prefill_lengths=(256,), max_new_tokens=40)
    assert static_tokens(tiny_engine, batch, exact)[0] == static_tokens(tiny_engine, batch, padded)[0]


def test_small_prefill_bucket_with_several_rows(tiny_engine):
    """Rows in a prefill bucket shorter than the largest one (each row owns T, not max T, slots)."""
    batch = prepare(tiny_engine, CASES["ragged five"])
    longest = max(len(r.prompt.ids) - 1 for r in batch.rows)
    buckets = Buckets(batch_sizes=(8,), patch_budgets=(256,), prefill_lengths=(longest, longest + 100),
                      max_new_tokens=40)
    assert static_tokens(tiny_engine, batch, buckets)[0] == eager_tokens(tiny_engine, batch)


def test_runtime_is_reusable_across_batches(tiny_engine):
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    for name in ("ragged five", "single", "identical rows"):
        batch = prepare(tiny_engine, CASES[name])
        assert static_tokens(tiny_engine, batch, runtime=runtime)[0] == eager_tokens(tiny_engine, batch)


def test_unsupported_batches_say_why(tiny_engine):
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False)
    batch = prepare(tiny_engine, CASES["single"])
    assert "mode" in runtime.unsupported(batch, GenerationConfig(mode="hybrid"))
    assert "max_new_tokens" in runtime.unsupported(batch, GenerationConfig(max_new_tokens=500))
    big = prepare(tiny_engine, [(random_image(400, 400), "cat")])
    assert "patches" in runtime.unsupported(big, GEN)


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


def test_static_sampling_equals_eager_per_row_temperatures(tiny_engine):
    """Rows at temperatures 0, 0.8, 0 and 1.5 in one batch: the static step draws the same seeded
    numbers as the eager loop, so both agree token for token; greedy rows stay greedy, sampled
    rows leave the greedy answer."""
    batch = prepare(tiny_engine, MIXED)
    batch = with_rows(batch, temperature=[0.0, 0.8, 0.0, 1.5])
    gen = GenerationConfig(max_new_tokens=24, seed=3)
    got, runtime = static_tokens(tiny_engine, batch, gen=gen, runtime=sampled_runtime(tiny_engine, gen))
    assert got == eager_tokens(tiny_engine, batch, gen)
    greedy = eager_tokens(tiny_engine, with_rows(batch, temperature=[0.0] * 4), gen)
    assert [g == w for g, w in zip(got, greedy)] == [True, False, True, False]


def test_seed_is_honoured_on_the_static_path(tiny_engine):
    batch = prepare(tiny_engine, MIXED)
    batch = with_rows(batch, temperature=[1.0] * 4)
    runs = {}
    for seed in (3, 3, 4):
        gen = GenerationConfig(max_new_tokens=24, seed=seed)
        runtime = sampled_runtime(tiny_engine, gen)
        runs.setdefault(seed, []).append(static_tokens(tiny_engine, batch, gen=gen, runtime=runtime)[0])
    assert runs[3][0] == runs[3][1]
    assert all(a != b for a, b in zip(runs[3][0], runs[4][0]))  # every row draws another stream


def test_seed_reseeds_a_reused_runtime_without_recapture(tiny_engine):
    """One runtime (one set of buffers / graphs) answers seed 3, seed 4, then seed 3 again."""
    batch = prepare(tiny_engine, MIXED[:2])
    batch = with_rows(batch, temperature=[1.0, 1.0])
    runtime = sampled_runtime(tiny_engine, GenerationConfig(max_new_tokens=24))
    out = [[r.tokens for r in runtime.run(batch, GenerationConfig(max_new_tokens=24, seed=s))]
           for s in (3, 4, 3)]
    assert out[0] == out[2] and out[0] != out[1]


def test_static_repetition_penalty_equals_eager(tiny_engine):
    batch = prepare(tiny_engine, CASES["ragged five"])
    gen = GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(repetition_penalty=5.0))
    got, _ = static_tokens(tiny_engine, batch, gen=gen)
    assert got == eager_tokens(tiny_engine, batch, gen)
    assert got != eager_tokens(tiny_engine, batch, GEN)  # the penalty changes the answer

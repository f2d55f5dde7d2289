"""Visual prompts on CUDA graphs (skipped without a GPU): a synth checkpoint answers a visual-prompt
request identically on the graphs and on the eager path, and rows sharing the query image with
other exemplars (a shared prefix, tails holding the exemplars) equal separate calls. Random
weights: only equality between paths is asserted. fp16, as the tiny graph tests (see
test_graphs_gpu.py: in bf16 FA2 and dense SDPA round one near-tie of the tiny model differently)."""

from __future__ import annotations

import pytest

from graphrt import Engine, GenerationConfig
from test_static_path import BUCKETS, A, B, C

pytestmark = pytest.mark.gpu

GEN = GenerationConfig(max_new_tokens=24)
DVP = "detect_visual_prompt"
BOX1, BOX2 = (100, 150, 600, 700), (0, 0, 400, 400)


@pytest.fixture(scope="module")
def graph_engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cuda", dtype="float16", graphs="on", buckets=BUCKETS,
                                  generation=GEN, strict=True, progress=False)


@pytest.fixture(scope="module")
def eager_engine(graph_engine):
    return graph_engine.with_options(graphs="off")


def tokens(results):
    return [r.tokens for r in results]


def test_visual_prompt_graphs_equal_eager(graph_engine, eager_engine):
    for kwargs, count in (({"exemplar_box": BOX1}, 1), ({"exemplar": C}, 1), ({"exemplar": [B, C]}, 2)):
        on_graphs = graph_engine.locate(A, task=DVP, **kwargs)
        assert on_graphs.backend == "graphs" and on_graphs.exemplars == count
        eager = eager_engine.locate(A, task=DVP, **kwargs)
        assert eager.backend == "eager" and on_graphs.tokens == eager.tokens, kwargs


def test_shared_query_image_other_exemplars_on_graphs(graph_engine, eager_engine):
    pairs = [(A, None, {"task": DVP, "exemplar_box": BOX1}), (A, None, {"task": DVP, "exemplar_box": BOX2}),
             (A, "cat", {"task": "point", "exemplar": C}), (A, "cat"), (B, None, {"task": DVP, "exemplar": A})]
    together = graph_engine.locate_batch(pairs)
    assert graph_engine.runtime.last_timings_ms["shared_rows"] == 3
    assert {r.backend for r in together} == {"graphs"}
    separate = [graph_engine.locate_batch([p])[0].tokens for p in pairs]
    assert tokens(together) == separate
    assert tokens(eager_engine.locate_batch(pairs)) == separate


def test_scheduler_with_exemplars_on_graphs(graph_engine):
    pairs = [(img, None, {"task": DVP, "exemplar_box": box}) for img in (A, B, C) for box in (BOX1, BOX2)]
    pairs += [(A, "cat"), (B, "x", {"exemplar": C}), (C, "dog")]
    assert len(pairs) > graph_engine.runtime.buckets.max_batch
    streamed = graph_engine.locate_batch(pairs)
    assert {r.backend for r in streamed} == {"graphs"}
    assert tokens(streamed) == [graph_engine.locate_batch([p])[0].tokens for p in pairs]

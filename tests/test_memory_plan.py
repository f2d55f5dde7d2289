"""The memory plan (capture/plan.py): what fits a budget, what is refused, and that its KV and
buffer sizes are the ones the pipeline allocates."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from capture import Buckets, GraphRuntime
from capture.plan import GIB, estimate, model_weights_bytes, plan_memory
from graphrt import GenerationConfig
from graphrt.config import TextConfig, VisionConfig
from graphrt.errors import OptionError

CFG_3B = SimpleNamespace(text=TextConfig(), vision=VisionConfig())  # the released widths and depths
WEIGHTS_3B = 7_000_000_000  # ~3.5 B parameters in bf16


def test_default_budget_fits_the_3b_model_in_24_gib_with_every_image_size():
    plan = plan_memory(CFG_3B, 2, WEIGHTS_3B, 24.0)
    b = plan.buckets
    assert plan.derived and plan.total <= 24 * GIB
    assert b.fit_vision(1, 26676) is not None and b.fit_prefill(1, 6944) is not None  # the largest image
    assert b.fit_vision(8, 1656) is not None and b.max_batch >= 16  # small images at large batch
    assert plan.kv_cache == 36 * b.max_batch * b.cache_slots(6) * 2 * 2 * 128 * 2


def test_budgets_shrink_with_memory_and_never_lose_the_largest_image():
    plans = [plan_memory(CFG_3B, 2, WEIGHTS_3B, gb) for gb in (80, 24, 16, 12)]
    assert [p.total <= gb * GIB for p, gb in zip(plans, (80, 24, 16, 12))] == [True] * 4
    rows = [p.buckets.max_batch for p in plans]
    pools = [p.graph_pool for p in plans]
    assert rows == sorted(rows, reverse=True) and rows[-1] < rows[0]
    assert pools[1] < pools[0]
    for p in plans:
        assert p.buckets.fit_vision(1, p.buckets.max_patches) and p.buckets.fit_prefill(1, p.buckets.max_prefill)


def test_too_small_a_budget_is_refused_naming_memory_gb():
    with pytest.raises(OptionError, match=r"memory_gb=8 is too small.*weights 6\.52"):
        plan_memory(CFG_3B, 2, WEIGHTS_3B, 8.0)
    with pytest.raises(OptionError, match=r"memory_gb=24: the given buckets need"):
        plan_memory(CFG_3B, 2, WEIGHTS_3B, 24.0, Buckets(batch_sizes=(64,), vision_budget=None, prefill_budget=None))
    plan = plan_memory(CFG_3B, 2, WEIGHTS_3B, None, Buckets())  # no budget: the buckets as given
    assert not plan.derived and plan.total > 24 * GIB


def test_plan_sizes_are_what_the_pipeline_allocates(tiny_engine):
    model = tiny_engine.model
    buckets = Buckets(batch_sizes=(1, 2, 4), patch_budgets=(64, 1024), prefill_lengths=(96, 448), max_new_tokens=24,
                      vision_budget=1024, prefill_budget=896)
    runtime = GraphRuntime(model, buckets, GenerationConfig(max_new_tokens=8), attention="emulated", use_graphs=False)
    plan = estimate(model.cfg, model.dtype.itemsize, model_weights_bytes(model), buckets, 1.0)
    pipe = runtime.pipe
    assert plan.kv_cache == pipe.cache.k.numel() * pipe.cache.k.element_size() * 2
    assert plan.slots == pipe.slots
    assert pipe.pixels_u8.shape[0] == buckets.vision_capacity == 1024 and pipe.p_ids.shape[0] == 896
    assert plan.weights == sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())


def test_engine_option_and_status(tiny_ckpt, tiny_engine):
    from graphrt import EngineOptions

    with pytest.raises(OptionError, match="memory_gb"):
        EngineOptions(memory_gb=-1)
    engine = tiny_engine.with_options(graphs="on", max_new_tokens=8, memory_gb=2.0)
    status = engine.status()["memory_plan"]
    assert status["memory_gb"] == 2.0 and status["planned_gib"] <= 2.0 and status["buckets"] == "derived from memory_gb"
    assert engine.runtime.buckets == engine.memory_plan.buckets
    json.dumps(status)
    with pytest.raises(OptionError, match="memory_gb=0.01"):
        tiny_engine.with_options(graphs="on", memory_gb=0.01)

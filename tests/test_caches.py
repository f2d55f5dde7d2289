"""Per-image-size caches stay bounded: MoonViT's interpolated position tables and the graph
runtime's per-grid tables (RoPE cos/sin, merge order, patch-order index). A run over many distinct
image sizes keeps only the last few, with memory flat; an evicted table recomputes to the same values."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from capture import GraphRuntime
from capture.inputs import GRIDS_KEPT
from graphrt.lru import LRU
from graphrt.vision import POSITION_TABLES_KEPT

from test_static_path import BUCKETS, GEN

GRIDS = [(2 * h, 2 * w) for h in range(1, 9) for w in range(1, 9)]  # 64 distinct patch grids


def tensor_bytes(values) -> int:
    total = 0
    for v in values:
        for t in v if isinstance(v, tuple) else (v,):
            total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else t.nbytes
    return total


def test_lru_keeps_the_most_recently_used():
    cache = LRU(2)
    made = []
    make = lambda key: lambda: made.append(key) or key  # noqa: E731
    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get(key, make(key))
    assert made == ["a", "b", "c", "b"]  # "a" was kept (recently used), "b" dropped for "c"
    assert len(cache) == 2 and "a" in cache and "b" in cache and "c" not in cache


def test_position_tables_stay_bounded_and_recompute_equal(tiny_engine):
    vit = tiny_engine.model.vision
    vit.clear_cache()
    first = vit.position_embedding(GRIDS[0]).clone()
    peak = 0
    for grid in GRIDS:
        table = vit.position_embedding(grid)
        assert table.shape == (grid[0] * grid[1], vit.cfg.hidden_size)
        assert len(vit._pos_cache) <= POSITION_TABLES_KEPT
        peak = max(peak, tensor_bytes(vit._pos_cache.values()))
    largest = max(g[0] * g[1] for g in GRIDS) * vit.cfg.hidden_size * vit.pos_emb.element_size()
    assert peak <= POSITION_TABLES_KEPT * largest
    assert GRIDS[0] not in vit._pos_cache  # evicted long ago ...
    assert torch.equal(vit.position_embedding(GRIDS[0]), first)  # ... and recomputed to the same table
    for grid in ((4, 6), (6, 4), (4, 6), (2, 8), (8, 2)):  # a grid and its transpose are different tables
        assert torch.equal(vit.position_embedding(grid), vit._interpolated_table(grid))


@pytest.fixture(scope="module")
def runtime(tiny_engine):
    return GraphRuntime(tiny_engine.model, BUCKETS, GEN, use_graphs=False)


def test_runtime_grid_caches_stay_bounded(runtime):
    entry, held = [], []
    for grid in GRIDS:
        geometry, order = runtime.inputs.grid_geometry(grid), runtime.inputs.patch_order(grid)
        entry.append(tensor_bytes([geometry, order]))
        assert len(runtime.inputs.geometry) <= GRIDS_KEPT and len(runtime.inputs.patch_orders) <= GRIDS_KEPT
        held.append(tensor_bytes(runtime.inputs.geometry.values()) + tensor_bytes(runtime.inputs.patch_orders.values()))
    # Exactly the last GRIDS_KEPT grids' tables are held, however many sizes came before.
    for i in range(len(GRIDS)):
        assert held[i] == sum(entry[max(0, i + 1 - GRIDS_KEPT) : i + 1])
    assert held[-1] < sum(entry) / 4


def test_engine_memory_flat_over_many_sizes(tiny_engine):
    """Through the whole static path on CPU: host memory traced by tracemalloc (numpy tables) and the
    bytes held by both caches stay flat after the first sizes, over 24 distinct image sizes."""
    engine = tiny_engine.with_options(graphs="on", buckets=BUCKETS, max_new_tokens=4)
    engine.model.vision.clear_cache()
    rng = np.random.RandomState(0)
    sizes = [(28 * w, 28 * h) for w, h in [(1 + i % 6, 1 + (i * 5) % 7) for i in range(24)]]
    assert len(set(sizes)) == 24
    held, traced = [], []
    tracemalloc.start()
    try:
        for w, h in sizes:
            image = (rng.rand(h, w, 3) * 255).astype(np.uint8)
            assert engine.locate(image, "cat").error is None
            rt = engine.runtime.inputs
            held.append(tensor_bytes(rt.geometry.values()) + tensor_bytes(rt.patch_orders.values())
                        + tensor_bytes(engine.model.vision._pos_cache.values()))
            traced.append(tracemalloc.get_traced_memory()[0])
            assert len(rt.geometry) <= GRIDS_KEPT and len(engine.model.vision._pos_cache) <= POSITION_TABLES_KEPT
    finally:
        tracemalloc.stop()
    warm = max(held[:GRIDS_KEPT + 4])
    assert max(held[GRIDS_KEPT + 4:]) <= 1.5 * warm, held
    assert traced[-1] - traced[GRIDS_KEPT + 4] < 2 * 2**20, traced  # < 2 MiB growth over the last 12 sizes

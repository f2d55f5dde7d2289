"""GRAPHRT_STEP_MERGE=last: the split kernel's last-arriving program of each (row, KV head, query tile)
merges the partials itself (an int32 arrival counter per group, reset by the merger). Its output must
be bit-equal to the split kernel + the separate merge kernel running the same loop arithmetic
(merge_all=False), over lengths that split differently per row, eagerly and in a replayed CUDA graph
whose lengths change between replays (which only works if every counter is back at 0). CPU: Triton's
interpreter (programs run one after another, the atomics are plain adds)."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from graphrt.kernels.step_attention import StepAttention  # noqa: E402
from test_kernels import W, step_reference  # noqa: E402


def _inputs(dev, dtype, rows, hq, hkv, d, slots, seed):
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(rows + 1, slots, hkv, d, generator=gen).to(dtype).to(dev)
    v_cache = torch.randn(rows + 1, slots, hkv, d, generator=gen).to(dtype).to(dev)
    q = torch.randn(rows * 2 * W, hq, d, generator=gen).to(dtype).to(dev)
    return q, k_cache, v_cache


def _pair(rows, hq, hkv, d, dev, **kw):
    last = StepAttention(rows, W, hq, hkv, d, dev, merge="last", merge_all=False, **kw)
    sep = StepAttention(rows, W, hq, hkv, d, dev, merge="separate", merge_all=False, **kw)
    return last, sep


def _live(count):
    """The compared tokens: each row's k real accepted slots and its W window slots (pads are unused)."""
    j = torch.arange(2 * W, device=count.device)
    return ((j[None, :] >= W - count[:, None]) | (j[None, :] >= W)).reshape(-1)


def _check(last, sep, q, kc, vc, clen, count):
    got, want = last(q, kc, vc, clen, count), sep(q, kc, vc, clen, count)
    live = _live(count)
    g, w = got[live], want[live]
    assert torch.equal(g, w), f"differs: max {(g.float() - w.float()).abs().max().item()}"
    assert not torch.any(last.arrivals), "an arrival counter was left set"
    if q.device.type == "cpu":  # an independent check too (the GPU suite checks the separate path)
        ref, ref_live = step_reference(q, kc, vc, clen, count)
        assert torch.equal(ref_live, live)
        assert (got[live].double() - ref[live]).norm() / ref[live].norm() < 1e-5
    return got


def test_merge_last_bit_equal_interpreter():
    if torch.cuda.is_available():
        pytest.skip("CPU interpreter test; the gpu tests below check the 3B shapes")
    last, sep = _pair(5, 4, 2, 16, "cpu", n_split=4, block_n=16, split_m=16)
    q, kc, vc = _inputs("cpu", torch.float32, 5, 4, 2, 16, 160, seed=1)
    # 1 (one split: written directly), key-block edges, a long row; then other lengths on the same
    # objects: counters must be back at 0 for the second and third calls
    for c, k in (([1, 15, 16, 17, 140], [1, 6, 3, 5, 2]), ([140, 1, 63, 30, 2], [6, 2, 1, 4, 3]),
                 ([70, 71, 9, 100, 3], [3, 3, 6, 1, 5])):
        _check(last, sep, q, kc, vc, torch.tensor(c), torch.tensor(k))


def _gpu_case(rows, seed):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randint(1, 2100, (rows,), generator=gen)
    c[: min(rows, 5)] = torch.tensor([1, 63, 64, 461, 2000])[: min(rows, 5)]
    k = torch.randint(1, W + 1, (rows,), generator=gen)
    return c.cuda(), k.cuda()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 8, 32])
def test_merge_last_bit_equal_gpu_eager_and_replayed(rows):
    """The shipped shapes (16 query heads, 2 KV heads, D 128, bf16) at the captured batch sizes."""
    hq, hkv, d = 16, 2, 128
    last, sep = _pair(rows, hq, hkv, d, "cuda")
    q, kc, vc = _inputs("cuda", torch.bfloat16, rows, hq, hkv, d, 2200, seed=rows)
    for seed in range(3):
        _check(last, sep, q, kc, vc, *_gpu_case(rows, seed))
    # the default merge (all splits at once where n_split >= 16) rounds in another order: close, not equal
    c, k = _gpu_case(rows, 0)
    dflt = StepAttention(rows, W, hq, hkv, d, "cuda", merge="separate")
    torch.testing.assert_close(last(q, kc, vc, c, k), dflt(q, kc, vc, c, k), rtol=2e-2, atol=2e-2)

    clen, count = torch.ones(rows, dtype=torch.int64, device="cuda"), torch.ones(rows, dtype=torch.int64, device="cuda")
    last(q, kc, vc, clen, count)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = last(q, kc, vc, clen, count)
    for seed in range(4):  # lengths change between replays; each replay must merge every split row
        c, k = _gpu_case(rows, 10 + seed)
        if seed == 3:
            c[:] = 1  # every row in one program: no arrivals at all
        clen.copy_(c)
        count.copy_(k)
        graph.replay()
        torch.cuda.synchronize()
        want = sep(q, kc, vc, clen, count)
        live = _live(count)
        assert torch.equal(out[live], want[live]), f"replay {seed} differs"
        assert not torch.any(last.arrivals), f"replay {seed} left a counter set"

"""The fused Triton kernels (graphrt/kernels) against plain torch and the dense attention rule,
on CPU through Triton's interpreter (TRITON_INTERPRET=1, set by conftest without a GPU). Small
shapes; the same checks at the real widths run on the GPU in tests/test_kernels_gpu.py."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from graphrt.attention.plan import PlanBuilder, dense_mask
from graphrt.kernels import select_kernels
from graphrt.layers import RMSNorm
from graphrt.llm import RotaryEmbedding, apply_rope

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from graphrt.kernels.layer_ops import add_rms_norm, rope_write, silu_mul, transpose  # noqa: E402
from graphrt.kernels.step_attention import StepAttention  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
W = 6


def step_reference(q, k_cache, v_cache, cache_len, count):
    """Float64 attention of the step layout with the rule of graphrt/attention/plan.py (PlanBuilder
    + dense_mask), independent of the kernel's own index arithmetic. Pad slots are not compared."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    live = torch.zeros(q.shape[0], dtype=torch.bool)
    group = q.shape[1] // k_cache.shape[2]
    for b, (c, k) in enumerate(zip(cache_len.tolist(), count.tolist())):
        plan = PlanBuilder()
        plan.add_step(b, c, k, W)
        (_, q0, q1, kv_len), = plan.segments
        mask = dense_mask(torch.tensor(plan.hi), torch.tensor(plan.blocked), kv_len)
        tokens = [b * 2 * W + W - k + i for i in range(k)] + [b * 2 * W + W + i for i in range(W)]
        keys = k_cache[b, :kv_len].double().repeat_interleave(group, 1)
        vals = v_cache[b, :kv_len].double().repeat_interleave(group, 1)
        qs = q[tokens].double().cpu()
        scores = torch.einsum("thd,khd->htk", qs, keys.cpu()) * q.shape[-1] ** -0.5
        scores = scores.masked_fill(~mask[None], float("-inf"))
        out[tokens] = torch.einsum("htk,khd->thd", scores.softmax(-1), vals.cpu())
        live[tokens] = True
    return out, live


@pytest.mark.parametrize("n_split,block_n,split_m,min_chunk,mode", [
    (1, 16, None, None, "tiles"), (3, 16, 16, 0, "tiles"), (8, 32, None, 0, "tiles"),
    (16, 16, 16, 0, "tiles"),  # 16 splits: all-at-once merge
    (4, 16, 16, 32, "tiles"),  # short rows written directly (one split), the long row split and merged
    (None, None, None, None, "tiles"), (None, None, None, None, "split")])  # the shipped choices
def test_step_attention_matches_dense_rule(n_split, block_n, split_m, min_chunk, mode):
    gen = torch.Generator().manual_seed(n_split or 0)
    hq, hkv, d, slots = 4, 2, 16, 160
    cache_len = torch.tensor([1, 15, 16, 17, 140])  # 1, key-block edges, a long row
    count = torch.tensor([1, 6, 3, 5, 2])
    rows = len(cache_len)
    k_cache = torch.randn(rows + 1, slots, hkv, d, generator=gen)
    v_cache = torch.randn(rows + 1, slots, hkv, d, generator=gen)
    q = torch.randn(rows * 2 * W, hq, d, generator=gen)
    att = StepAttention(rows, W, hq, hkv, d, DEV, n_split=n_split, block_n=block_n, split_m=split_m,
                        min_chunk=min_chunk, mode=mode)
    got = att(*(t.to(DEV) for t in (q, k_cache, v_cache, cache_len, count))).cpu()
    want, live = step_reference(q, k_cache, v_cache, cache_len, count)
    assert torch.isfinite(got).all()
    err = (got[live].double() - want[live]).norm() / want[live].norm()
    assert err < (1e-5 if DEV == "cpu" else 2e-3)  # the GPU's fp32 dot runs as tf32


def test_layer_ops_match_torch():
    if DEV != "cpu":
        pytest.skip("CPU interpreter test; tests/test_kernels_gpu.py checks the same on the GPU")
    gen = torch.Generator().manual_seed(0)
    t, d, hq, hkv, hd = 5, 48, 4, 2, 16
    x, delta = torch.randn(t, d, generator=gen), torch.randn(t, d, generator=gen)
    norm = RMSNorm(d, 1e-6, torch.float32)
    norm.weight.data = torch.randn(d, generator=gen)
    res, out = add_rms_norm(x, delta, norm.weight, norm.eps)
    torch.testing.assert_close(res, x + delta, rtol=0, atol=0)
    torch.testing.assert_close(out, norm(x + delta), rtol=1e-5, atol=1e-5)
    index = torch.tensor([4, 0])
    _, picked = add_rms_norm(x, delta, norm.weight, norm.eps, index=index)
    torch.testing.assert_close(picked, norm((x + delta)[index]), rtol=1e-5, atol=1e-5)

    gate_up = torch.randn(t, 2 * 40, generator=gen)
    gate, up = gate_up.chunk(2, -1)
    torch.testing.assert_close(silu_mul(gate_up), F.silu(gate) * up, rtol=1e-5, atol=1e-6)

    qkv = torch.randn(t, (hq + 2 * hkv) * hd, generator=gen)
    cos, sin = RotaryEmbedding(hd, 1e6)(torch.tensor([0, 3, 9, 9, 40]), torch.float32)
    k_cache, v_cache = torch.zeros(3, 12, hkv, hd), torch.zeros(3, 12, hkv, hd)
    rows, slots = torch.tensor([0, 2, 1, 2, 0]), torch.tensor([5, 0, 11, 7, 6])
    q = rope_write(qkv, cos, sin, rows, slots, k_cache, v_cache, hq, hkv)
    qr, kr, vr = qkv.split([hq * hd, hkv * hd, hkv * hd], -1)
    torch.testing.assert_close(q, apply_rope(qr.view(t, hq, hd), cos, sin), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_cache[rows, slots], apply_rope(kr.view(t, hkv, hd), cos, sin), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_cache[rows, slots], vr.view(t, hkv, hd), rtol=0, atol=0)
    wide = torch.randn(300, 8, generator=gen)
    torch.testing.assert_close(transpose(wide, 6), wide[:, :6].t(), rtol=0, atol=0)
    untouched = torch.ones(3, 12, dtype=torch.bool)
    untouched[rows, slots] = False
    assert (k_cache[untouched] == 0).all() and (v_cache[untouched] == 0).all()


def test_kernel_set_choice():
    assert select_kernels("torch", "cuda", torch.bfloat16)[0] == "torch"
    assert select_kernels("auto", "cpu", torch.float32)[0] == "torch"  # the interpreter is for tests only
    with pytest.raises(ValueError):
        select_kernels("fast", "cpu", torch.float32)
    if not torch.cuda.is_available():
        assert select_kernels("fused", "cpu", torch.float32)[0] == "fused"  # interpreter mode


def test_status_names_the_kernel_set(tiny_engine):
    assert tiny_engine.status()["kernels"] == "torch (eager)"  # CPU: no graph runtime
    with pytest.raises(ValueError, match="needs the graph runtime"):
        tiny_engine.with_options(kernels="fused")  # nothing would run it: refused, not ignored


@pytest.mark.parametrize("name", ["single", "same image, two queries"])
def test_fused_static_path_equals_eager(tiny_engine, name):
    if DEV != "cpu":
        pytest.skip("CPU interpreter test; tests/test_kernels_gpu.py runs the fused graphs on the GPU")
    from capture import GraphRuntime
    from test_static_path import BUCKETS, CASES, GEN, eager_tokens, prepare

    batch = prepare(tiny_engine, CASES[name])
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False, kernels="fused")
    assert runtime.kernels == "fused"
    got = [r.tokens for r in runtime.run(batch, GEN)]
    assert got == eager_tokens(tiny_engine, batch)


def test_fused_scheduler_refills_rows(tiny_engine):
    """Refilled cache rows (a freed row prefilled while the other decodes) on the fused bodies:
    every job's tokens equal its own run."""
    from capture import GraphRuntime
    from test_engine_api import A, B, C, check_refills
    from test_static_path import BUCKETS, GEN

    if DEV != "cpu":
        pytest.skip("CPU interpreter test; the GPU engine tests run the fused graphs")
    runtime = GraphRuntime(tiny_engine.model, BUCKETS, GEN, attention="emulated", use_graphs=False, kernels="fused")
    check_refills(tiny_engine, runtime, [(A, "cat", 3), (B, "dog", 14), (C, "a long one", 6)])

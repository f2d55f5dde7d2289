"""Both MTP-step attention plans against a dense SDPA reference of the stock rule, directly:
accepted queries causal; window queries see every earlier key except the last accepted one, and
the six window keys. On CPU through the emulated kernel (fp32), on CUDA through FA2 (bf16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capture.ranges import StepRanges, StepRangesLSE
from capture.varlen import select_kernel
from graphrt.kv_cache import KVCache

BLK, S, HQ, HKV = 6, 80, 8, 2
CACHED, ACCEPTED = [10, 33, 1], [1, 6, 3]


def run_plan(plan: str, device: str, dtype, head_dim: int, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)  # noqa
    b = len(CACHED)
    cache = KVCache(1, b, S, HKV, head_dim, dtype, device)
    cache.k.copy_(rnd(*cache.k.shape))
    cache.v.copy_(rnd(*cache.v.shape))
    prefix_k, prefix_v = cache.k[0].clone(), cache.v[0].clone()
    q, k, v = rnd(b * 2 * BLK, HQ, head_dim), rnd(b * 2 * BLK, HKV, head_dim), rnd(b * 2 * BLK, HKV, head_dim)

    c = torch.tensor(CACHED, device=device)
    n = torch.tensor(ACCEPTED, device=device)
    j = torch.arange(BLK, device=device)[None]
    first = (BLK - n)[:, None]
    real = j >= first
    acc_slots = torch.where(real, c[:, None] + j - first, S - 1)
    w0 = c + n
    win_pos = w0[:, None] - 1 + j
    rows = torch.arange(b, device=device)
    i32 = lambda t: t.to(torch.int32)  # noqa: E731
    common = dict(acc_rows=rows.repeat_interleave(BLK), acc_slots=acc_slots.reshape(-1),
                  win_rows=rows.repeat_interleave(BLK), cu_q=i32(torch.arange(b + 1, device=device) * BLK),
                  cu_k=i32(torch.arange(b + 1, device=device) * S), seqused_acc=i32(w0))
    _, kernel = select_kernel("auto", device, dtype=dtype)
    positions = torch.zeros(b * 2 * BLK, dtype=torch.long, device=device)  # unused by the attention itself
    if plan == "shifted":
        ranges = StepRanges(kernel, BLK, S, positions, win_slots=win_pos.reshape(-1), last_rows=rows,
                            last_slots=w0 - 1, seqused_win=i32(w0 + BLK - 1), **common)
    else:
        cu_window = torch.cat([rows * S + w0, torch.tensor([b * S], device=device)])
        ranges = StepRangesLSE(kernel, BLK, S, positions, win_slots=(win_pos + 1).reshape(-1),
                               cu_k_window=i32(cu_window), seqused_prefix=i32(w0 - 1),
                               seqused_window=torch.full((b,), BLK, dtype=torch.int32, device=device), **common)
    out = ranges(0, q, k, v, cache)

    # Dense reference, row by row: keys in slot order [prefix | accepted | window].
    groups = HQ // HKV
    for r in range(b):
        cr, kr = CACHED[r], ACCEPTED[r]
        qr = q.view(b, 2 * BLK, HQ, -1)[r]
        kr_all = k.view(b, 2 * BLK, HKV, -1)[r]
        vr_all = v.view(b, 2 * BLK, HKV, -1)[r]
        keys = torch.cat([prefix_k[r, :cr], kr_all[BLK - kr : BLK], kr_all[BLK:]]).float()
        vals = torch.cat([prefix_v[r, :cr], vr_all[BLK - kr : BLK], vr_all[BLK:]]).float()
        queries = torch.cat([qr[BLK - kr : BLK], qr[BLK:]]).float()
        slot = torch.arange(cr + kr + BLK, device=device)
        q_slot = torch.cat([torch.arange(cr, cr + kr, device=device), torch.full((BLK,), -1, device=device)])
        window = q_slot < 0
        mask = torch.where(window[:, None], (slot[None] != cr + kr - 1), slot[None] <= q_slot[:, None])
        ref = F.scaled_dot_product_attention(
            queries.transpose(0, 1)[None], keys.repeat_interleave(groups, 1).transpose(0, 1)[None],
            vals.repeat_interleave(groups, 1).transpose(0, 1)[None], attn_mask=mask[None, None])[0].transpose(0, 1)
        got = torch.cat([out.view(b, 2 * BLK, HQ, -1)[r, BLK - kr : BLK], out.view(b, 2 * BLK, HQ, -1)[r, BLK:]])
        yield (got.float() - ref).abs().max().item()
    # The cache keeps the accepted tokens' K/V at their slots (the window leaves no trace there).
    for r in range(b):
        cr, kr = CACHED[r], ACCEPTED[r]
        assert torch.equal(cache.k[0, r, cr : cr + kr], k.view(b, 2 * BLK, HKV, -1)[r, BLK - kr : BLK])


@pytest.mark.parametrize("plan", ["shifted", "lse"])
def test_step_plans_equal_dense_rule_cpu(plan):
    assert max(run_plan(plan, "cpu", torch.float32, 16)) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("plan", ["shifted", "lse"])
def test_step_plans_equal_dense_rule_gpu(plan):
    assert max(run_plan(plan, "cuda", torch.bfloat16, 128)) < 2e-2

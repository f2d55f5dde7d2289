"""graphrt.kernels.prefill_attention.py against the emulated varlen kernel (plain torch), the
reference of the varlen contract: on CPU through Triton's interpreter (float32), on the GPU in
bf16 against torch's FA2 (marked gpu). Causal bottom-right with pad queries that see no key, a
cached prefix, GQA, segments reading any cache row, non-causal."""

from __future__ import annotations

import os

import pytest
import torch

from capture.varlen import emulated

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest without a GPU); a GPU runs the compiled kernel in the gpu test")


def case(device, dtype, t=40, slots=64, hq=4, hkv=2, d=32, seed=0):
    """Three segments of t query slots: 30 real tokens on an empty row (10 pad queries see no
    key), 20 tokens after a 25-token cached prefix, and a full segment, each on its own cache row
    (rows out of order, as PrefillRanges allows)."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(3 * t, hq, d, generator=g, device=device).to(dtype)
    k = torch.randn(3 * slots, hkv, d, generator=g, device=device).to(dtype)
    v = torch.randn(3 * slots, hkv, d, generator=g, device=device).to(dtype)
    cu_q = (torch.arange(4, device=device) * t).to(torch.int32)
    cu_k = torch.tensor([2 * slots, 0, slots, 3 * slots], dtype=torch.int32, device=device)
    used = torch.tensor([30, 45, 40], dtype=torch.int32, device=device)
    return q, k, v, cu_q, cu_k, t, slots, used


@interpreted
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tiles", [(16, 16, 4, 1), (32, 16, 4, 1), (16, 16, 4, 1, 2, True), (32, 16, 4, 1, 2, False),
                                   None])
def test_interp_prefill_attention_equals_emulated(causal, tiles):
    from graphrt.kernels.prefill_attention import prefill_attention, runs

    q, k, v, cu_q, cu_k, t, slots, used = case("cpu", torch.float32)
    assert runs(q)
    got = prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, causal, tiles=tiles)
    ref = emulated(q, k, v, cu_q, cu_k, t, slots, used, causal)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    if causal:
        assert not got[:10].any()  # pad queries of segment 0 see no key: zeros


@pytest.mark.gpu
@torch.no_grad()
def test_prefill_attention_bf16_on_gpu_matches_fa2():
    """3B shape (16 query heads, 2 KV heads, 128): a 480-token bucket, 451 real, plus a cached prefix row."""
    from graphrt.kernels.prefill_attention import prefill_attention
    from capture.varlen import torch_fa2

    q, k, v, cu_q, cu_k, t, slots, _ = case("cuda", torch.bfloat16, t=480, slots=1024, hq=16, hkv=2, d=128, seed=3)
    used = torch.tensor([451, 900, 480], dtype=torch.int32, device="cuda")
    got = prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, True)
    ref = torch_fa2(q, k, v, cu_q, cu_k, t, slots, used, True)
    live = torch.ones(3 * t, dtype=torch.bool, device="cuda")
    live[: t - 451] = False  # pad queries: zeros here, unspecified in FA2
    assert not got[~live].any()
    err = ((got[live].float() - ref[live].float()).norm() / ref[live].float().norm()).item()
    assert err < 1e-2, err
    for tiles in ((64, 64, 4, 3, 2, True), (32, 64, 4, 3, 4, True), (16, 64, 4, 3, 8, False)):  # packed heads
        packed = prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, True, tiles=tiles)
        assert not packed[~live].any()
        err = ((packed[live].float() - ref[live].float()).norm() / ref[live].float().norm()).item()
        assert err < 1e-2, (tiles, err)


def test_default_tiles_pack_the_gqa_group_in_64_rows(monkeypatch):
    from graphrt.errors import OptionError
    from graphrt.kernels.prefill_attention import HEAD_TILES, TILES, Tiles, tiles_for

    assert tiles_for(8) == TILES and TILES.pack * TILES.block_m == 64
    assert tiles_for(2) == TILES._replace(pack=2, block_m=32)
    assert tiles_for(6) == TILES._replace(pack=2, block_m=32)  # powers of two only
    assert tiles_for(1) == TILES._replace(pack=1, block_m=64)
    assert tiles_for(8, (64, 64, 4, 3)) == Tiles(64, 64, 4, 3, 1, False)
    monkeypatch.setenv("GRAPHRT_PREFILL_ATTENTION_TILES", "head")  # the A/B switch, read per call
    assert tiles_for(8) == HEAD_TILES
    monkeypatch.setenv("GRAPHRT_PREFILL_ATTENTION_TILES", "heads")
    with pytest.raises(OptionError, match="GRAPHRT_PREFILL_ATTENTION_TILES"):
        tiles_for(8)


def guarded(n: int, gen: torch.Generator, pad: int = 2048) -> torch.Tensor:
    """n random values inside a buffer of NaNs: a read outside the tensor turns an output NaN."""
    buf = torch.full((n + 2 * pad,), float("nan"))
    buf[pad : pad + n] = torch.randn(n, generator=gen)
    return buf[pad : pad + n]


@interpreted
def test_interp_prefill_attention_reads_only_its_ranges():
    """Random bucket lengths, cache sizes and key counts (0 .. all slots, shorter and longer than
    the bucket), rows in random order, inside NaN guards: equal to the reference everywhere. (A
    negative key-block start for tiles of pad queries once read before the cache: an illegal
    address on the GPU.)"""
    import random

    from graphrt.kernels.prefill_attention import prefill_attention

    rnd, gen = random.Random(0), torch.Generator().manual_seed(0)
    b, hq, hkv, d = 3, 4, 2, 16
    for _ in range(12):
        t = rnd.randint(1, 120)
        slots = t + rnd.randint(0, 80)
        q = guarded(b * t * hq * d, gen).view(b * t, hq, d)
        k = guarded(b * slots * hkv * d, gen).view(b * slots, hkv, d)
        v = guarded(b * slots * hkv * d, gen).view(b * slots, hkv, d)
        cu_q = (torch.arange(b + 1) * t).to(torch.int32)
        cu_k = torch.cat([torch.randperm(b, generator=gen) * slots, torch.tensor([b * slots])]).to(torch.int32)
        used = torch.tensor([rnd.randint(0, slots) for _ in range(b)], dtype=torch.int32)
        ref = emulated(q, k, v, cu_q, cu_k, t, slots, used, True)
        for tiles in ((16, 16, 4, 1), (16, 16, 4, 1, 2, True)):  # one head a program; two, heavy tiles first
            got = prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, True, tiles=tiles)
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)

"""RoPE + the K/V cache write inside the step attention's split kernel (StepAttention.with_rope,
GRAPHRT_STEP_ROPE=attention) against the separate path it replaces (layer_ops.rope_write, then the
attention on the rotated queries): the same outputs and the same cache, bit for bit. On the CPU
under Triton's interpreter (fp32); the gpu test below checks bf16 on the GPU.
Measured slower at B=8/32 and even at B=1 (H100, 2026-11-25), so GRAPHRT_STEP_ROPE defaults to separate."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from graphrt.kernels.layer_ops import rope_write  # noqa: E402
from graphrt.kernels.step_attention import StepAttention  # noqa: E402
from graphrt.llm import RotaryEmbedding  # noqa: E402

W = 6


def _case(dev, dtype, cache_len, count, hq, hkv, d, slots, seed):
    """A step's inputs laid out as capture/pipeline.py's step lays them out (accepted tokens
    right-aligned, pads at the dead slot, the window after them)."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(cache_len)
    c, k = torch.tensor(cache_len), torch.tensor(count)
    j = torch.arange(W)[None]
    first_real = (W - k)[:, None]
    real = j >= first_real
    dead = slots - 1
    acc = torch.where(real, c[:, None] + j - first_real, dead)
    w0 = c + k
    positions = torch.cat([torch.where(real, acc, 0), w0[:, None] - 1 + j], 1).reshape(-1)
    write_slots = torch.cat([acc, w0[:, None] + j], 1).reshape(-1)
    write_rows = torch.arange(rows).repeat_interleave(2 * W)
    cos, sin = RotaryEmbedding(d, 1e6)(positions, dtype)
    qkv = torch.randn(rows * 2 * W, (hq + 2 * hkv) * d, generator=gen).to(dtype)
    k_cache = torch.randn(rows + 1, slots, hkv, d, generator=gen).to(dtype)
    v_cache = torch.randn(rows + 1, slots, hkv, d, generator=gen).to(dtype)
    to = lambda t: t.to(dev)  # noqa: E731
    return tuple(map(to, (qkv, cos, sin, write_rows, write_slots, k_cache, v_cache, c, k)))


def _both(att, qkv, cos, sin, write_rows, write_slots, k_cache, v_cache, c, k):
    kc0, vc0 = k_cache.clone(), v_cache.clone()
    q = rope_write(qkv, cos, sin, write_rows, write_slots, kc0, vc0, att.hq, att.hkv)
    want = att(q, kc0, vc0, c, k)
    kc1, vc1 = k_cache.clone(), v_cache.clone()
    got = att.with_rope(qkv, cos, sin, write_rows, write_slots, kc1, vc1, c, k)
    return (want, kc0, vc0), (got, kc1, vc1)


def _assert_same(want, got):
    """Outputs and caches bit-equal, but the dead slot (the last): every pad token of a row writes
    there, so which one lands is a race in both paths (nothing reads that slot)."""
    for w, g, name in zip(want, got, ("output", "k cache", "v cache")):
        if name != "output":
            w, g = w[:, :-1], g[:, :-1]
        assert torch.equal(w, g), f"{name} differs: max {(w.float() - g.float()).abs().max().item()}"


@pytest.mark.parametrize("n_split,block_n,split_m", [(1, 16, None), (4, 16, 16), (16, 16, 16), (None, None, None)])
def test_rope_in_split_kernel_equals_rope_write_then_attention(n_split, block_n, split_m):
    if torch.cuda.is_available():
        pytest.skip("CPU interpreter test; the gpu test below checks bf16 on the GPU")
    # c at key-block edges (15, 16, 17: the step's keys straddle a block and a split), c = 1, a long row
    args = _case("cpu", torch.float32, [1, 15, 16, 17, 70], [1, 6, 3, 5, 2], 4, 2, 16, 96, seed=3)
    att = StepAttention(5, W, 4, 2, 16, "cpu", n_split=n_split, block_n=block_n, split_m=split_m)
    _assert_same(*_both(att, *args))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 8, 32])
def test_rope_in_split_kernel_bit_equal_on_gpu(rows):
    """The shipped shapes (3B heads: 16 query heads, 2 KV heads, D 128) at the captured batch sizes,
    random lengths with block edges and a long cache, bf16: bit-equal outputs and caches."""
    gen = torch.Generator().manual_seed(rows)
    c = torch.randint(1, 2100, (rows,), generator=gen)
    c[: min(rows, 4)] = torch.tensor([1, 63, 64, 2000])[: min(rows, 4)]
    k = torch.randint(1, W + 1, (rows,), generator=gen)
    args = _case("cuda", torch.bfloat16, c.tolist(), k.tolist(), 16, 2, 128, 2200, seed=rows)
    for mode in ("tiles", "split"):
        att = StepAttention(rows, W, 16, 2, 128, "cuda", mode=mode)
        _assert_same(*_both(att, *args))

"""The fused step's prologue kernel (graphrt/kernels/step_prologue.py) against the torch ops of
capture/pipeline.py's _step_forward that it replaces: ids -> embeddings, K/V write slots and the
RoPE tables, bit for bit (CPU under Triton's interpreter; the gpu test checks bf16 on the GPU,
where the tables gathered from the load-time table must equal the per-step cos/sin). Also the
two A/B switches this pass adds (GRAPHRT_STEP_PROLOGUE, GRAPHRT_STEP_ROPE)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from graphrt.kernels import step_attention, step_prologue  # noqa: E402
from graphrt.llm import RotaryEmbedding  # noqa: E402

W = 6


def torch_prologue(pend, k, c, mask_ids, embedding, rotary, dead):
    """The torch ops of the step before the first layer (capture/pipeline.py, written out again)."""
    j = torch.arange(W, device=pend.device)[None]
    first_real = (W - k)[:, None]
    real = j >= first_real
    acc_slots = torch.where(real, c[:, None] + j - first_real, dead)
    w0 = c + k
    positions = torch.cat([torch.where(real, acc_slots, 0), w0[:, None] - 1 + j], dim=1).reshape(-1)
    ids = torch.cat([pend, pend[:, -1:], mask_ids], dim=1).reshape(-1)
    write = torch.cat([acc_slots, w0[:, None] + j], dim=1).reshape(-1)
    cos, sin = rotary(positions, embedding.dtype)
    return embedding[ids], cos, sin, write


def _check(dev, dtype, rows, hidden, head_dim, slots, seed):
    gen = torch.Generator().manual_seed(seed)
    vocab = 50
    embedding = torch.randn(vocab, hidden, generator=gen).to(dtype).to(dev)
    rotary = RotaryEmbedding(head_dim, 1e6, device=dev)
    c = torch.randint(1, slots - 2 * W, (rows,), generator=gen)
    c[0] = 1
    k = torch.randint(1, W + 1, (rows,), generator=gen)
    # full state buffers, sliced to the step's rows as the pipeline slices them
    pend = torch.randint(0, vocab, (rows + 2, W), generator=gen)
    mask_ids = torch.full((rows + 2, W - 1), 7)
    args = [t.to(dev) for t in (pend[:rows], k, c, mask_ids[:rows])]
    pro = step_prologue.StepPrologue(rotary, embedding, slots, slots - 1)
    got = pro(*args)
    want = torch_prologue(*args, embedding, rotary, slots - 1)
    for g, w, name in zip(got, want, ("embeds", "cos", "sin", "write slots")):
        assert g.dtype == w.dtype and torch.equal(g, w), name


def test_prologue_equals_torch_ops_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU interpreter test; the gpu test checks bf16 on the GPU")
    _check("cpu", torch.float32, rows=3, hidden=40, head_dim=16, slots=64, seed=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 8, 32])
def test_prologue_equals_torch_ops_gpu(rows):
    _check("cuda", torch.bfloat16, rows=rows, hidden=2048, head_dim=128, slots=4096, seed=rows)


@pytest.mark.parametrize("name, read, default, other", [
    ("GRAPHRT_STEP_PROLOGUE", step_prologue.mode, "kernel", "torch"),
    ("GRAPHRT_STEP_ROPE", step_attention.step_rope_mode, "separate", "attention")])
def test_switch_default_value_and_refusal(monkeypatch, name, read, default, other):
    monkeypatch.delenv(name, raising=False)
    assert read() == default
    monkeypatch.setenv(name, other)
    assert read() == other
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(ValueError, match=name):
        read()

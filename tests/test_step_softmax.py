"""The step softmax (graphrt/kernels/step_softmax.py) against torch's cunn_SoftMaxForward order.

CPU (Triton's interpreter): an independent reference written from torch's kernel (the 1024
per-thread float chains in their vector/tail order, then the warp-shuffle tree) must equal the
kernel's per-thread sums, row sums and bf16 outputs bit for bit, at widths with and without a
scalar tail; a reversed per-thread order must differ. GPU (marked gpu): the outputs must equal
torch.softmax itself bit for bit at the real vocab width, and the self-check must refuse the
reversed order (the fallback to torch)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from graphrt.kernels import step_softmax as ss

NT, ILP = 1024, 8


def torch_order_reference(x: torch.Tensor):
    """(max [rows], thread sums [rows, 1024], row sums [rows], probs) in torch's order, in numpy
    float32 (the exp is numpy's, as the interpreter's is: the test is about order). Per row, as
    ilpReduce does: an unaligned row (shift s > 0) gives thread t >= s element t - s first; from
    the first 16-byte boundary, rounds of 8-wide vectors (thread t: vector t of the round, its 8
    values left to right); then the scalar tail, strided by the block."""
    a = x.float().numpy()
    rows, v = a.shape
    mx = a.max(axis=1).astype(np.float32)
    t = np.arange(NT)
    acc = np.zeros((rows, NT), np.float32)
    shift0 = x.data_ptr() % 16 // x.element_size()
    for r in range(rows):
        def e(idx, r=r):
            return np.exp(a[r, idx] - mx[r]).astype(np.float32)

        s = (r * v + shift0) % ILP
        th = np.zeros(NT, np.float32)
        start = 0
        if s > 0:
            th[s:] = th[s:] + e(t[s:] - s)
            start = NT - s
        full = (v - start) // (ILP * NT)
        for i in range(full):
            for j in range(ILP):
                th = (th + e(start + (i * NT + t) * ILP + j)).astype(np.float32)
        for q in range(start + full * ILP * NT, v, NT):
            ok = q + t < v
            th[ok] = (th[ok] + e((q + t)[ok])).astype(np.float32)
        acc[r] = th

    def warp(vals):  # [..., 32] -> [...]: shuffle-down halving, lane 0's value
        n = 32
        while n > 1:
            n //= 2
            vals = (vals[..., :n] + vals[..., n:2 * n]).astype(np.float32)
        return vals[..., 0]

    total = warp(warp(acc.reshape(rows, 32, 32)))
    probs = (np.exp(a - mx[:, None]).astype(np.float32) / total[:, None]).astype(np.float32)
    return mx, acc, total, torch.from_numpy(probs).to(x.dtype)


@pytest.mark.parametrize("v, dtype", [(2 * ILP * NT + 1000 + 8, torch.bfloat16), (ILP * NT + 4480, torch.bfloat16),
                                      (3 * ILP * NT, torch.bfloat16), (2 * ILP * NT + 4203, torch.bfloat16),
                                      (2 * ILP * NT + 4203, torch.float16), (1501, torch.float16)])
def test_interpreter_matches_torch_order(v, dtype):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU check through Triton's interpreter: set TRITON_INTERPRET=1")
    x = ss.check_rows(9, v, dtype, "cpu", seed=v)  # 9 rows: every shift 0-7 at an odd width
    got_int: dict = {}
    y = ss.triton_softmax(x, internals=got_int)
    mx, acc, total, probs = torch_order_reference(x)
    assert np.array_equal(got_int["max"].numpy(), mx)
    assert np.array_equal(got_int["thread_sums"].numpy().view(np.int32), acc.view(np.int32))
    assert np.array_equal(got_int["totals"].numpy().view(np.int32), total.view(np.int32))
    # outputs below the smallest normal float are left to the GPU test (against torch itself): the
    # interpreter's float32 division/cast does not keep denormals as the device does
    normal = probs.float().abs() >= torch.finfo(torch.float32).tiny
    assert normal.float().mean() > 0.3
    assert torch.equal(y.view(torch.int16)[normal], probs.view(torch.int16)[normal])


def test_interpreter_reversed_order_differs():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU check through Triton's interpreter: set TRITON_INTERPRET=1")
    x = ss.check_rows(2, ILP * NT + 4480, torch.bfloat16, "cpu", seed=3)
    got: dict = {}
    ss.triton_softmax(x, reversed_order=True, internals=got)
    _, acc, _, _ = torch_order_reference(x)
    assert not np.array_equal(got["thread_sums"].numpy().view(np.int32), acc.view(np.int32))


def test_cpu_falls_back_to_torch():
    """Off CUDA (the eager CPU path) StepSoftmax is torch.softmax."""
    sm = ss.StepSoftmax("cpu", torch.bfloat16, 151936)
    assert not sm.fused and "cunn_SoftMaxForward" in sm.reason
    x = torch.randn(2, 151936).to(torch.bfloat16)
    assert torch.equal(sm(x), torch.softmax(x, -1))


def test_env_forces_torch(monkeypatch):
    monkeypatch.setenv("GRAPHRT_STEP_SOFTMAX", "torch")
    assert ss.StepSoftmax("cpu", torch.bfloat16, 151936).reason == "GRAPHRT_STEP_SOFTMAX=torch"
    monkeypatch.setenv("GRAPHRT_STEP_SOFTMAX", "fast")
    with pytest.raises(ValueError, match="GRAPHRT_STEP_SOFTMAX"):
        ss.StepSoftmax("cpu", torch.bfloat16, 151936)


gpu = pytest.mark.gpu


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v", [152681, 151936, 152064, 151936 + 8 * NT * 3 + 5])
def test_gpu_bit_equal_to_torch(dtype, v):
    sm = ss.StepSoftmax("cuda", dtype, v)
    assert sm.fused, sm.reason
    for rows, seed in ((6, 10), (48, 11), (192, 12)):
        x = ss.check_rows(rows, v, dtype, "cuda", seed)
        assert torch.equal(sm(x).view(torch.int16), torch.softmax(x, -1).view(torch.int16))
        assert torch.equal(ss.triton_softmax(x, ctas=8).view(torch.int16), torch.softmax(x, -1).view(torch.int16))
        if dtype == torch.float16:  # the float sum itself, through torch's half_to_float outputs
            assert torch.equal(ss.triton_softmax(x, out_dtype=torch.float32).view(torch.int32),
                               torch._softmax(x, -1, True).view(torch.int32))


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_self_check_refuses_wrong_order():
    reason = ss.self_check("cuda", torch.bfloat16, 152681,
                           kernel=lambda x, **kw: ss.triton_softmax(x, reversed_order=True, **kw))
    assert "differ from torch.softmax" in reason

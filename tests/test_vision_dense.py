"""Dense vision attention over the slot layout (key-padding mask) equals the varlen contract."""

from __future__ import annotations

import pytest
import torch

from graphrt.attention.varlen import emulated
from graphrt.attention.vision_dense import DenseVisionRanges


def test_dense_masked_equals_varlen_contract():
    g = torch.Generator().manual_seed(0)
    b, p, heads, d = 3, 20, 2, 8
    q, k, v = (torch.randn(b * p, heads, d, generator=g) for _ in range(3))
    used = torch.tensor([20, 7, 12], dtype=torch.int32)
    cu = (torch.arange(b + 1) * p).to(torch.int32)
    want = emulated(q, k, v, cu, cu, p, p, used, False)
    got = DenseVisionRanges(p, used, backends=("math",))(q, k, v)
    for i, n in enumerate(used.tolist()):  # rows of pad patches are never read
        torch.testing.assert_close(got[i * p : i * p + n], want[i * p : i * p + n], rtol=1e-5, atol=1e-5)


def test_dense_accepts_strided_qkv_views():
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2 * 8, 3, 2, 4, generator=g)
    used = torch.tensor([8, 5], dtype=torch.int32)
    attend = DenseVisionRanges(8, used, backends=("math",))
    got = attend(qkv[:, 0], qkv[:, 1], qkv[:, 2])
    want = attend(*(qkv[:, i].contiguous() for i in range(3)))
    torch.testing.assert_close(got, want)


@pytest.mark.gpu
@torch.no_grad()
def test_dense_cudnn_equals_fa2_varlen_head_dim_72():
    from graphrt.attention.varlen import torch_fa2

    g = torch.Generator(device="cuda").manual_seed(2)
    b, p, heads, d = 3, 240, 16, 72
    q, k, v = (torch.randn(b * p, heads, d, device="cuda", generator=g).bfloat16() for _ in range(3))
    used = torch.tensor([240, 100, 180], dtype=torch.int32, device="cuda")
    cu = (torch.arange(b + 1, device="cuda") * p).to(torch.int32)
    want = torch_fa2(q, k, v, cu, cu, p, p, used, False).float()
    got = DenseVisionRanges(p, used)(q, k, v).float()
    for i, n in enumerate(used.tolist()):
        a, w = got[i * p : i * p + n], want[i * p : i * p + n]
        assert ((a - w).norm() / w.norm()) < 1e-2

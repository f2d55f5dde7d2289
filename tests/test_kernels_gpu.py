"""The fused kernel set on the GPU (skipped without one): kernels against references at the real
3B widths, and fused graphs against the torch-kernel graphs and the eager generator, token for
token on the tiny (fp16) and mid (bf16, real widths) checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capture import GraphRuntime
from graphrt.layers import RMSNorm
from graphrt.llm import RotaryEmbedding, apply_rope
from test_graphs_gpu import GEN, MID_BUCKETS, TINY_BUCKETS, mid_gpu, near_tie_or_fail, tiny_gpu  # noqa: F401
from test_kernels import W, step_reference
from test_static_path import CASES, eager_tokens, prepare

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("n_split,split_m,min_chunk,mode", [
    (None, None, None, "tiles"), (None, None, None, "split"), (1, None, None, "tiles"), (64, None, 0, "tiles"),
    (4, 64, 0, "tiles"), (16, 32, 0, "tiles"), (1, 16, None, "tiles"),
    (8, 16, 256, "tiles")])  # rows up to 256 keys written directly, longer ones split and merged
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_step_attention_matches_dense_rule_real_widths(n_split, split_m, min_chunk, mode, dtype):
    from graphrt.kernels.step_attention import StepAttention

    gen = torch.Generator(device="cuda").manual_seed(0)
    hq, hkv, d, slots = 16, 2, 128, 3400
    # 1, key-block edges (64), a 640x480 prompt, a long cache near the largest bucket
    cache_len = torch.tensor([1, 63, 64, 65, 552, 3380, 7, 128], device="cuda")
    count = torch.tensor([1, 1, 6, 4, 6, 3, 2, 5], device="cuda")
    rows = len(cache_len)
    k_cache = torch.randn(rows + 1, slots, hkv, d, device="cuda", generator=gen).to(dtype)
    v_cache = torch.randn(rows + 1, slots, hkv, d, device="cuda", generator=gen).to(dtype)
    q = torch.randn(rows * 2 * W, hq, d, device="cuda", generator=gen).to(dtype)
    att = StepAttention(rows, W, hq, hkv, d, "cuda", n_split=n_split, split_m=split_m, min_chunk=min_chunk, mode=mode)
    got = att(q, k_cache, v_cache, cache_len, count)
    want, live = step_reference(q, k_cache, v_cache, cache_len.cpu(), count.cpu())
    assert torch.isfinite(got).all()
    err = (got[live.cuda()].double().cpu() - want[live]).norm() / want[live].norm()
    assert err < 1e-2, err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_ops_match_torch_real_widths(dtype):
    from graphrt.kernels.layer_ops import add_rms_norm, rope_write, silu_mul, transpose

    gen = torch.Generator(device="cuda").manual_seed(1)
    t, d, hq, hkv, hd, inter = 37, 2048, 16, 2, 128, 11008
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen).to(dtype)  # noqa: E731
    x, delta = r(t, d), r(t, d)
    norm = RMSNorm(d, 1e-6, dtype, "cuda")
    norm.weight.data = r(d)
    res, out = add_rms_norm(x, delta, norm.weight, norm.eps)
    assert torch.equal(res, x + delta)  # the residual sum rounds exactly as torch's
    torch.testing.assert_close(out, norm(x + delta), rtol=1e-2, atol=1e-2)
    gate_up = r(t, 2 * inter)
    gate, up = gate_up.chunk(2, -1)
    torch.testing.assert_close(silu_mul(gate_up), F.silu(gate) * up, rtol=1e-2, atol=1e-2)
    qkv = r(t, (hq + 2 * hkv) * hd)
    cos, sin = RotaryEmbedding(hd, 1e6, "cuda")(torch.randint(0, 4000, (t,), device="cuda"), dtype)
    kc, vc = torch.zeros(4, 64, hkv, hd, dtype=dtype, device="cuda"), torch.zeros(4, 64, hkv, hd, dtype=dtype,
                                                                                 device="cuda")
    rows, slots = torch.randint(0, 4, (t,), device="cuda"), torch.randperm(64, device="cuda")[:t]
    q = rope_write(qkv, cos, sin, rows, slots, kc, vc, hq, hkv)
    qr, kr, vr = qkv.split([hq * hd, hkv * hd, hkv * hd], -1)
    torch.testing.assert_close(q, apply_rope(qr.view(t, hq, hd), cos, sin), rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(kc[rows, slots], apply_rope(kr.view(t, hkv, hd), cos, sin), rtol=1e-2, atol=2e-2)
    assert torch.equal(vc[rows, slots], vr.view(t, hkv, hd))
    logits_t = r(152681, 16)  # the LM head's transposed product: odd vocabulary, padded rows
    assert torch.equal(transpose(logits_t, 12), logits_t[:, :12].t())


@pytest.mark.parametrize("which", ["tiny", "mid"])
@pytest.mark.parametrize("name", ["single", "same image, two queries", "ragged five"])
def test_fused_graphs_equal_torch_graphs_and_eager(request, which, name):
    engine = request.getfixturevalue(f"{which}_gpu")
    buckets = TINY_BUCKETS if which == "tiny" else MID_BUCKETS
    pairs = [(img.resize((min(img.width, 160), min(img.height, 160))), q) for img, q in CASES[name]]
    batch = prepare(engine, pairs)
    out = {}
    for kernels in ("fused", "torch"):
        rt = GraphRuntime(engine.model, buckets, GEN, attention="torch-fa2", strict=True, kernels=kernels)
        assert rt.kernels == kernels
        rt.warmup(progress=False)
        out[kernels] = [r.tokens for r in rt.run(batch, GEN)]
    eager = eager_tokens(engine, batch, GEN)
    half = "float16" if which == "tiny" else "bfloat16"
    for kernels, tokens in out.items():
        ties = [near_tie_or_fail(engine, batch, r, got, want, half)
                for r, (got, want) in enumerate(zip(tokens, eager)) if got != want]
        assert len(ties) <= 1, f"{kernels}: several rows diverge: {ties}"


def test_no_allocation_during_fused_replays(tiny_gpu):  # noqa: F811
    batch = prepare(tiny_gpu, CASES["ragged five"])
    rt = GraphRuntime(tiny_gpu.model, TINY_BUCKETS, GEN, attention="torch-fa2", strict=True, kernels="fused")
    rt.warmup(progress=False)
    rt.run(batch, GEN)
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for _ in range(3):
        rt.run(batch, GEN)
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before


def test_fused_refuses_what_it_cannot_run():
    from graphrt.kernels import select_kernels

    assert select_kernels("auto", "cuda", torch.bfloat16) == ("fused", "auto")
    with pytest.raises(RuntimeError, match="fp16 or bf16"):
        select_kernels("fused", "cuda", torch.float32)
    with pytest.raises(RuntimeError, match="fp16 or bf16"):
        select_kernels("auto", "cuda", torch.float32, strict=True)
    assert select_kernels("auto", "cuda", torch.float32)[0] == "torch"

"""The norms folded into the swap-AB GEMMs on the GPU (skipped without one): the folded pair at the
3B step widths in bf16 against the norm kernel + plain GEMMs (the residual bit-equal, the output
within the bound of a one-unit change of its normalized input), and the step graphs with folded
norms (GRAPHRT_STEP_NORM=fold) against the same graphs with the norm kernels (=kernel), token for
token on the tiny and mid checkpoints (divergence only at a provable near-tie, as the graphs-vs-eager
tests allow), replays allocating nothing. GRAPHRT_STEP_GEMM=triton puts the swap-AB kernel on every
step GEMM of the mid checkpoint so that both its pairs fold; the tiny checkpoint's widths get no
swap-AB pick, so nothing folds there (asserted: the switch then changes nothing)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from capture import GraphRuntime
from test_graphs_gpu import GEN, MID_BUCKETS, TINY_BUCKETS, mid_gpu, near_tie_or_fail, tiny_gpu  # noqa: F401
from test_static_path import CASES, prepare

pytestmark = pytest.mark.gpu


# the B=1 picks of the 3B step (benchmarks/results/2026-11-24_final7_*), M=96 and M=384 tiles
PAIRS = [  # (m, k1, n, n_out, bias, silu, producer config, consumer config)
    (12, 2048, 2048, 11008, False, True, (64, 16, 64, 4, 4, 16, False), (64, 16, 128, 1, 4, 5, True)),  # o -> gate/up
    (12, 11008, 2048, 2560, True, False, (64, 16, 128, 4, 4, 6, True), (64, 16, 64, 3, 4, 16, False)),  # down -> qkv
    (96, 11008, 2048, 2560, True, False, (64, 128, 64, 1, 4, 8, True), (64, 128, 128, 1, 4, 4, True)),
    (384, 11008, 2048, 2560, True, False, (64, 128, 64, 1, 4, 8, True), (64, 128, 128, 1, 4, 4, True)),
]


@pytest.mark.parametrize("case", PAIRS)
def test_folded_pair_at_step_widths(case):
    from graphrt.kernels.layer_ops import add_rms_norm
    from graphrt.kernels.norm_fold import consume, produce
    from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_matmul

    m, k1, n, n_out, bias, silu, prod, cons = case
    prod, cons = SwabConfig(*prod), SwabConfig(*cons)
    gen = torch.Generator(device="cuda").manual_seed(m + k1)
    r = lambda *s, scale=1.0: (torch.randn(*s, device="cuda", generator=gen) * scale).to(torch.bfloat16)  # noqa: E731
    h, o_w, res_in = r(m, k1), r(n, k1, scale=k1**-0.5), r(m, n, scale=4.0)
    norm_w, w2 = r(n, scale=0.2) + 1, r(n_out * (2 if silu else 1), n, scale=n**-0.5)
    b2 = r(n_out) if bias else None
    delta = swab_matmul(h, o_w, None, False, prod)
    res, normed = add_rms_norm(res_in, delta, norm_w, 1e-6)
    want = swab_matmul(normed, w2, b2, silu, cons)
    x, ss = produce(h, SimpleNamespace(weight=o_w, bias=None), res_in, prod)
    got = consume(x, ss, SimpleNamespace(weight=norm_w, eps=1e-6), SimpleNamespace(weight=w2, bias=b2), silu, cons)
    assert torch.equal(x, res)
    torch.testing.assert_close(ss.parts.sum(0), res.float().square().sum(-1), rtol=1e-5, atol=0)
    ulp = 2.0**-7
    tol = ulp * (normed.float().abs() @ w2.float().abs().t())
    if silu:
        g_t, u_t = tol.chunk(2, -1)
        tol = (g_t * 1.2 + u_t) * 4
    err = (got.float() - want.float()).abs()
    assert (err <= tol + 2 * ulp * want.float().abs() + 1e-3).all(), (err.max().item(), tol.max().item())
    for _ in range(2):  # the same bits every call (fixed-order sums, counters reset)
        x2, ss2 = produce(h, SimpleNamespace(weight=o_w, bias=None), res_in, prod)
        assert torch.equal(x2, x) and torch.equal(ss2.parts, ss.parts)
        assert torch.equal(consume(x2, ss2, SimpleNamespace(weight=norm_w, eps=1e-6),
                                   SimpleNamespace(weight=w2, bias=b2), silu, cons), got)


@pytest.mark.parametrize("which", ["tiny", "mid"])
@pytest.mark.parametrize("name", ["single", "same image, two queries", "ragged five"])
def test_folded_norm_graphs_equal_norm_kernel_graphs(request, monkeypatch, which, name):
    from graphrt.kernels import norm_fold

    engine = request.getfixturevalue(f"{which}_gpu")
    buckets = TINY_BUCKETS if which == "tiny" else MID_BUCKETS
    pairs = [(img.resize((min(img.width, 160), min(img.height, 160))), q) for img, q in CASES[name]]
    batch = prepare(engine, pairs)
    monkeypatch.setenv("GRAPHRT_STEP_GEMM", "triton")
    out = {}
    for how in ("fold", "kernel"):
        monkeypatch.setenv("GRAPHRT_STEP_NORM", how)
        rt = GraphRuntime(engine.model, buckets, GEN, attention="torch-fa2", strict=True, kernels="fused")
        rt.warmup(progress=False)
        out[how] = [r.tokens for r in rt.run(batch, GEN)]
        if how == "fold":
            torch.cuda.synchronize()
            before = torch.cuda.memory_stats()["allocation.all.allocated"]
            assert [r.tokens for r in rt.run(batch, GEN)] == out[how]  # replays repeat their bits
            torch.cuda.synchronize()
            assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    folded = {k[0]: v for k, v in norm_fold.plans.items() if k[5] == "fold" and k[4] == "triton"
              and k[1][0][1] == engine.model.llm.cfg.hidden_size}
    if which == "mid":
        assert folded.get(12) == norm_fold.FoldPlan(True, True), folded  # B=1 step: both norms fold
    else:
        assert not any(any(p) for p in folded.values()), folded
    half = "float16" if which == "tiny" else "bfloat16"
    ties = [near_tie_or_fail(engine, batch, r, got, want, half)
            for r, (got, want) in enumerate(zip(out["fold"], out["kernel"])) if got != want]
    assert len(ties) <= 1, f"several rows diverge: {ties}"

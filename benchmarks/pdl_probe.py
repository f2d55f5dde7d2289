"""Does programmatic dependent launch work here, and what does it buy the step's GEMMs?

    python benchmarks/pdl_probe.py [--layers 36] [--rows 12 96]

1. The compiled skinny GEMM with PDL holds the grid-dependency ops and the L2 bulk prefetch (PTX).
2. The step's four GEMMs of every layer (QKV+bias, O, gate/up+SiLU, down; 3B widths, distinct
   weights per layer, so they stream from HBM) chained as in the step, each variant captured in a
   CUDA graph: cuBLAS (+ silu_mul), the skinny kernel without PDL, with PDL, with PDL and the
   pre-wait L2 prefetch; with --fp8 also the skinny kernel on e4m3 weights (half the bytes).
   Times per chain (P50 of 7 replays) against the weight-read floor.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
import triton
from bench_util import captured_us


def ptx_check() -> dict:
    from graphrt.kernels.skinny_gemm import _skinny_kernel, block_m_for

    x = torch.randn(12, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(12, 2048, device="cuda", dtype=torch.bfloat16)
    bm = block_m_for(12)
    k = _skinny_kernel[(64, 1, 1)](x, w, y, y, y, y, 12, 2048, 2048, 2048, 2048, 2048, 132, y, HAS_BIAS=False,
                                   SILU=False, SPLIT_K=1, SCALED=False, PF_CHUNKS=4, W_BYTES=2, BLOCK_M=bm, BLOCK_N=32, BLOCK_K=128, PDL=True, PREFETCH=True,
                                   launch_pdl=True, num_warps=4, num_stages=4)
    torch.cuda.synchronize()
    ptx = k.asm["ptx"]
    ok = torch.equal(y, (x.float() @ w.float().t()).to(y.dtype)) or \
        float((y.float() - x.float() @ w.float().t()).abs().max()) < 1.0
    return {"griddepcontrol.wait": "griddepcontrol.wait" in ptx,
            "griddepcontrol.launch_dependents": "griddepcontrol.launch_dependents" in ptx,
            "cp.async.bulk.prefetch.L2": "cp.async.bulk.prefetch.L2" in ptx, "result_close": ok}


def chain_ms(fn) -> float:
    """P50 of 7 replays of one captured call of fn (the whole chain), ms."""
    return captured_us(fn, calls=1, replays=7) / 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--rows", type=int, nargs="+", default=[12, 96])
    ap.add_argument("--fp8", action="store_true", help="also the chain on e4m3 weights (weight-only FP8)")
    args = ap.parse_args()
    from graphrt.kernels.layer_ops import silu_mul
    from graphrt.kernels.skinny_gemm import Config, choose, run_choice, skinny_matmul

    print(json.dumps({"triton": triton.__version__, "torch": torch.__version__, "ptx": ptx_check()}), flush=True)
    dt = torch.bfloat16
    L = args.layers
    ws = [dict(qkv=torch.randn(2560, 2048, device="cuda", dtype=dt) * 0.02, b=torch.randn(2560, device="cuda", dtype=dt),
               o=torch.randn(2048, 2048, device="cuda", dtype=dt) * 0.02,
               gu=torch.randn(22016, 2048, device="cuda", dtype=dt) * 0.02,
               down=torch.randn(2048, 11008, device="cuda", dtype=dt) * 0.02) for _ in range(L)]
    nbytes = sum(t.numel() * 2 for p in ws for t in p.values())
    floor_ms = nbytes / 2.92e12 * 1e3
    for m in args.rows:
        h = torch.randn(m, 2048, device="cuda", dtype=dt)
        a = torch.randn(m, 2048, device="cuda", dtype=dt)

        def cublas():
            for p in ws:
                F.linear(h, p["qkv"], p["b"])
                F.linear(a, p["o"])
                F.linear(silu_mul(F.linear(h, p["gu"])), p["down"])

        res = {"rows": m, "layers": L, "weight_GB": round(nbytes / 1e9, 2), "floor_ms_at_2920GBs": round(floor_ms, 3)}
        os.environ["GRAPHRT_PDL"] = "off"
        res["cublas"] = round(chain_ms(cublas), 3)
        for label, pdl_mode, pf in (("skinny", "off", "1"), ("skinny+pdl", "on", "0"), ("skinny+pdl+prefetch", "on", "1")):
            os.environ["GRAPHRT_PDL"], os.environ["GRAPHRT_STEP_GEMM"] = pdl_mode, "triton"
            os.environ["GRAPHRT_STEP_PREFETCH"] = pf
            cfg = {k: choose(m, ws[0][k], k == "qkv", k == "gu") for k in ("qkv", "o", "gu", "down")}

            def skinny(cfg=cfg):
                for p in ws:
                    run_choice(h, p["qkv"], p["b"], False, cfg["qkv"])  # skinny or swap-AB, as chosen
                    run_choice(a, p["o"], None, False, cfg["o"])
                    run_choice(run_choice(h, p["gu"], None, True, cfg["gu"]), p["down"], None, False, cfg["down"])

            res[label] = round(chain_ms(skinny), 3)
            res[label + "_configs"] = {k: repr(v) for k, v in cfg.items()}
            if label == "skinny" and args.fp8 and all(type(c) is Config for c in cfg.values()):  # weight-only e4m3, same configs: half the weight bytes
                w8 = [{k: (p[k].to(torch.float8_e4m3fn), torch.ones(p[k].shape[0], device="cuda"))
                       for k in ("qkv", "o", "gu", "down")} for p in ws]

                def skinny_fp8(cfg=cfg):
                    for p, q in zip(ws, w8):
                        skinny_matmul(h, q["qkv"][0], p["b"], False, cfg["qkv"], scale=q["qkv"][1])
                        skinny_matmul(a, q["o"][0], None, False, cfg["o"], scale=q["o"][1])
                        g = skinny_matmul(h, q["gu"][0], None, True, cfg["gu"], scale=q["gu"][1])
                        skinny_matmul(g, q["down"][0], None, False, cfg["down"], scale=q["down"][1])

                res["skinny_fp8_weights"] = round(chain_ms(skinny_fp8), 3)
                res["fp8_floor_ms"] = round(floor_ms / 2, 3)
                del w8
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()

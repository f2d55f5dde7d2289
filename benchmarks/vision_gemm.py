"""The vision tower's GEMMs on graphrt's persistent Triton GEMM vs cuBLAS, then the whole tower
(H100, bf16, random MoonViT weights; one run, interleaved A/B):

1. Per shape (M = 1,680 rows = one 640x480 slot, and 53,760 = 32 slots; qkv / wo / fc0 / fc1 of
   MoonViT), CUDA graphs of `calls` back-to-back calls, replayed in alternating order:
   cuBLAS alone (F.linear, or _addmm_activation for fc0), the cuBLAS path the tower runs (with the
   separate RoPE pass after qkv), and every Triton tile of kernels/vision_gemm.py with its fused
   epilogue (qkv: bias + RoPE of q/k; fc0: bias + tanh-GELU). ms per call P50/P90/P99, TFLOP/s.
2. The tower as CUDA graphs at B=1 and B=32 (1,680-patch slots, 1,656 real) and one 2240x2240
   image (25,600 patches, 26,676-row slot): fused tower on cuBLAS vs on GRAPHRT_VISION_GEMM=auto
   (per-shape choice measured at warm-up) vs triton (always the Triton GEMM), unfused as the
   reference for the output difference; P50/P90/P99 and a kernel table per variant.

    python benchmarks/vision_gemm.py --out benchmarks/results/DATE_vgemm_DEVICE.json
Random weights: only timings and path equivalence mean anything here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vision_stage as vs  # noqa: E402
from bench_util import alternating_ms, capture  # noqa: E402
from graphrt.kernels import vision_gemm as vg  # noqa: E402

SHAPES = [("qkv", 3456, 1152, "bias_rope"), ("wo", 1152, 1152, "bias"), ("fc0", 4304, 1152, "bias_gelu"),
          ("fc1", 1152, 4304, "bias")]


def gemm_ab(m: int, rounds: int) -> dict:
    res = {}
    for name, n, k, epilogue in SHAPES:
        x, w, b, cos, sin = (t for t in _operands(m, n, k))
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        calls = max(3, min(20, int(2e12 // (2 * m * n * k))))
        fns = {"cublas alone": (lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)) if epilogue == "bias_gelu"
               else (lambda: F.linear(x, w, b)),
               "cublas path (tower today)": lambda: vg.reference_path(x, w, b, epilogue, cos, sin, 72)}
        for tile in vg.TILES:
            fns[f"triton {tile!r}"] = (lambda tile=tile: vg.vision_linear(x, w, b, epilogue, cos, sin, 72, tile, out))
        graphs = {}
        for key, fn in fns.items():
            try:
                graphs[key] = capture(lambda fn=fn: [fn() for _ in range(calls)], warmups=1)
            except Exception as exc:  # noqa: BLE001 - a tile that does not fit is a result too
                vs.log(f"{name} M={m} {key}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                torch.cuda.synchronize()
        times = alternating_ms(graphs, rounds)
        flops = 2 * m * n * k
        row = {}
        for key, v in times.items():
            v = [t / calls for t in v]
            med = statistics.median(v)
            row[key] = {"p50_ms": round(med, 4), "p90_ms": round(float(np.percentile(v, 90)), 4),
                        "p99_ms": round(float(np.percentile(v, 99)), 4), "tflops": round(flops / med / 1e9, 1)}
        base = row["cublas path (tower today)"]["p50_ms"]
        ours = {k2: r["p50_ms"] for k2, r in row.items() if k2.startswith("triton")}
        if ours:
            best = min(ours, key=ours.get)
            row["best_triton"] = best
            row["best_triton_vs_cublas_path"] = round(ours[best] / base, 3)
        row["work"] = f"M={m} N={n} K={k} epilogue {epilogue}, {calls} calls per graph, {rounds} alternating rounds"
        res[name] = row
        vs.log(f"M={m} {name}:", json.dumps({k2: (r["p50_ms"], r["tflops"]) if isinstance(r, dict) else r
                                              for k2, r in row.items()}))
        del graphs
        torch.cuda.empty_cache()
    return res


def _operands(m, n, k):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=g) / k ** 0.5).bfloat16()
    b = (0.1 * torch.randn(n, device="cuda", generator=g)).bfloat16()
    ang = torch.rand(m, 36, device="cuda", generator=g) * 6.283
    return x, w, b, ang.cos(), ang.sin()


TOWER = [("unfused", False, "varlen", False, "cublas"), ("fused+slot, cuBLAS", True, "slot", True, "cublas"),
         ("fused+slot, GEMM auto", True, "slot", True, "auto"), ("fused+slot, Triton GEMM", True, "slot", True, "triton")]


ATTENTION = [("fused+slot, attention triton", True, "slot", True, "cublas", "triton"),
             ("fused+slot, attention auto", True, "slot", True, "cublas", "auto")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="vision_gemm.json")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    import triton

    report = vs.REPORT
    report["env"] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                     "date": time.strftime("%Y-%m-%d")}
    vs.log(report["env"])
    steps = [("gemm1", lambda: report.__setitem__("gemms_M1680", gemm_ab(1680, 30))),
             ("gemm32", lambda: report.__setitem__("gemms_M53760", gemm_ab(53760, 10))),
             ("vision1", lambda: vs.vision_ab(1, 1680, 1656, (36, 46), 40, profile="all", variants=TOWER)),
             ("vision32", lambda: vs.vision_ab(32, 1680, 1656, (36, 46), 10, profile="all", variants=TOWER)),
             ("vision25600", lambda: vs.vision_ab(1, 26676, 25600, (160, 160), 6, profile="all", variants=TOWER[1:])),
             # the slot attention kernel A/B (GRAPHRT_VISION_ATTENTION_KERNEL=triton vs auto), cuBLAS GEMMs
             ("attn1", lambda: vs.vision_ab(1, 1680, 1656, (36, 46), 60, profile="all", variants=ATTENTION)),
             ("attn32", lambda: vs.vision_ab(32, 1680, 1656, (36, 46), 10, profile="all", variants=ATTENTION)),
             ("attn25600", lambda: vs.vision_ab(1, 26676, 25600, (160, 160), 4, profile=False, variants=ATTENTION))]

    def chooser():
        report["chooser"] = {f"{k[0]}x{k[1]}x{k[2]} {k[4]} {k[5]}": {repr(c): round(v, 4) for c, v in t.items()}
                             for k, t in vg.timings.items()}
        report["chooser_picked"] = {f"{k[0]}x{k[1]}x{k[2]} {k[4]} {k[5]}": repr(c) for k, c in vg._choice.items()}
        report["chooser_seconds"] = round(vg.choose_seconds, 1)

    vs.run_steps(steps, report, args.out, args.only, after=chooser)


if __name__ == "__main__":
    main()

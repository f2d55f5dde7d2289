"""The step's GEMMs per LM shape: bf16 (what the fused step picks: graphrt/kernels/skinny_gemm.py's
split-K kernel or cuBLAS) against the skinny FP8 kernel (calib/triton_gemm.py) untuned, chosen and
over a grid of tiles / split-K, with each one's weight-read floor.

    python benchmarks/fp8_skinny_ab.py --rows 12 --out-dir benchmarks/results

Every time is one call inside a CUDA graph over weight copies that exceed the L2 (weights from
HBM, as in the 36-layer step), median of 5 replays. Columns: bf16 best (and which), FP8 untuned
(the kernel before split-K), FP8 chosen (calib's warm-up choice from its short list), FP8 grid
best, FP8 with the bf16 input quantized in the kernel (o_proj's path) against the separate
quantizer + GEMM, and the floors at the measured copy rate. gate/up: bf16 has SiLU*up in its
epilogue; the FP8 row adds the SiLU*mul+quantize producer (graphrt/kernels/fp8_ops.py) to match.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import result_stem  # noqa: E402
from step_kernels import copy_bandwidth_gbs  # noqa: E402

from calib import FP8Linear, triton_gemm  # noqa: E402
from graphrt.kernels import skinny_gemm  # noqa: E402
from graphrt.timing import graph_call_ms  # noqa: E402

SHAPES = {"qkv_proj": (2560, 2048, True), "o_proj": (2048, 2048, False), "gate_up_proj": (22016, 2048, False),
          "down_proj": (2048, 11008, False)}  # name: (N, K, bias)


def grid(n: int, k: int) -> list[tuple]:
    out = []
    for bn in (16, 32, 64, 128):
        for bk in (128, 256, 512):
            for split in (1, 2, 4, 8):
                tiles = triton.cdiv(n, bn) * split
                if not 64 <= tiles <= 1400 or k // split < bk or bn * bk > 128 * 256:
                    continue
                stages = 3 if bk == 512 or bn * bk >= 128 * 128 else 4
                out.append((bn, bk, split, 8 if bn == 128 else 4, stages))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[12])
    ap.add_argument("--no-grid", action="store_true", help="only the untuned and short-listed FP8 configs")
    ap.add_argument("--prefill-rows", type=int, default=0, help="also time _scaled_mm (row-wise) with and without "
                    "use_fast_accum at this many rows (B=32 prefill: 32 x 512), with each one's error")
    ap.add_argument("--skip-skinny", action="store_true")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="fp8-skinny-ab")
    args = ap.parse_args()
    out_dir, stem, report = result_stem(args.out_dir, args.tag, args=vars(args))
    dev = torch.device("cuda")
    bw = copy_bandwidth_gbs()
    report["copy_gbs"] = round(bw)
    rows_out = []
    for m in [] if args.skip_skinny else args.rows:
        for name, (n, k, bias) in SHAPES.items():
            silu = name == "gate_up_proj"
            bf = skinny_gemm.time_candidates(m, n, k, torch.bfloat16, dev, bias, silu,
                                             skinny_gemm.shortlist(m, n // 2 if silu else n, k, silu))
            bf_best = min(bf, key=bf.get)
            configs = triton_gemm.shortlist(n, k)
            if not args.no_grid:
                configs += [c for c in grid(n, k) if c not in configs]
            f8 = triton_gemm.time_skinny(n, k, dev, configs, rows=m)
            chosen = triton_gemm.choose_skinny(n, k, dev)
            f8_short = {c: v for c, v in f8.items() if c in triton_gemm.shortlist(n, k)}
            grid_best = min(f8, key=f8.get)
            inside = triton_gemm.time_skinny(n, k, dev, [chosen], rows=m, x_fp8=False).get(chosen)
            # the separate quantizer in front (the path before: o_proj's own quantizer launch)
            lin = FP8Linear((torch.randn(n, k, device=dev) / k**0.5).to(torch.bfloat16), None, 4.0 / 448)
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            quant = 1e3 * graph_call_ms(lambda i, lin=lin, x=x: lin.quantize(x), 20)
            extra = 0.0
            if silu:  # FP8 gate/up output -> SiLU*up -> e4m3 input of down: the producer kernel
                from graphrt.kernels.fp8_ops import silu_mul_fp8

                down = FP8Linear(torch.randn(64, n // 2, device=dev, dtype=torch.bfloat16), None, 4.0 / 448)
                gu = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
                extra = 1e3 * graph_call_ms(lambda i, gu=gu, down=down: silu_mul_fp8(gu, down), 20)
            row = {"rows": m, "linear": name, "N": n, "K": k,
                   "bf16_best": str(bf_best), "bf16_best_us": round(bf[bf_best] * 1e3, 2),
                   "bf16_cublas_us": round(bf["cublas"] * 1e3, 2),
                   "bf16_floor_us": round(n * k * 2 / bw / 1e3, 2),
                   "fp8_untuned_us": round(f8.get(triton_gemm.untuned(n, k), float("nan")), 2),
                   "fp8_chosen": str(chosen), "fp8_chosen_us": round(f8.get(chosen, float("nan")), 2),
                   "fp8_short_best": str(min(f8_short, key=f8_short.get)) if f8_short else None,
                   "fp8_grid_best": str(grid_best), "fp8_grid_best_us": round(f8[grid_best], 2),
                   "fp8_bf16_in_chosen_us": round(inside, 2) if inside else None,
                   "quantizer_us": round(quant, 2), "silu_producer_us": round(extra, 2),
                   "fp8_floor_us": round(n * k / bw / 1e3, 2),
                   "fp8_grid": {str(c): round(v, 2) for c, v in sorted(f8.items(), key=lambda kv: kv[1])[:8]}}
            rows_out.append(row)
            print(json.dumps(row), flush=True)
    report["rows"] = rows_out
    if args.prefill_rows:
        report["fast_accum"] = fast_accum_rows(args.prefill_rows, dev)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


def _event_ms(fn, reps: int = 10) -> float:
    fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def fast_accum_rows(m: int, dev) -> list[dict]:
    """Prefill-size FP8 GEMMs: _scaled_mm row-wise, fp32 accumulation vs use_fast_accum, time and
    error against the exact product of the same e4m3 operands (fp32 matmul, TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    out = []
    for name, (n, k, _) in SHAPES.items():
        lin = FP8Linear((torch.randn(n, k, device=dev) / k**0.5).to(torch.bfloat16), None, 4.0 / 448)
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        q, rs = lin.quantize(x)
        exact = (q.float() * rs) @ (lin.weight_fp8.float() * lin.weight_scale.t()).t()
        row = {"rows": m, "linear": name, "N": n, "K": k}
        for fast in (False, True):
            def mm(fast=fast):
                return torch._scaled_mm(q, lin.weight_fp8.t(), scale_a=rs, scale_b=lin.weight_scale,
                                        out_dtype=torch.bfloat16, use_fast_accum=fast)
            ms = _event_ms(mm)
            err = ((mm().float() - exact).norm() / exact.norm()).item()
            tag = "fast" if fast else "fp32acc"
            row[f"{tag}_ms"] = round(ms, 3)
            row[f"{tag}_TFLOPs"] = round(2 * m * n * k / ms / 1e9)
            row[f"{tag}_rel_err"] = float(f"{err:.3g}")
        del exact
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def markdown(r: dict) -> str:
    lines = [f"# Step GEMMs per shape, bf16 vs skinny FP8 ({r['date']}, {r['device']}, torch {r['torch']})", "",
             f"us per call from HBM (CUDA graph over weight copies > L2); copy rate {r['copy_gbs']} GB/s = the floors.",
             "gate/up: bf16 includes SiLU*up (epilogue or kernel); the FP8 'total' adds the SiLU*mul+quantize producer.",
             "", "| rows | linear | bf16 best | bf16 floor | FP8 untuned | FP8 chosen | FP8 grid best | FP8 bf16-in | "
             "quantizer | FP8 total (chosen + producer) | FP8 floor |", "| --- " * 11 + "|"]
    for x in r["rows"]:
        total = x["fp8_chosen_us"] + x["silu_producer_us"]
        lines.append(f"| {x['rows']} | {x['linear']} | {x['bf16_best_us']} ({x['bf16_best']}) | {x['bf16_floor_us']} | "
                     f"{x['fp8_untuned_us']} | {x['fp8_chosen_us']} {x['fp8_chosen']} | {x['fp8_grid_best_us']} "
                     f"{x['fp8_grid_best']} | {x['fp8_bf16_in_chosen_us']} | {x['quantizer_us']} | {round(total, 2)} | "
                     f"{x['fp8_floor_us']} |")
    if r.get("fast_accum"):
        lines += ["", "_scaled_mm row-wise at prefill size, fp32 accumulation vs use_fast_accum (error: vs the exact "
                  "product of the same e4m3 operands, relative Frobenius):", "",
                  "| rows | linear | fp32-acc ms | TFLOP/s | rel err | fast ms | TFLOP/s | rel err |", "| --- " * 8 + "|"]
        lines += [f"| {x['rows']} | {x['linear']} | {x['fp32acc_ms']} | {x['fp32acc_TFLOPs']} | {x['fp32acc_rel_err']} | "
                  f"{x['fast_ms']} | {x['fast_TFLOPs']} | {x['fast_rel_err']} |" for x in r["fast_accum"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

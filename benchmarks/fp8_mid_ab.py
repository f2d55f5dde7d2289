"""The mid-rows FP8 GEMM (calib/fp8_mid_gemm.py) against torch._scaled_mm on the 3B LM's shapes.

    python benchmarks/fp8_mid_ab.py --rows 96 384 464 512 1024 --out-dir DIR

Per shape (qkv with bias, o, gate/up, down) and row count: every shortlisted config of the kernel is
timed in a CUDA graph of 36 calls over 36 distinct weight copies (more than the L2), the fastest is
kept, then A = _scaled_mm (row-wise, fast accumulation, bias in the epilogue) and B = that config are
replayed interleaved (A, B, B, A, ...): microseconds per call P50 / P90, TFLOP/s at P50. Also what
the warm-up chooser would pick (choose_mid's rule: the fastest, _scaled_mm included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch

from bench_util import capture, event_ms
from calib.fp8_mid_gemm import mid_fp8_linear, shortlist

SHAPES = {"qkv": (2560, 2048, True), "o": (2048, 2048, False), "gate_up": (22016, 2048, False),
          "down": (2048, 11008, False)}
CALLS = 36


def graph_of(fn) -> torch.cuda.CUDAGraph:
    """fn(0) .. fn(CALLS - 1) in one CUDA graph (one call per distinct weight copy)."""
    return capture(lambda: [fn(i) for i in range(CALLS)], warmups=1)


def replay_us(g: torch.cuda.CUDAGraph) -> float:
    return 1e3 * event_ms(g.replay) / CALLS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[96, 384, 464, 512, 1024])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="fp8mid")
    args = ap.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    gen = torch.Generator(device=dev).manual_seed(0)
    rows_out = []
    for name in args.shapes.split(","):
        n, k, has_bias = SHAPES[name]
        ws = [(torch.randn(n, k, device=dev, generator=gen) * 8).to(torch.float8_e4m3fn) for _ in range(CALLS)]
        w_scale = torch.rand(1, n, device=dev, generator=gen) * 1e-3
        bias = torch.randn(n, device=dev, generator=gen).to(torch.bfloat16) if has_bias else None
        for m in args.rows:
            x = torch.randn(m, k, device=dev, generator=gen).to(torch.float8_e4m3fn)
            rs = torch.rand(m, 1, device=dev, generator=gen) + 0.5

            def cublas(i):
                return torch._scaled_mm(x, ws[i].t(), scale_a=rs, scale_b=w_scale, bias=bias,
                                        out_dtype=torch.bfloat16, use_fast_accum=True)
            ga = graph_of(cublas)
            sweep = {}
            for cfg in shortlist(m, n, k, sms):
                try:
                    g = graph_of(lambda i, cfg=cfg: mid_fp8_linear(x, ws[i], rs, w_scale, bias, cfg))
                except Exception as exc:  # noqa: BLE001
                    print(f"  {name} M={m} {cfg} skipped: {str(exc).splitlines()[0][:100]}")
                    continue
                sweep[cfg] = float(np.median([replay_us(g) for _ in range(5)]))
                del g
            best = min(sweep, key=sweep.get)
            gb = graph_of(lambda i: mid_fp8_linear(x, ws[i], rs, w_scale, bias, best))
            ya, yb = cublas(0).float(), mid_fp8_linear(x, ws[0], rs, w_scale, bias, best).float()
            rel = float((ya - yb).norm() / ya.norm())
            ta, tb = [], []
            for r in range(args.rounds):
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    (ta if which == 0 else tb).append(replay_us(ga if which == 0 else gb))
            del ga, gb
            flop = 2 * m * n * k
            row = {"shape": name, "M": m, "N": n, "K": k, "bias": has_bias,
                   "scaled_mm_p50_us": round(float(np.percentile(ta, 50)), 2),
                   "scaled_mm_p90_us": round(float(np.percentile(ta, 90)), 2),
                   "mid_p50_us": round(float(np.percentile(tb, 50)), 2),
                   "mid_p90_us": round(float(np.percentile(tb, 90)), 2),
                   "best_config": list(best), "rel_diff_vs_scaled_mm": rel,
                   "sweep_us": {str(c): round(t, 2) for c, t in sorted(sweep.items(), key=lambda kv: kv[1])}}
            row["scaled_mm_tflops"] = round(flop / row["scaled_mm_p50_us"] / 1e6, 1)
            row["mid_tflops"] = round(flop / row["mid_p50_us"] / 1e6, 1)
            row["speedup"] = round(row["scaled_mm_p50_us"] / row["mid_p50_us"], 3)
            rows_out.append(row)
            print(f"{name:8s} M={m:5d}: _scaled_mm {row['scaled_mm_p50_us']:7.2f} us ({row['scaled_mm_tflops']:6.1f} "
                  f"TF/s)  mid {row['mid_p50_us']:7.2f} us ({row['mid_tflops']:6.1f} TF/s) {best}  x{row['speedup']}"
                  f"  rel diff {rel:.2e}", flush=True)
        ws.clear()
        torch.cuda.empty_cache()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}_{args.tag}_gemm"
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "calls_per_graph": CALLS, "rounds": args.rounds}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows_out}, indent=1))
    lines = [f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}: us per call in a graph of {CALLS} "
             "calls over distinct weight copies, interleaved, P50 (P90)", "",
             "| shape | M | _scaled_mm us | TF/s | mid us | TF/s | speedup | config (BM,BN,BK,SK,w,s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows_out:
        lines.append(f"| {r['shape']} | {r['M']} | {r['scaled_mm_p50_us']} ({r['scaled_mm_p90_us']}) | "
                     f"{r['scaled_mm_tflops']} | {r['mid_p50_us']} ({r['mid_p90_us']}) | {r['mid_tflops']} | "
                     f"{r['speedup']} | {tuple(r['best_config'])} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

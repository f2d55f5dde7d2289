"""Tuning sweep of the step GEMMs (graphrt/kernels/skinny_gemm.py and the swap-AB kernel,
graphrt/kernels/swap_ab_gemm.py) against cuBLAS.

    python benchmarks/skinny_gemm_tune.py --batch 1 2 4 8 16 32 --out-dir benchmarks/results

For each GEMM of the 3B step (qkv + bias, o, gate/up + SiLU*up, down) and M = 12 * batch rows:
the skinny kernel's configs (`--skinny all`: every candidate; `shortlist`: what start-up times),
the swap-AB kernel's configs (`--swab all`: every candidate; `shortlist`: what start-up times)
and cuBLAS (+ the separate SiLU*mul kernel for gate/up), each timed inside a CUDA graph over enough weight copies to stream from HBM (not
L2). Prints per shape and M: cuBLAS, the best config overall, the best of each kernel, and the
weight GB/s against the measured copy rate. Writes JSON + markdown."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_kernels import copy_bandwidth_gbs  # noqa: E402

from graphrt.kernels.skinny_gemm import candidates, shortlist, swab_shortlist, time_candidates  # noqa: E402
from graphrt.kernels.swap_ab_gemm import SwabConfig, swab_candidates  # noqa: E402

SHAPES = {"qkv": (2560, 2048, True, False), "o": (2048, 2048, False, False),
          "gate_up+silu": (22016, 2048, False, True), "down": (2048, 11008, False, False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--skinny", choices=["all", "shortlist", "none"], default="all", help="skinny_gemm configs to time")
    ap.add_argument("--swab", choices=["all", "shortlist", "off"], default="all",
                    help="swap-AB configs to time: every candidate, or the start-up shortlist")
    ap.add_argument("--tag", default="skinny-gemm-tune")
    args = ap.parse_args()
    bw = copy_bandwidth_gbs()
    dev = torch.cuda.get_device_name(0)
    print(f"{dev}; copy {bw:.0f} GB/s", flush=True)
    rows = []
    for name, (n, k, bias, silu) in SHAPES.items():
        wbytes = n * k * 2
        floor_us = wbytes / (bw * 1e9) * 1e6
        for b in args.batch:
            m = 12 * b
            out_n = n // 2 if silu else n
            configs = {"all": candidates, "shortlist": shortlist, "none": lambda *a: []}[args.skinny](m, out_n, k, silu)
            if args.swab != "off":
                configs = configs + {"all": swab_candidates, "shortlist": swab_shortlist}[args.swab](m, out_n, k, silu)
            t = time_candidates(m, n, k, torch.bfloat16, torch.device("cuda"), bias, silu, configs)
            ours = {c: v for c, v in t.items() if c != "cublas"}
            if not ours:
                print(f"{name} B={b}: no Triton config ran", flush=True)
                continue
            short = set(shortlist(m, out_n, k, silu))
            best = min(ours, key=ours.get)
            best_short = min((c for c in ours if c in short), key=ours.get, default=None)
            best_swab = min((c for c in ours if isinstance(c, SwabConfig)), key=ours.get, default=None)
            row = {"gemm": name, "batch": b, "m": m, "n": n, "k": k, "floor_us": round(floor_us, 2),
                   "cublas_us": round(t["cublas"] * 1e3, 2), "best": repr(best), "best_us": round(ours[best] * 1e3, 2),
                   "shortlist_best": repr(best_short),
                   "shortlist_us": None if best_short is None else round(ours[best_short] * 1e3, 2),
                   "swab_best": repr(best_swab), "swab_us": None if best_swab is None else round(ours[best_swab] * 1e3, 2),
                   "best_gbs": round(wbytes / (ours[best] * 1e-3) / 1e9), "cublas_gbs": round(wbytes / (t["cublas"] * 1e-3) / 1e9),
                   "all_us": {repr(c): round(v * 1e3, 2) for c, v in sorted(ours.items(), key=lambda x: x[1])}}
            rows.append(row)
            print(json.dumps({k_: v for k_, v in row.items() if k_ != "all_us"}), flush=True)
            print("   top:", list(row["all_us"].items())[:6], flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{dt.date.today().isoformat()}_{args.tag}_{'H100' if 'H100' in dev else dev.replace(' ', '_')}"
    stem.with_suffix(".json").write_text(json.dumps({"device": dev, "copy_gbs": round(bw), "rows": rows}, indent=1))
    lines = [f"# Skinny step GEMM vs cuBLAS ({dt.date.today().isoformat()}, {dev}, torch {torch.__version__}, bf16)", "",
             f"Weights streamed from HBM (copies > L2), each timed in a CUDA graph; copy rate {bw:.0f} GB/s. "
             "gate_up+silu: cuBLAS column = GEMM + the SiLU*mul kernel.", "",
             "| GEMM | B | M | floor us | cuBLAS us | best us | best config | skinny shortlist us | swap-AB us | "
             "swap-AB config | best GB/s | cuBLAS GB/s |",
             "| --- " * 12 + "|"]
    lines += [f"| {r['gemm']} | {r['batch']} | {r['m']} | {r['floor_us']} | {r['cublas_us']} | {r['best_us']} | "
              f"{r['best']} | {r['shortlist_us']} | {r['swab_us']} | {r['swab_best']} | {r['best_gbs']} | "
              f"{r['cublas_gbs']} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md", flush=True)


if __name__ == "__main__":
    main()

"""Tile configs of the weight-only FP8 GEMM (calib/triton_gemm.w8a16_linear) on the LM's shapes.

    python benchmarks/w8a16_tune.py --out w8a16_configs.json

Per LM linear shape and row count (12 / 96 / 384 rows: one MTP step at B=1 / 8 / 32; 512: the
B=1 prefill), each candidate config, and cuBLAS on weights dequantized per call, timed
inside a CUDA graph of 20 calls (median of 7 replays), beside bf16 F.linear and the W8A8 path
(quantizer + its GEMM). The JSON's "best" list is what GRAPHRT_W8A16_CONFIGS reads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import torch
import torch.nn.functional as F

from bench_util import captured_us
from calib import FP8Linear
from calib.triton_gemm import row_bucket, w8a16_config, w8a16_linear

SHAPES = {"qkv_proj": (2048, 2560), "o_proj": (2048, 2048), "gate_up_proj": (2048, 22016), "down_proj": (11008, 2048)}
SKINNY = [(32, 256, 4, 4), (64, 128, 4, 4), (16, 512, 4, 3), (32, 512, 4, 3), (64, 256, 4, 3), (128, 128, 4, 3),
          (16, 256, 2, 4), (32, 128, 2, 4)]
TILES = [(32, 64, 256, 4, 3), (32, 128, 128, 4, 4), (64, 64, 128, 4, 3), (64, 128, 64, 4, 3), (64, 128, 128, 8, 3),
         (128, 64, 64, 4, 3), (128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (64, 256, 64, 8, 3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[12, 96, 384, 512])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows_out, best = [], []
    for name, (k, n) in SHAPES.items():
        w = (torch.randn(n, k, device="cuda") / k**0.5).to(torch.bfloat16)
        lin = FP8Linear(w, None, 4.0 / 448, act="none")
        w8a8 = FP8Linear(w, None, 4.0 / 448)
        for m in args.rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            want = (x.float() @ lin.dequantized_weight().t())
            row = {"linear": name, "rows": m, "N": n, "K": k, "bf16_us": round(captured_us(lambda: F.linear(x, w)), 2),
                   "w8a8_us": round(captured_us(lambda: w8a8(x)), 2)}
            deq = lambda: F.linear(x, (lin.weight_fp8.float() * lin.weight_scale.t()).to(torch.bfloat16))  # noqa: E731
            cands = {"cublas": deq} if m >= 384 else {}
            configs = [(max(16, 1 << (m - 1).bit_length()),) + c for c in SKINNY] if m <= 64 else TILES
            configs = [w8a16_config(m, n, k)] + [c for c in configs if c != w8a16_config(m, n, k)]
            for cfg in configs:
                try:
                    got = w8a16_linear(x, lin.weight_fp8, lin.weight_scale, None, cfg).float()
                    err = ((got - want).norm() / want.norm()).item()
                    if err > 1e-2:
                        row[f"{cfg}_error"] = f"rel diff {err:.3g}"
                        continue
                except Exception as exc:  # a config the compiler refuses: say so, keep going
                    row[f"{cfg}_error"] = str(exc).splitlines()[0][:120]
                    continue
                cands[cfg] = lambda cfg=cfg: w8a16_linear(x, lin.weight_fp8, lin.weight_scale, None, cfg)
            times = {}
            for c, fn in cands.items():
                try:
                    times[c] = round(captured_us(fn), 2)
                except Exception as exc:  # noqa: BLE001 - a config that fails under capture: skip it
                    row[f"{c}_error"] = str(exc).splitlines()[0][:120]
            row["candidates_us"] = {str(c): t for c, t in times.items()}
            row["default_us"] = times.get(w8a16_config(m, n, k))
            pick = min(times, key=times.get)
            row["best"], row["best_us"] = str(pick), times[pick]
            row["best_weight_GBs"] = round(n * k / times[pick] / 1e3, 1)
            rows_out.append(row)
            best.append({"bucket": row_bucket(m), "N": n, "K": k, "rows": m,
                         "config": pick if pick == "cublas" else list(pick), "us": times[pick]})
            print(json.dumps({k_: v for k_, v in row.items() if k_ != "candidates_us"}), flush=True)
    out = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "rows": rows_out, "best": best}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

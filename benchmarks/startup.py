"""Start-up time: load a checkpoint and capture every default bucket's graphs, printed.

    python benchmarks/startup.py --checkpoint DIR [--kernels fused] [--fp8 calib.json]

Run it twice with one TRITON_CACHE_DIR: the first run on an empty directory is the cold start
(Triton compiles every kernel specialization), the second the warm one (kernels from the disk
cache). Prints one JSON line: load, capture and total seconds, graph count, pool size; with --fp8 also
the seconds the FP8 GEMM choosers spent timing configs at warm-up (compiles included)."""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from graphrt import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--kernels", default="fused")
    ap.add_argument("--label", default="")
    ap.add_argument("--fp8", help="an FP8 calibration file (graphrt calibrate): the FP8 engine's start-up")
    args = ap.parse_args()
    t0 = time.perf_counter()
    engine = Engine.from_pretrained(args.checkpoint, graphs="on", kernels=args.kernels, progress=False,
                                    **({"fp8": args.fp8} if args.fp8 else {}))
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    st = engine.status()
    print(json.dumps({"label": args.label, "kernels": st["kernels"], "ready_s": round(total, 1),
                      "capture_s": st["capture_s"], "load_s": round(total - st["capture_s"], 1),
                      "graphs": st["graphs"], "graph_pool_mib": st["graph_pool_mib"],
                      "triton_cache": os.environ.get("TRITON_CACHE_DIR", "default"),
                      "device": torch.cuda.get_device_name(0), **fp8_choosers(args.fp8)}), flush=True)


def fp8_choosers(fp8: str | None) -> dict:
    if not fp8:
        return {}
    from calib import fp8_mid_gemm

    return {"fp8": fp8, "mid_gemm_choose_s": round(fp8_mid_gemm.choose_seconds, 1),
            "mid_gemm_choices": len(fp8_mid_gemm._CHOICE)}


if __name__ == "__main__":
    main()

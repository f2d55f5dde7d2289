"""The step softmax (graphrt/kernels/step_softmax.py) against torch.softmax on this device:
bit-equality over many crafted rows, then interleaved timings.

    python benchmarks/step_softmax.py --out-dir benchmarks/results

Work: [rows, V] bf16 logits -> probs, rows = 6 x B (the step's window rows) for B in 1, 8, 32,
V = 152,681 (the LM vocab: odd, so rows start at every 16-byte shift). Bit-equality: every element of every row of several crafted sets
(scales 0.05-60, ties at the max, -inf and the dtype's min as masks leave them, values near the
dtype's range), bf16 and fp16, at V and at widths with other tails. Timing: CUDA events around 20
calls captured in one CUDA graph, torch and triton alternating, P50/P90/P99 of 15 rounds; GB/s = the floor's bytes (read the
row twice from L2/HBM is not counted: one read + one write) per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch

from graphrt.kernels import step_softmax as ss


def graphed(fn, x, n=20):
    """n calls of fn(x) captured in one CUDA graph (as the step runs them: no Python launch cost)."""
    for _ in range(2):
        fn(x)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn(x)
    return g


def time_ms(g, n=20):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--vocab", type=int, default=152681)
    args = ap.parse_args()
    report = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "equality": [], "timing": []}
    v = args.vocab
    for dtype in (torch.bfloat16, torch.float16):
        for width in (v, 151936, v + 8 * 1024 * 2 + 23, 65536, 30000 + 7):
            for rows, seed in ((6, 1), (48, 2), (192, 3), (96, 4)):
                x = ss.check_rows(rows, width, dtype, "cuda", seed)
                ref = torch.softmax(x, -1).view(torch.int16)
                for ctas in (8, 16):
                    got = ss.triton_softmax(x, ctas=ctas).view(torch.int16)
                    bad = int((got != ref).sum())
                    report["equality"].append({"dtype": str(dtype), "V": width, "rows": rows, "ctas": ctas,
                                               "values": x.numel(), "differ": bad})
                if dtype == torch.float16:  # fp32 outputs: the sum's every bit shows
                    ref32 = torch._softmax(x, -1, True).view(torch.int32)
                    bad = int((ss.triton_softmax(x, out_dtype=torch.float32).view(torch.int32) != ref32).sum())
                    report["equality"].append({"dtype": "fp16->fp32", "V": width, "rows": rows, "ctas": 0,
                                               "values": x.numel(), "differ": bad})
            print(json.dumps(report["equality"][-1]), flush=True)
    g = torch.Generator(device="cuda").manual_seed(5)
    for trial in range(20):  # plain random logits at the LM's scale, many rows
        x = (torch.randn(96, v, device="cuda", generator=g) * (1 + trial)).to(torch.bfloat16)
        bad = int((ss.triton_softmax(x).view(torch.int16) != torch.softmax(x, -1).view(torch.int16)).sum())
        report["equality"].append({"dtype": "bf16 randn", "V": v, "rows": 96, "ctas": 0, "values": x.numel(),
                                   "differ": bad})
    total = sum(e["values"] for e in report["equality"])
    differ = sum(e["differ"] for e in report["equality"])
    report["equality_summary"] = {"values": total, "differ": differ}
    print("bit-equality:", report["equality_summary"], flush=True)
    report["reversed_order_self_check"] = ss.self_check("cuda", torch.bfloat16, v,
                                                       kernel=lambda t, **kw: ss.triton_softmax(t, reversed_order=True, **kw))
    print("reversed order:", report["reversed_order_self_check"], flush=True)

    for b in (1, 8, 32):
        x = ss.check_rows(6 * b, v, torch.bfloat16, "cuda", 7)
        fns = {"torch": lambda t: torch.softmax(t, -1), "triton": ss.triton_softmax}
        gs = {k: graphed(f, x) for k, f in fns.items()}
        for g in gs.values():
            time_ms(g)
        xs = {k: [] for k in fns}
        for r in range(15):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                xs[k].append(time_ms(gs[k]))
        for k, s in xs.items():
            p50 = float(np.percentile(s, 50))
            row = {"B": b, "rows": 6 * b, "kernel": k, "p50_us": round(p50 * 1e3, 1),
                   "p90_us": round(float(np.percentile(s, 90)) * 1e3, 1),
                   "p99_us": round(float(np.percentile(s, 99)) * 1e3, 1),
                   "gbs": round(2 * x.numel() * 2 / (p50 / 1e3) / 1e9)}
            report["timing"].append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out_dir) / f"{report['date']}_tail_softmax_{report['device'].replace(' ', '-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()

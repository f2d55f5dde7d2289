"""The step's argmax + top-k lists alone: torch's kernels (graphrt.mtp.candidates + argmax) vs
graphrt/kernels/step_topk.py's two, each captured in a CUDA graph, interleaved (A,B,B,A).

    python benchmarks/step_topk.py --batch 1 8 32 --out-dir benchmarks/results

Work: probs [B, 6, V] bf16 (V = 152,681, a softmax of random logits with tied levels), the
argmax of 6 slots and torch.topk k=4 over slots 1-4, k=5 over slots 1-5. Bytes read by the
Triton pair: B*6*V*2 (the chunk pass) plus the chunk candidates; printed with the achieved GB/s
against the measured device copy bandwidth. The outputs are compared (equal) before timing."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch

from graphrt.kernels import step_topk as st

V = 152_681


def graph(fn, *args):
    for _ in range(2):
        fn(*args)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn(*args)
    return g, out


def time_graph(g, n: int = 20) -> float:
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1000 / n  # us per replay


def copy_gbs() -> float:
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(10):
        y.copy_(x)
    b.record()
    torch.cuda.synchronize()
    return 2 * x.numel() * 10 / (a.elapsed_time(b) / 1000) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args()
    tables = st._Tables("cuda", 4, 5)
    bw = copy_gbs()
    rows = []
    for b in args.batch:
        g = torch.Generator().manual_seed(b)
        logits = (torch.randn(b, 6, V, generator=g) * 2).round() / 2  # tied levels
        probs = torch.softmax(logits, -1).to(torch.bfloat16).cuda()
        want, got = st.torch_lists(probs), st.fused_lists(probs, tables)
        equal = all(torch.equal(w, h) for w, h in zip(want, got))
        gt, _ = graph(st.torch_lists, probs)
        gf, _ = graph(st.fused_lists, probs, tables)
        t = {"torch": [], "triton": []}
        for _ in range(args.rounds):
            for name, gr in (("torch", gt), ("triton", gf), ("triton", gf), ("torch", gt)):
                t[name].append(time_graph(gr))
        bytes_ = b * 6 * V * 2
        row = {"batch": b, "equal": equal}
        for name, xs in t.items():
            row[name] = {f"p{q}": round(float(np.percentile(xs, q)), 2) for q in (50, 90, 99)}
        p50 = row["triton"]["p50"]
        row["triton_gbs"] = round(bytes_ / (p50 / 1e6) / 1e9, 1)
        row["floor_us"] = round(bytes_ / (bw * 1e9) * 1e6, 2)
        row["saved_us_p50"] = round(row["torch"]["p50"] - p50, 1)
        rows.append(row)
        print(json.dumps(row))
    dev = torch.cuda.get_device_name().replace(" ", "-")
    out = Path(args.out_dir) / f"{dt.date.today()}_step-topk_{dev}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "copy_gbs": round(bw, 1),
                               "torch": torch.__version__, "rows": rows}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()

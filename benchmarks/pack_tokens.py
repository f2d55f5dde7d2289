"""Tokens of the 640x480 benchmark batch (benchmarks/latency.py's pairs, random 3B, fixed MTP
steps) under the old and the new ladder sizes, FP8 and bf16, against the eager path and against
one call per row: how many rows differ. Random weights: near-tied logits, so a GEMM of another
row count (another cuBLAS kernel, another summation order) may flip a token; the count says how
often, beside the graphs-vs-eager count of the old ladder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import QUERIES, images, parse_config, with_ladders  # noqa: E402

from graphrt import Engine  # noqa: E402

OLD = "prefill=64:256:480:576:896:1280:2816:6944,patches=1024:1680:4144:4800:10816:26676"
NEW = "prefill=64:256:464:480:576:896:1280:2816:6944,patches=1024:1656:4144:4800:10816:26676"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--fp8", required=True, help="calibration JSON")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    base = Engine.from_pretrained(args.checkpoint, progress=False, fixed_steps=args.steps, graphs="off")
    pool = images(args.batch, 640, 480, seed=args.batch)
    pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(pool)]
    out = {}
    for prec, extra in (("fp8", f",fp8={args.fp8}"), ("bf16", "")):
        eager = base.with_options(**parse_config("graphs=off" + extra))
        want = [r.tokens for r in eager.locate_batch(pairs)]
        for name, ladder in (("old", OLD), ("new", NEW)):
            engine = base.with_options(**with_ladders(base.model, parse_config(f"graphs=on,{ladder}{extra}")))
            got = [r.tokens for r in engine.locate_batch(pairs)]
            single = [engine.locate(*p).tokens for p in pairs]
            out[f"{prec}_{name}"] = {"rows": len(pairs),
                                     "rows_differing_from_eager": sum(a != b for a, b in zip(got, want)),
                                     "rows_differing_batched_vs_single": sum(a != b for a, b in zip(got, single)),
                                     "tokens": got}
            del engine
        out[f"{prec}_old_vs_new_rows_differing"] = sum(a != b for a, b in zip(out[f"{prec}_old"]["tokens"],
                                                                              out[f"{prec}_new"]["tokens"]))
        print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "tokens"})
                          for k, v in out.items() if k.startswith(prec)}), flush=True)


if __name__ == "__main__":
    main()

"""Variants of the step attention kernel pair (warps, key block, programs per SM, query rows per
split program) and of the LM head product, timed alone on the GPU at the 3B shapes; prints a table
per batch size.

    python benchmarks/step_attention_tune.py [--batch 1 8 32] [--cache 558 2000] [--skip-lm-head]

Each timing is the median of CUDA-event timings over a CUDA graph of 36 calls (one per layer,
each on its own layer's cache so the caches are not re-read from L2)."""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from bench_util import captured_us
from graphrt.kernels.layer_ops import transpose
from graphrt.kernels.step_attention import StepAttention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--cache", type=int, nargs="+", default=[558, 2000])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--skip-lm-head", action="store_true")
    args = ap.parse_args()
    hq, hkv, d, w = 16, 2, 128, 6
    dev = "cuda"
    for b in args.batch:
        slots = max(args.cache) + 20
        kc = torch.randn(args.layers, b, slots, hkv, d, device=dev, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(b * 2 * w, hq, d, device=dev, dtype=torch.bfloat16)
        count = torch.full((b,), 6, device=dev)
        for c in args.cache:
            clen = torch.full((b,), c, device=dev)
            res = []
            # (warps, block_n, programs per SM, split_m); the first is the default
            variants = [(None, None, 1, None)] + list(itertools.product((4, 8), (32, 64), (1,), (128, 64, 32)))
            for warps, bn, pps, sm in variants:
                try:
                    att = StepAttention(b, w, hq, hkv, d, dev, block_n=bn, num_warps=warps, programs_per_sm=pps,
                                        split_m=sm)
                    fn = lambda: [att(q, kc[i], vc[i], clen, count) for i in range(args.layers)]  # noqa: E731
                    res.append((captured_us(fn, 1, 20) / args.layers, att.num_warps, att.block_n, pps, att.n_split,
                                att.split_m))
                except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not fatal
                    print(f"B={b} warps={warps} block_n={bn}: {type(e).__name__}: {str(e)[:80]}")
            default = res[0]
            res.sort(key=lambda x: x[0])
            fmt = lambda r: (f"{r[0]:.1f} us (warps {r[1]}, block_n {r[2]}, pps {r[3]}, split {r[4]}, "  # noqa: E731
                             f"split_m {r[5]})")
            print(f"B={b} c={c}: default {fmt(default)}; best " + "; ".join(fmt(r) for r in res[:4]) +
                  f"; worst {res[-1][0]:.1f} us", flush=True)
    if args.skip_lm_head:
        return
    # LM head: plain product vs transposed product + transposing copy
    head = torch.randn(152681, 2048, device=dev, dtype=torch.bfloat16)
    for m in (6, 8, 48, 192):
        h = torch.randn(m, 2048, device=dev, dtype=torch.bfloat16)
        m8 = (m + 7) // 8 * 8
        h8 = torch.randn(m8, 2048, device=dev, dtype=torch.bfloat16)
        plain = captured_us(lambda: F.linear(h, head), 1, 20)
        trans = captured_us(lambda: torch.mm(head, h8.t()).t().contiguous(), 1, 20)
        trans_only = captured_us(lambda: torch.mm(head, h8.t()), 1, 20)
        trans_triton = captured_us(lambda: transpose(torch.mm(head, h8.t()), m), 1, 20)
        print(f"LM head M={m}: F.linear {plain:.1f} us; transposed+copy {trans:.1f} us (product alone "
              f"{trans_only:.1f} us, with the Triton transpose {trans_triton:.1f} us); "
              f"floor {head.numel() * 2 / 2.95e12 * 1e6:.1f} us", flush=True)


if __name__ == "__main__":
    main()

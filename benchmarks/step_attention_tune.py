"""Variants of the step attention kernel pair (query rows per program, key block, key splits, the
least keys per split) against the previous choice (GRAPHRT_STEP_ATTENTION=split), and rope_write
(the kernel before it), timed alone on the GPU at the 3B shapes; then the LM head product.

    python benchmarks/step_attention_tune.py [--batch 1 8 32] [--cache 461 2000] [--skip-lm-head]

Each timing is the median of CUDA-event timings over a CUDA graph of 36 calls (one per layer,
each on its own layer's cache so the caches are not re-read from L2), per call, in us; every
row at the same cache length with 6 accepted tokens. "floor" is the row's K/V bytes read once at
3 TB/s."""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from bench_util import captured_us
from graphrt.kernels.layer_ops import rope_write, transpose
from graphrt.kernels.step_attention import StepAttention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--cache", type=int, nargs="+", default=[461, 2000])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--top", type=int, default=6, help="best variants printed per shape")
    ap.add_argument("--skip-lm-head", action="store_true")
    args = ap.parse_args()
    hq, hkv, d, w = 16, 2, 128, 6
    dev = "cuda"
    # (split_m, block_n, n_split, min_chunk, warps); min_chunk means nothing at one split (a first
    # sweep on the H100, 2026-11-25, also over split_m 16/32, block_n 32 and min_chunk 128/256:
    # never better than these by more than 0.1 us; docs/notes.md)
    grid = [(sm, bn, ns, mc, wp) for sm, bn, ns, mc, wp in
            itertools.product((64, 128), (64, 128), (1, 2, 4, 8, 16, 64), (0,), (4, 8))]
    for b in args.batch:
        slots = max(args.cache) + 20
        kc = torch.randn(args.layers, b, slots, hkv, d, device=dev, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(b * 2 * w, hq, d, device=dev, dtype=torch.bfloat16)
        count = torch.full((b,), 6, device=dev)
        qkv = torch.randn(b * 2 * w, (hq + 2 * hkv) * d, device=dev, dtype=torch.bfloat16)
        cos, sin = torch.randn(b * 2 * w, d, device=dev), torch.randn(b * 2 * w, d, device=dev)
        wrows = torch.arange(b, device=dev).repeat_interleave(2 * w)
        times: dict[tuple, list[float]] = {}
        descs = {}
        for c in args.cache:
            clen = torch.full((b,), c, device=dev)
            wslots = (clen[:, None] + torch.arange(2 * w, device=dev)[None, :]).reshape(-1)
            rope = captured_us(lambda: [rope_write(qkv, cos, sin, wrows, wslots, kc[i], vc[i], hq, hkv)
                                        for i in range(args.layers)], 1, 20) / args.layers
            floor = b * (c + 12) * hkv * d * 2 * 2 / 3e12 * 1e6
            res = []
            for key in [("tiles", None), ("split", None)] + [("tiles", g) for g in grid]:
                mode, cfg = key
                sm, bn, ns, mc, wp = cfg or (None,) * 5
                try:
                    att = StepAttention(b, w, hq, hkv, d, dev, split_m=sm, block_n=bn, n_split=ns, min_chunk=mc,
                                        num_warps=wp, mode=mode)
                    fn = lambda: [att(q, kc[i], vc[i], clen, count) for i in range(args.layers)]  # noqa: E731
                    t = captured_us(fn, 1, 20) / args.layers
                except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not fatal
                    print(f"B={b} {mode} {cfg}: {type(e).__name__}: {str(e)[:80]}")
                    continue
                res.append((t, att.describe()))
                times.setdefault(key, []).append(t)
                descs[key] = (att.split_m, att.block_n, att.n_split, att.min_chunk, att.num_warps)
            default, old = res[0], res[1]
            res.sort(key=lambda x: x[0])
            print(f"B={b} c={c}: default {default[0]:.1f} us ({default[1]}); previous {old[0]:.1f} us ({old[1]}); "
                  f"rope_write {rope:.1f} us; K/V floor {floor:.1f} us; best " +
                  "; ".join(f"{t:.1f} us ({desc})" for t, desc in res[:args.top]) + f"; worst {res[-1][0]:.1f} us",
                  flush=True)
        # the choice for CONFIGS: least summed time over the cache lengths, among the swept shapes
        full = {k: sum(v) for k, v in times.items() if k[1] is not None and len(v) == len(args.cache)}
        best = min(full, key=full.get)
        print(f"CONFIG {b}: {descs[best]} (sum over caches {full[best]:.1f} us; default "
              f"{sum(times[('tiles', None)]):.1f}, previous {sum(times[('split', None)]):.1f})", flush=True)
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

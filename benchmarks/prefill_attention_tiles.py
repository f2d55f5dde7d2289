"""The prefill attention kernel (graphrt/kernels/prefill_attention.py) over launch configurations at
the 3B shape (16 query heads, 2 KV heads, head 128), in the prefill's real layout: a 480-query
bucket per row with 451 prompt tokens and the merged first round's 6 window rows (457 keys; 23
pad queries see none), K/V read in place from a 1,024-slot cache row.

    python benchmarks/prefill_attention_tiles.py [--batch 1 8 32] [--out-dir benchmarks/results]

Each time is the median of CUDA-event timings of a CUDA graph of 36 calls (one prefill's layers),
per call, in us, the configurations interleaved round by round. Useful TFLOP/s counts the causal
products once (the window rows see every key); "x floor" is against 790 TFLOP/s. Every output is
compared with the first configuration (the default before) on the real rows."""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench_util import capture, event_ms, result_stem
from graphrt.kernels import prefill_attention as pa

# (block_m, block_n, warps, stages, pack, heavy_first); the first is the default of the twelfth pass.
CONFIGS = [
    (64, 64, 4, 3, 1, False), (64, 64, 4, 3, 1, True), (32, 64, 4, 3, 1, True), (128, 64, 8, 3, 1, True),
    (128, 128, 8, 2, 1, True), (64, 128, 4, 2, 1, True),
    (64, 64, 8, 3, 2, False), (64, 64, 8, 3, 2, True), (64, 64, 8, 2, 2, True), (64, 64, 8, 4, 2, True),
    (64, 128, 8, 2, 2, True), (64, 32, 8, 3, 2, True), (64, 64, 4, 3, 2, True),
    (32, 64, 4, 3, 2, True), (32, 64, 8, 3, 4, True), (32, 128, 8, 2, 4, True), (16, 64, 4, 3, 4, True),
    (16, 64, 8, 3, 8, True), (16, 128, 8, 2, 8, True),
]


def useful_flops(real: int, window: int, heads: int, d: int) -> float:
    """Products a causal prompt of `real` tokens plus `window` rows that see every key need, per row."""
    keys = real + window
    pairs = real * (real + 1) // 2 + window * keys
    return 4.0 * pairs * heads * d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--bucket", type=int, default=480)
    ap.add_argument("--real", type=int, default=451)
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--slots", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="prefill-attention-tiles")
    ap.add_argument("--configs", help="JSON list of [block_m, block_n, warps, stages, pack, heavy_first] to time "
                                      "instead of CONFIGS (the first is the reference of the error column)")
    args = ap.parse_args()
    configs = [tuple(c) for c in json.loads(args.configs)] if args.configs else CONFIGS
    hq, hkv, d, layers = 16, 2, 128, 36
    t, real, w, slots = args.bucket, args.real, args.window, args.slots
    out_dir, stem, report = result_stem(args.out_dir, args.tag, work=(
        f"{t}-query bucket per row, {real} prompt tokens + {w} window rows = {real + w} keys, 16 x 128 query heads, "
        f"2 KV heads, 36 calls per graph"))
    report["configs"] = [list(c) for c in configs]
    report["default_now"] = list(pa.TILES)
    g = torch.Generator(device="cuda").manual_seed(0)
    for b in args.batch:
        q = torch.randn(b * t, hq, d, device="cuda", generator=g).bfloat16()
        k = torch.randn(b * slots, hkv, d, device="cuda", generator=g).bfloat16()
        v = torch.randn(b * slots, hkv, d, device="cuda", generator=g).bfloat16()
        cu_q = (torch.arange(b + 1, device="cuda") * t).int()
        cu_k = (torch.arange(b + 1, device="cuda") * slots).int()
        used = torch.full((b,), real + w, dtype=torch.int32, device="cuda")
        live = (torch.arange(b * t, device="cuda") % t) >= t - real - w

        def call(cfg):
            return pa.prefill_attention(q, k, v, cu_q, cu_k, t, slots, used, True, tiles=cfg, window=w)

        ref = call(configs[0]).float()[live]
        graphs, errs = {}, {}
        for cfg in configs:
            try:
                got = call(cfg).float()
                errs[cfg] = float((got[live] - ref).norm() / ref.norm())
                assert not got[~live].any(), "pad queries must stay zero"
                graphs[cfg] = capture(lambda cfg=cfg: [call(cfg) for _ in range(layers)], warmups=1)
            except Exception as exc:  # noqa: BLE001 - a configuration that does not compile is reported
                errs[cfg] = f"{type(exc).__name__}: {str(exc)[:200]}"
        times = {cfg: [] for cfg in graphs}
        for r in range(args.rounds):
            for cfg in (list(graphs) if r % 2 == 0 else list(graphs)[::-1]):
                times[cfg].append(event_ms(graphs[cfg].replay) / layers * 1e3)
        flops = useful_flops(real, w, hq, d) * b
        rows = []
        for cfg in configs:
            if cfg not in times:
                rows.append({"config": list(cfg), "error": errs[cfg]})
                continue
            us = statistics.median(times[cfg])
            rows.append({"config": list(cfg), "us": round(us, 2), "tflops": round(flops / us / 1e6, 1),
                         "x_floor_790": round(us / (flops / 790e12 * 1e6), 2), "rel_err_vs_first": errs[cfg]})
        ok = [r for r in rows if "us" in r]
        ok.sort(key=lambda r: r["us"])
        report[f"B{b}"] = {"useful_tflop_per_call": round(flops / 1e12, 4), "rows": rows,
                           "best": ok[0] if ok else None,
                           "prefill_ms_36_layers_first_vs_best": [
                               round(next(r["us"] for r in rows if r["config"] == list(configs[0])) * 36 / 1e3, 3),
                               round(ok[0]["us"] * 36 / 1e3, 3)] if ok else None}
        print(f"B={b}: useful {flops / 1e12:.4f} TFLOP per call")
        for r in ok[:10]:
            print(f"  {r['config']}: {r['us']} us, {r['tflops']} TFLOP/s, x{r['x_floor_790']}, "
                  f"err {r['rel_err_vs_first']:.2e}")
        for r in rows:
            if r["config"] == list(configs[0]):
                print(f"  first {r}")
        for r in rows:
            if "error" in r:
                print(f"  FAILED {r['config']}: {r['error']}")
        del graphs
        torch.cuda.empty_cache()
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(report, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()

"""One MTP step on kernel variants, interleaved in one run.

    python benchmarks/step_kernels.py --preset 3b --batch 1 8 32 --out-dir benchmarks/results

Variants (--sets, comma-separated; the first is profiled at every batch size):
    fused       the fused kernel set as shipped: skinny Triton GEMMs where measured faster, fused step tail
    fused-gemm  fused, but the torch step tail (GRAPHRT_STEP_TAIL=torch)
    fused-smtorch fused, but torch's softmax at the step's end (GRAPHRT_STEP_SOFTMAX=torch: the set before
                the many-CTA softmax; tokens must agree with fused on every row, the softmax being bit-equal)
    fused-tktorch fused, but torch's top-k and argmax at the step's end (GRAPHRT_STEP_TOPK=torch: the set before
                step_topk's two kernels; tokens must agree with fused on every row, the lists being equal)
    fused-old   fused with cuBLAS GEMMs and the torch tail (the fused set before the skinny GEMM and tail)
    fused-nopdl fused without programmatic dependent launch (GRAPHRT_PDL=off: the set before PDL)
    fused-pdl   fused with PDL at every batch size (GRAPHRT_PDL=on; auto uses it at B=1 only)
    fused-pf    fused-pdl with the L2 weight prefetch before the grid-dependency wait
    fused-tri   fused with a Triton GEMM (skinny or swap-AB) for every step GEMM (GRAPHRT_STEP_GEMM=triton)
    fused-noswab fused without the swap-AB GEMM candidates (GRAPHRT_STEP_GEMM=noswab: the set before them)
    fused-oldattn fused with the previous step attention shape choice (GRAPHRT_STEP_ATTENTION=split)
    fused-ropein fused with RoPE + the K/V cache write inside the split kernel (GRAPHRT_STEP_ROPE=attention,
                opt-in: measured no faster at B=1 and slower at B=8/32)
    fused-protorch fused with the step's inputs (ids, slots, embeddings, cos/sin, the LM head's row pad) in
                torch ops (GRAPHRT_STEP_PROLOGUE=torch: the fused set of the seventh pass)
    fused-plainchain fused with the chooser's plain rule in PDL chains (GRAPHRT_STEP_GEMM_CHAIN=plain: cuBLAS
                on any lead; default `margin` wants it 5% faster, since cuBLAS ends the chain)
    fused-earlyoff fused without the swap-AB GEMM's early weight reads before its PDL wait (GRAPHRT_STEP_EARLY_W=off:
                the set before; default l2-2 = fused-l2e2; B=1 only: larger steps launch without PDL)
    fused-early1/2/4 fused with each swap-AB program's first 1/2/4 weight tiles read into registers before its
                PDL wait (GRAPHRT_STEP_EARLY_W=1/2/4; measured slower)
    fused-l2e2/4 fused with an L2 prefetch of each swap-AB program's first 2/4 weight tiles before its PDL wait
                (GRAPHRT_STEP_EARLY_W=l2-2 (the default) / l2-4)
    fused-lmcublas fused with the LM head on cuBLAS as head @ hidden^T + a transposing copy
                (GRAPHRT_STEP_LMHEAD=transposed: the set before; default swab = the swap-AB GEMM where chosen)
    fused-endnopdl fused with the step's end kernels (softmax, top-k, tail) launched without PDL
                (GRAPHRT_STEP_END_PDL=off: the set before; B=1 only: larger steps launch without PDL)
    fused-lmold both of the above (the set before the lmhead pass)
    torch       the plain-torch kernel set

Both graph runtimes share one loaded model (random weights: tokens are random, so rows run a
fixed budget and the step graph is then replayed on that state: every row computes, finished or
not). Per batch size: the step replay's P50/P90/P99 (CUDA events around a run of replays,
A and B alternating A,B,B,A), beside the floor (LM weights read once at the measured copy
bandwidth) and the achieved GB/s (weight bytes / step time); the same at a long cache
(c = --long, every row). A torch.profiler table of one fused step replay (kernel, calls, total
us, GEMM share) per batch size, and the capture time of each runtime's graphs.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from capture import Buckets, GraphRuntime
from latency import write_report  # noqa: E402  (sibling benchmark: one report writer)
from graphrt import Engine, GenerationConfig
from graphrt.request import Batch

# name -> (kernel set, environment while its graphs are captured: the documented A/B overrides)
VARIANTS = {"fused": ("fused", {}), "fused-gemm": ("fused", {"GRAPHRT_STEP_TAIL": "torch"}),
            "fused-smtorch": ("fused", {"GRAPHRT_STEP_SOFTMAX": "torch"}),
            "fused-tktorch": ("fused", {"GRAPHRT_STEP_TOPK": "torch"}),
            "fused-old": ("fused", {"GRAPHRT_STEP_GEMM": "cublas", "GRAPHRT_STEP_TAIL": "torch"}),
            "fused-nopdl": ("fused", {"GRAPHRT_PDL": "off"}),
            "fused-pdl": ("fused", {"GRAPHRT_PDL": "on"}),
            "fused-pf": ("fused", {"GRAPHRT_PDL": "on", "GRAPHRT_STEP_PREFETCH": "1"}),
            "fused-tri": ("fused", {"GRAPHRT_STEP_GEMM": "triton"}),
            "fused-noswab": ("fused", {"GRAPHRT_STEP_GEMM": "noswab"}),
            "fused-oldattn": ("fused", {"GRAPHRT_STEP_ATTENTION": "split"}),
            "fused-ropein": ("fused", {"GRAPHRT_STEP_ROPE": "attention"}),
            "fused-protorch": ("fused", {"GRAPHRT_STEP_PROLOGUE": "torch"}),
            "fused-plainchain": ("fused", {"GRAPHRT_STEP_GEMM_CHAIN": "plain"}),
            **{f"fused-early{v}": ("fused", {"GRAPHRT_STEP_EARLY_W": v}) for v in ("off", "1", "2", "4")},
            **{f"fused-l2e{v}": ("fused", {"GRAPHRT_STEP_EARLY_W": f"l2-{v}"}) for v in ("2", "4")},
            "fused-lmcublas": ("fused", {"GRAPHRT_STEP_LMHEAD": "transposed"}),
            "fused-endnopdl": ("fused", {"GRAPHRT_STEP_END_PDL": "off"}),
            "fused-lmold": ("fused", {"GRAPHRT_STEP_LMHEAD": "transposed", "GRAPHRT_STEP_END_PDL": "off"}),
            "torch": ("torch", {})}
GEMM_MARKS = ("skinny_kernel", "swab_kernel", "gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "splitkreduce")


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second (the practical HBM ceiling)."""
    src = torch.empty(2**29, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return 2 * src.numel() * 2 / (np.median(times) / 1e3) / 1e9


def lm_weight_bytes(model) -> int:
    """Every LM weight read once per step: layers, final norm, and the LM head (the tied embedding)."""
    llm = model.llm
    n = sum(p.numel() * p.element_size() for p in llm.layers.parameters()) + llm.norm.weight.numel() * 2
    head = llm.embed_tokens.weight if llm.lm_head is None else llm.lm_head.weight
    return n + head.numel() * head.element_size()


def replay_ms(graphs, key, n: int) -> float:
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        graphs.replay(key)
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def interleaved(runtimes: dict, key, rounds: int, per: int) -> dict[str, list[float]]:
    names = list(runtimes)
    out = {n: [] for n in names}
    for n in names:  # warm
        replay_ms(runtimes[n].graphs, key, 3)
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n].append(replay_ms(runtimes[n].graphs, key, per))
    return out


def pct(xs, q):
    return round(float(np.percentile(xs, q)), 3)


def kernel_table(runtime, key, replays: int = 5) -> tuple[list[dict], float]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            runtime.graphs.replay(key)
        torch.cuda.synchronize()
    agg = collections.defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type.name == "CUDA":
            agg[ev.name][0] += 1
            agg[ev.name][1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    rows = [{"kernel": k[:110], "calls_per_step": c / replays, "us_per_step": round(t / replays, 1),
             "gemm": any(m in k.lower() for m in GEMM_MARKS)} for k, (c, t) in agg.items()]
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    gemm = sum(r["us_per_step"] for r in rows if r["gemm"])
    return rows, (gemm / total if total else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--preset", choices=["tiny", "mid", "3b"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per", type=int, default=10, help="replays per timed run")
    ap.add_argument("--long", type=int, default=2000, help="cache length of the long-cache timing")
    ap.add_argument("--sets", default="fused,fused-old,torch", help=f"variants, from {', '.join(VARIANTS)}")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="step-kernels")
    args = ap.parse_args()

    ckpt = args.checkpoint
    if ckpt is None:
        from weights.synth import write_preset

        ckpt = write_preset(args.preset, Path(tempfile.mkdtemp()) / args.preset, device="cuda", progress=False)
    engine = Engine.from_pretrained(ckpt, graphs="off", progress=False)
    model = engine.model
    bw = copy_bandwidth_gbs()
    wbytes = lm_weight_bytes(model)
    floor_ms = wbytes / (bw * 1e9) * 1e3
    print(f"LM weights {wbytes / 1e9:.2f} GB; copy bandwidth {bw:.0f} GB/s; step floor {floor_ms:.3f} ms", flush=True)

    gen = GenerationConfig(max_new_tokens=12)
    processed = engine.processor(Image.new("RGB", (640, 480)))
    prompt = engine.prompts.build("person</c>car", processed.num_tokens((2, 2)))
    patches = Buckets.fit((1024, 1680, 4144), processed.num_patches)
    length = (len(prompt.ids) + 63) // 64 * 64
    buckets = Buckets(batch_sizes=tuple(args.batch), patch_budgets=(patches,), prefill_lengths=(length,),
                      max_new_tokens=max(64, args.long))
    runtimes, capture_s = {}, {}
    names = args.sets.split(",")
    for name in names:
        kernels, env = VARIANTS[name]
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        t0 = time.perf_counter()
        rt = GraphRuntime(model, buckets, gen, strict=True, kernels=kernels)
        rt.warmup(progress=False)
        capture_s[name] = round(time.perf_counter() - t0, 1)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        runtimes[name] = rt
        print(f"{name}: {len(rt.graphs)} graphs in {capture_s[name]} s", flush=True)
    from graphrt.kernels import skinny_gemm

    gemm_choice = {f"M={k[0]} N={k[1]} K={k[2]} silu={k[5]} {k[6]} pdl={k[7]} pf={k[8]} early={k[9]} margin={k[10]}": repr(v)
                   for k, v in skinny_gemm._choice.items() if k[6] in ("auto", "noswab")}
    gemm_timing = {f"M={k[0]} N={k[1]} K={k[2]} silu={k[5]} {k[6]} pdl={k[7]} pf={k[8]} early={k[9]}": {repr(c): round(t * 1e3, 2) for c, t in v.items()}
                   for k, v in skinny_gemm.timings.items()}
    print("skinny GEMM choices:", json.dumps(gemm_choice), f"measured in {skinny_gemm.choose_seconds:.1f} s", flush=True)

    report_rows, tables, agree = [], {}, {}
    for b in args.batch:
        pils = [Image.fromarray((np.random.RandomState(i).rand(480, 640, 3) * 255).astype(np.uint8)) for i in range(b)]
        procs = [engine.processor(p) for p in pils]
        batch = Batch.of_prompts(procs, [prompt] * b)
        toks = {n: [r.tokens for r in rt.run(batch, gen)] for n, rt in runtimes.items()}
        agree[b] = {n: sum(x == y for x, y in zip(toks[names[0]], t)) for n, t in toks.items() if n != names[0]}
        cache_len = int(runtimes[names[0]].pipe.cache_len[0])
        for label, set_len in (("prompt", None), ("long", args.long)):
            if set_len is not None:
                for rt in runtimes.values():
                    rt.pipe.cache_len[:b].fill_(set_len)
            samples = interleaved(runtimes, ("step", b), args.rounds, args.per)
            for name, xs in samples.items():
                p50 = pct(xs, 50)
                row = {"batch": b, "cache": cache_len if set_len is None else set_len, "kernels": name,
                       "p50_ms": p50, "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99), "floor_ms": round(floor_ms, 3),
                       "over_floor": round(p50 / floor_ms, 2), "weight_gbs": round(wbytes / (p50 / 1e3) / 1e9)}
                report_rows.append(row)
                print(json.dumps(row), flush=True)
        for rt in runtimes.values():
            rt.pipe.cache_len[:b].fill_(cache_len)
        tables[f"{b} {names[0]}"] = kernel_table(runtimes[names[0]], ("step", b))
        for other in names[1:]:
            if b == args.batch[0] or other == "fused-old":
                tables[f"{b} {other}"] = kernel_table(runtimes[other], ("step", b))

    device = torch.cuda.get_device_name(0)
    report = {"date": dt.date.today().isoformat(), "device": device, "torch": torch.__version__,
              "dtype": str(model.dtype), "lm_weight_bytes": wbytes, "copy_gbs": round(bw),
              "floor_ms": round(floor_ms, 3),
              "capture_s": capture_s, "graphs": {n: len(rt.graphs) for n, rt in runtimes.items()},
              "work": f"640x480 image, {processed.num_patches} patches (bucket {patches}), prompt {len(prompt.ids)} "
                      f"tokens (bucket {length}); step = 12 query tokens per row, logits for 6",
              "tokens_agree_rows": agree, "rows": report_rows, "skinny_gemm_choice": gemm_choice,
              "skinny_gemm_timing_ms": gemm_timing, "skinny_gemm_measure_s": round(skinny_gemm.choose_seconds, 1),
              "kernel_tables": {str(k): {"gemm_share": round(v[1], 3), "kernels": v[0]} for k, v in tables.items()}}
    write_report(report, markdown(report), args.out_dir, args.tag)


def markdown(r: dict) -> str:
    lines = [f"# One MTP step, kernel variants ({r['date']}, {r['device']}, torch {r['torch']}, "
             f"{r['dtype']}, random 3B)", "",
             f"Floor: LM weights {r['lm_weight_bytes'] / 1e9:.2f} GB read once at the measured copy bandwidth "
             f"{r['copy_gbs']} GB/s = {r['floor_ms']} ms. {r['work']}. Capture: {r['capture_s']} s "
             f"({r['graphs']} graphs). Rows whose tokens agree with the first variant, per B: {r['tokens_agree_rows']}. "
             f"Skinny GEMM picks (measured at warm-up in {r['skinny_gemm_measure_s']} s; None = cuBLAS): "
             f"{r['skinny_gemm_choice']}.", "",
             "| B | cache | kernels | P50 ms | P90 ms | P99 ms | x floor | weight GB/s |", "| --- " * 8 + "|"]
    for x in r["rows"]:
        lines.append(f"| {x['batch']} | {x['cache']} | {x['kernels']} | {x['p50_ms']} | {x['p90_ms']} | {x['p99_ms']} "
                     f"| {x['over_floor']} | {x['weight_gbs']} |")
    for b, t in r["kernel_tables"].items():
        lines += ["", f"## Kernels of one step replay, B={b} (GEMM share {t['gemm_share']:.0%})", "",
                  "| kernel | calls | total us | GEMM |", "| --- | --- | --- | --- |"]
        lines += [f"| `{k['kernel']}` | {k['calls_per_step']:g} | {k['us_per_step']} | {'yes' if k['gemm'] else ''} |"
                  for k in t["kernels"][:40]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

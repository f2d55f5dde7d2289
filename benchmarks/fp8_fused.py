"""FP8 in the fused step: speed of each FP8 mode beside bf16, where the error grows, graphs vs eager.

    python benchmarks/fp8_fused.py --preset 3b --out-dir benchmarks/results

One process, one loaded bf16 model, FP8 copies sharing its other tensors:
1. calibration (--calib-pairs, eager bf16, 2 MTP steps each);
2. fidelity on --held-out other pairs (calib/fidelity.py): per-layer residual cosine along depth,
   teacher-forced window logits and free-running answers, for each FP8 mode and for bf16 with noise
   injected at one layer (how the random network carries a perturbation);
3. (after --wait-for: GPU tests running beside this) engines on graphs, fused kernels, one per
   mode: one MTP step replayed alone at each --batch, interleaved (A,B,C..., then reversed), with
   the weight-byte floor; a kernel table of one step per FP8 mode at B=1;
4. end to end: latency.py's interleaved() over engine.locate_batch (preprocessing included) at
   each --e2e-batch, 640x480, one query, --fixed-steps MTP steps;
4b. prefill: the prefill graph (with the merged first MTP round) replayed alone per engine,
   interleaved, at each --e2e-batch, and its kernel table (where FP8 prefill time goes);
5. graphs vs eager tokens per mode (8 pairs), and eager vs eager with a bf16-rounding-sized
   perturbation of the layer-0 input (is a divergence the path or the arithmetic's sensitivity?).
Random weights: tokens are random; accuracy figures are numerical fidelity only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import add_checkpoint_args, checkpoint_dir, result_stem, wait_for_file  # noqa: E402
from latency import QUERIES, images, interleaved, summarize  # noqa: E402
from step_kernels import copy_bandwidth_gbs, kernel_table, pct, replay_ms  # noqa: E402

from calib import calibrate, quantize_model  # noqa: E402
from calib.fidelity import fidelity, markdown as fidelity_md, noise_probe  # noqa: E402
from calib.report import _answers  # noqa: E402
from capture import Buckets  # noqa: E402
from graphrt import Engine, GenerationConfig  # noqa: E402
from graphrt.generate import EagerBatch  # noqa: E402
from graphrt.request import Batch  # noqa: E402

MODES = {"w8a8": "lm", "w8a16": "lm+w8a16", "w8a8-dynamic": "lm+w8a8-dynamic", "w8a16-int8": "lm+w8a16-int8"}


def step_weight_bytes(model) -> int:
    """LM weights one step reads: decoder linears (e4m3 or bf16), norms, the bf16 LM head."""
    llm = model.llm
    n = sum(b.numel() * b.element_size() for b in llm.layers.buffers() if b.dim() == 2 and b.numel() > 4096)
    n += sum(p.numel() * p.element_size() for p in llm.layers.parameters())
    head = llm.embed_tokens.weight if llm.lm_head is None else llm.lm_head.weight
    return n + head.numel() * head.element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(ap)
    ap.add_argument("--calib-pairs", type=int, default=64)
    ap.add_argument("--held-out", type=int, default=16)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--e2e-batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--fixed-steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per", type=int, default=10)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--slow-iters", type=int, default=6)
    ap.add_argument("--modes", default=",".join(MODES), help="FP8 modes on graphs (comma list of " + ", ".join(MODES) + ")")
    ap.add_argument("--fidelity-accum", action="store_true", help="fidelity of w8a8 with fp32 accumulation "
                    "(GRAPHRT_FP8_FAST_ACCUM=0) vs fast accumulation in _scaled_mm (the default), and the 2^-9 probe")
    ap.add_argument("--fidelity-short", action="store_true", help="fidelity of w8a8 / w8a16 / w8a16-int8 and the "
                    "2^-9 probe only")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: fidelity,step,e2e,prefill,tokens")
    ap.add_argument("--untuned", action="store_true", help="add a w8a8 engine captured with "
                    "GRAPHRT_FP8_SKINNY_TUNE=off (the skinny FP8 GEMM without split-K / per-shape tiles): A/B")
    ap.add_argument("--write-to", help="with --preset: write the checkpoint here (kept for a later latency.py run)")
    ap.add_argument("--wait-for", help="before timing, wait (up to 240 s) until this file exists")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="fp8-fused")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out_dir, stem, report = result_stem(args.out_dir, args.tag, args=vars(args))

    def save():
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))

    t0 = time.perf_counter()
    ckpt = checkpoint_dir(args, into=args.write_to)
    base = Engine.from_pretrained(ckpt, progress=False, graphs="off", fixed_steps=args.fixed_steps)
    report["load_s"] = round(time.perf_counter() - t0, 1)
    cal = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(images(args.calib_pairs, 640, 480, seed=1000))]
    t = time.perf_counter()
    calib = calibrate(base, cal, steps=2, batch=16, progress=False,
                      dataset={"source": "random noise images 640x480, numpy seed 1000, queries cycling"})
    calib_path = str(calib.save(out_dir / f"{stem}_calib.json"))
    report["calibrate_s"] = round(time.perf_counter() - t, 1)
    print(f"loaded {report['load_s']} s, calibrated {report['calibrate_s']} s", flush=True)
    del cal
    held = [(im, QUERIES[(i + 3) % len(QUERIES)]) for i, im in enumerate(images(args.held_out, 640, 480, seed=2000))]

    # 2. fidelity
    if "fidelity" not in skip:
        t = time.perf_counter()
        if args.fidelity_accum:
            before = os.environ.get("GRAPHRT_FP8_FAST_ACCUM")
            variants = {}
            for label, flag in (("w8a8 (fp32 accumulation)", "0"), ("w8a8, fast accumulation", "1")):
                os.environ["GRAPHRT_FP8_FAST_ACCUM"] = flag  # read when the FP8 linears are built
                variants[label] = quantize_model(base.model, calib, "lm")
            if before is None:
                del os.environ["GRAPHRT_FP8_FAST_ACCUM"]
            else:
                os.environ["GRAPHRT_FP8_FAST_ACCUM"] = before
            variants["probe: bf16, 2^-9 noise into layer 0"] = noise_probe(base.model, 0, 2**-9)
        else:
            variants = {m: quantize_model(base.model, calib, s) for m, s in MODES.items()}
        if args.fidelity_short and not args.fidelity_accum:  # the modes and the bf16-rounding probe only (more pairs in the same time)
            variants.pop("w8a8-dynamic")
            variants["probe: bf16, 2^-9 noise into layer 0"] = noise_probe(base.model, 0, 2**-9)
    if "fidelity" not in skip and not args.fidelity_short and not args.fidelity_accum:
        variants["w8a8, down bf16"] = quantize_model(base.model, calib, "lm,-down_proj")
        variants["w8a16, down bf16"] = quantize_model(base.model, calib, "lm+w8a16,-down_proj")
        last = len(base.model.llm.layers) - 1
        variants["w8a8, layers 0-1 and last 2 bf16"] = quantize_model(
            base.model, calib, f"lm,-llm.layers.0.,-llm.layers.1.,-llm.layers.{last}.,-llm.layers.{last - 1}.")
        variants["probe: bf16, 2.6% noise into layer 0"] = noise_probe(base.model, 0, 0.026)
        mid = len(base.model.llm.layers) // 2
        variants[f"probe: bf16, 2.6% noise into layer {mid}"] = noise_probe(base.model, mid, 0.026)
        variants["probe: bf16, 2^-9 noise into layer 0"] = noise_probe(base.model, 0, 2**-9)
    if "fidelity" not in skip:
        fid = fidelity(base, variants, held, steps=2, answer_steps=2, batch=8)
        fid["seconds"] = round(time.perf_counter() - t, 1)
        report["fidelity"] = fid
        md = fidelity_md(fid)
        (out_dir / f"{stem}_fidelity.md").write_text(md)
        print(md, flush=True)
        del variants
        gc.collect()
        torch.cuda.empty_cache()
        save()

    wait_for_file(args.wait_for, report)

    if not torch.cuda.is_available() or {"step", "e2e", "prefill", "tokens"} <= skip:
        skip |= {"step", "e2e", "prefill", "tokens"}
        save()
        print("graph parts skipped (no CUDA or --skip)")
        return
    # 3. engines on graphs (fused kernels: the CUDA default), one per mode
    probe = base.processor(held[0][0])
    patch = Buckets.fit((1024, 1680, 4144), probe.num_patches)
    longest = max(len(base.prompts.build(q, probe.num_tokens((2, 2))).ids) for q in QUERIES)
    prefill = (longest + 16 + 63) // 64 * 64  # + the merged first round's window slots
    buckets = Buckets(batch_sizes=tuple(sorted(set(args.batch) | set(args.e2e_batch))), patch_budgets=(patch,),
                      prefill_lengths=(prefill,), max_new_tokens=64)
    common = dict(graphs="on", buckets=buckets, max_new_tokens=64, strict=True)
    t = time.perf_counter()
    engines = {"bf16": base.with_options(**common)}
    for m in filter(None, args.modes.split(",")):
        engines[m] = base.with_options(**common, fp8=calib_path, fp8_scope=MODES[m])
    if args.untuned:
        os.environ["GRAPHRT_FP8_SKINNY_TUNE"] = "off"  # read while the graphs are captured
        engines["w8a8-untuned"] = base.with_options(**common, fp8=calib_path, fp8_scope="lm")
        del os.environ["GRAPHRT_FP8_SKINNY_TUNE"]
    from calib import triton_gemm

    report["skinny_fp8_choice"] = {str(k[1:]): str(v) for k, v in triton_gemm._CHOICE.items()}
    report["skinny_fp8_timings_us"] = {str(k[1:]): {str(c): round(t, 2) for c, t in v.items()}
                                       for k, v in triton_gemm.TIMINGS.items()}
    report["skinny_fp8_choose_s"] = round(triton_gemm.choose_seconds, 1)
    print("skinny FP8 choice", report["skinny_fp8_choice"], report["skinny_fp8_timings_us"], flush=True)
    report["capture_s"] = round(time.perf_counter() - t, 1)
    report["statuses"] = {k: {"kernels": e.status().get("kernels"), "fp8": e.status().get("fp8")}
                          for k, e in engines.items()}
    report["w8a16_configs"] = os.environ.get("GRAPHRT_W8A16_CONFIGS", "built-in")
    report["work"] = (f"640x480 image, {probe.num_patches} patches (bucket {patch}), prompts up to {longest} tokens "
                      f"(bucket {prefill}), {args.fixed_steps} MTP steps; step = 12 query tokens per row")
    bw = copy_bandwidth_gbs()
    report["copy_gbs"] = round(bw)
    print(f"captured {len(engines)} engines in {report['capture_s']} s; copy {bw:.0f} GB/s", flush=True)

    if "step" not in skip:
        rows, tables = [], {}
        for b in args.batch:
            pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(images(b, 640, 480, seed=b))]
            toks = {n: [r.tokens for r in e.locate_batch(pairs)] for n, e in engines.items()}  # state for the replays
            names = list(engines)
            samples = {n: [] for n in names}
            for n in names:
                replay_ms(engines[n].runtime.graphs, ("step", b), 3)
            for r in range(args.rounds):
                for n in (names if r % 2 == 0 else names[::-1]):
                    samples[n].append(replay_ms(engines[n].runtime.graphs, ("step", b), args.per))
            for n, xs in samples.items():
                wb = step_weight_bytes(engines[n].model)
                floor = wb / (bw * 1e9) * 1e3
                row = {"batch": b, "mode": n, "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
                       "weight_gb": round(wb / 1e9, 3), "floor_ms": round(floor, 3),
                       "over_floor": round(pct(xs, 50) / floor, 2), "weight_gbs": round(wb / (pct(xs, 50) / 1e3) / 1e9),
                       "rows_equal_bf16": sum(x == y for x, y in zip(toks[n], toks["bf16"]))}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if b == args.batch[0]:
                for n in names:
                    tables[n] = kernel_table(engines[n].runtime, ("step", b))
        report["step"] = rows
        report["kernel_tables_b1"] = {n: {"gemm_share": round(v[1], 3), "kernels": v[0][:30]} for n, v in tables.items()}
        save()

    if "e2e" not in skip:
        e2e = []
        for b in args.e2e_batch:
            pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(images(b, 640, 480, seed=b))]
            calls = {n: (lambda e=e: e.locate_batch(pairs)) for n, e in engines.items()}
            samples = interleaved(calls, 2, args.slow_iters if b > 8 else args.iters)
            for n, s in samples.items():
                e2e.append(summarize(n, b, s))
                print(json.dumps(e2e[-1]), flush=True)
        report["e2e"] = e2e
        save()

    if "prefill" not in skip:
        pre, pre_tables = [], {}
        for b in args.e2e_batch:
            pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(images(b, 640, 480, seed=b))]
            for e in engines.values():
                e.locate_batch(pairs)  # inputs of this batch in the prefill buffers
            names = list(engines)
            keys = {n: sorted(k for k in engines[n].runtime.graphs.graphs if k[0] == "prefill" and k[1] >= b)[0]
                    for n in names}
            samples = {n: [] for n in names}
            for n in names:
                replay_ms(engines[n].runtime.graphs, keys[n], 2)
            for r in range(args.rounds):
                for n in (names if r % 2 == 0 else names[::-1]):
                    samples[n].append(replay_ms(engines[n].runtime.graphs, keys[n], 3))
            for n, xs in samples.items():
                row = {"batch": b, "mode": n, "key": str(keys[n]), "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90)}
                pre.append(row)
                print(json.dumps(row), flush=True)
            for n in names:
                rows_k, share = kernel_table(engines[n].runtime, keys[n], replays=3)
                pre_tables[f"{n} B={b}"] = {"gemm_share": round(share, 3), "kernels": rows_k[:25]}
        report["prefill"] = pre
        report["prefill_kernel_tables"] = pre_tables
        save()

    if "tokens" not in skip:
        pairs = held[:8]
        out = {}
        for n, e in engines.items():
            g = [r.tokens for r in e.locate_batch(pairs)]
            ee = e.with_options(graphs="off", eager_batch=8)
            er = [r.tokens for r in ee.locate_batch(pairs)]
            # eager vs eager with a bf16-rounding-sized perturbation of the layer-0 input
            merge = base.model.cfg.vision.merge_kernel_size
            ims = [base.processor(im) for im, _ in pairs]
            emb = base.encode_images(ims)
            prompts = [base.prompts.build(q, im.num_tokens(merge)) for im, (_, q) in zip(ims, pairs)]
            reqs = EagerBatch.of(Batch.of_prompts(ims, prompts), emb)
            gen = GenerationConfig(fixed_steps=args.fixed_steps, max_new_tokens=64)
            plain = [r.tokens for r in _answers(ee.model, reqs, gen)]
            nudged = [r.tokens for r in _answers(noise_probe(ee.model, 0, 2**-9, seed=7), reqs, gen)]
            out[n] = {"rows": len(pairs), "graphs_vs_eager_rows_equal": sum(a == b for a, b in zip(g, er)),
                      "graphs_vs_eager_same_tokens": sum(x == y for a, b in zip(g, er) for x, y in zip(a, b)),
                      "tokens_per_row": len(g[0]),
                      "eager_vs_nudged_eager_rows_equal": sum(a == b for a, b in zip(plain, nudged)),
                      "eager_engine_vs_answers_rows_equal": sum(a == b for a, b in zip(er, plain))}
            print(n, json.dumps(out[n]), flush=True)
        report["tokens"] = out
        save()
    report["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    (out_dir / f"{stem}.md").write_text(summary_md(report))
    print(summary_md(report))


def summary_md(r: dict) -> str:
    lines = [f"# FP8 modes in the fused step vs bf16 ({r['date']}, {r['device']}, torch {r['torch']}, random 3B)", "",
             r.get("work", ""), "", f"Copy bandwidth {r.get('copy_gbs')} GB/s (the floor's rate).", ""]
    if "step" in r:
        lines += ["| B | mode | step P50 ms | P90 | P99 | weight GB | floor ms | x floor | rows = bf16 |",
                  "| --- " * 9 + "|"]
        lines += [f"| {x['batch']} | {x['mode']} | {x['p50_ms']} | {x['p90_ms']} | {x['p99_ms']} | {x['weight_gb']} | "
                  f"{x['floor_ms']} | {x['over_floor']} | {x['rows_equal_bf16']} |" for x in r["step"]]
        for n, t in r.get("kernel_tables_b1", {}).items():
            lines += ["", f"Kernels of one step, {n}, B={r['args']['batch'][0]} (GEMM share {t['gemm_share']:.0%}): "
                      + "; ".join(f"{k['kernel'][:60]} {k['us_per_step']} us x{k['calls_per_step']:g}"
                                  for k in t["kernels"][:12])]
        lines.append("")
    if "e2e" in r:
        lines += ["| B | mode | e2e P50 ms | P90 | P99 | preprocess | vision | prefill | decode | img/s |",
                  "| --- " * 10 + "|"]
        lines += [f"| {x['batch']} | {x['config']} | {x['e2e_p50_ms']} | {x['e2e_p90_ms']} | {x['e2e_p99_ms']} | "
                  f"{x.get('preprocess_p50_ms')} | {x.get('vision_p50_ms')} | {x.get('prefill_p50_ms')} | "
                  f"{x.get('decode_p50_ms')} | {x['img_per_s']} |" for x in r["e2e"]]
        lines.append("")
    if "prefill" in r:
        lines += ["| B | mode | prefill graph P50 ms | P90 | key |", "| --- " * 5 + "|"]
        lines += [f"| {x['batch']} | {x['mode']} | {x['p50_ms']} | {x['p90_ms']} | {x['key']} |" for x in r["prefill"]]
        for n, t in r.get("prefill_kernel_tables", {}).items():
            lines += ["", f"Kernels of one prefill, {n} (GEMM share {t['gemm_share']:.0%}): "
                      + "; ".join(f"{k['kernel'][:60]} {k['us_per_step']} us x{k['calls_per_step']:g}"
                                  for k in t["kernels"][:14])]
        lines.append("")
    if "skinny_fp8_choice" in r:
        lines += [f"Skinny FP8 configs chosen at warm-up ({r.get('skinny_fp8_choose_s')} s): "
                  f"{json.dumps(r['skinny_fp8_choice'])}; timings us: {json.dumps(r['skinny_fp8_timings_us'])}", ""]
    if "fidelity" in r:
        lines += ["## Fidelity", "", fidelity_md(r["fidelity"])]
    if "tokens" in r:
        lines += ["## Graphs vs eager", "", "```", json.dumps(r["tokens"], indent=1), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

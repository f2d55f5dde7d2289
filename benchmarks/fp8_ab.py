"""FP8 against bf16 on one checkpoint, in one process: calibration, accuracy report, interleaved A/B.

    python benchmarks/fp8_ab.py --preset 3b --out-dir benchmarks/results      # writes a random 3B first
    python benchmarks/fp8_ab.py --checkpoint DIR --calib-pairs 256 --held-out 64

1. Calibrates on --calib-pairs (image, query) pairs (eager bf16, --steps MTP steps each).
2. Accuracy of FP8 vs bf16 on --held-out other pairs, for each --scopes entry (calib/report.py:
   per-stage cosines, window-logit top-1 agreement / KL / cosine per step, per-linear cosines,
   whole answers).
3. FP8 graphs vs FP8 eager tokens on held-out pairs (one batch).
4. Interleaved A/B timing, A = bf16 graphs, B = FP8 graphs (same weights in memory): end to end
   (engine.locate_batch on PIL images, preprocessing included) per batch size; each graph stage
   (vision, prefill, one MTP step) replayed alone with CUDA events, A and B alternating; the
   LM's four linear shapes as GEMMs (bf16 F.linear vs FP8 quantize + _scaled_mm) at step and
   prefill row counts, each in a CUDA graph of 20 calls so launch costs do not hide GPU time.
Every row runs exactly --fixed-steps MTP steps (random weights never end on their own). Random
weights: the accuracy figures are numerical fidelity, not task accuracy (see calib/report.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import add_checkpoint_args, captured_us, checkpoint_dir, event_ms, result_stem, wait_for_file  # noqa: E402
from latency import QUERIES, images, interleaved, summarize  # noqa: E402

from calib import DEFAULT_SCOPE, FP8Linear, calibrate  # noqa: E402
from calib.report import accuracy_report, markdown  # noqa: E402
from calib.triton_gemm import skinny_fp8_linear  # noqa: E402
from capture import Buckets  # noqa: E402
from graphrt import Engine  # noqa: E402

HBM_TBS = 3.35  # H100 SXM HBM3 peak, TB/s
PEAK_TFLOPS = {"bf16": 989.0, "fp8": 1979.0}  # H100 SXM dense tensor-core peaks


def linear_params(model, prefix: str) -> tuple[int, int]:
    """(bf16 params, fp8 params) of the linears under `prefix`."""
    bf, f8 = 0, 0
    for name, m in model.named_modules():
        if not name.startswith(prefix):
            continue
        if isinstance(m, FP8Linear):
            f8 += m.weight_fp8.numel()
        elif type(m).__name__ == "Linear":
            bf += m.weight.numel()
    return bf, f8


def step_bytes(model) -> int:
    """Weight bytes one MTP step must read: the LM's linears and the (tied) LM head."""
    bf, f8 = linear_params(model, "llm.")
    head = model.llm.embed_tokens.weight if model.llm.lm_head is None else model.llm.lm_head.weight
    return 2 * bf + f8 + 2 * head.numel()


def stage_ab(engines: dict, keys: list[tuple], reps: int) -> dict:
    """Median ms of each graph replayed alone, engines alternating per repetition."""
    out = {name: {} for name in engines}
    for key in keys:
        times = {name: [] for name in engines}
        names = list(engines)
        for i in range(reps):
            for name in (names if i % 2 == 0 else names[::-1]):
                rt = engines[name].runtime
                times[name].append(event_ms(lambda rt=rt: rt.graphs.replay(key)))
        for name in engines:
            xs = sorted(times[name])
            out[name]["/".join(map(str, key))] = {"p50_ms": round(statistics.median(xs), 3),
                                                   "p90_ms": round(xs[int(0.9 * (len(xs) - 1))], 3)}
    return out


SKINNY_CONFIGS = [(16, 256, 4, 4), (32, 256, 4, 4), (64, 128, 4, 4), (16, 512, 4, 3)]  # BN, BK, warps, stages


def gemm_bench(device, rows_list, reps: int = 20, sweep: bool = False) -> list[dict]:
    """bf16 F.linear vs FP8Linear (quantize + its GEMM: the Triton skinny kernel up to 64 rows,
    else _scaled_mm) vs its GEMM alone vs _scaled_mm alone, on the LM's shapes; `sweep` also
    times four Triton skinny configs at <= 16 rows."""
    shapes = {"qkv_proj": (2048, 2560), "o_proj": (2048, 2048), "gate_up_proj": (2048, 22016),
              "down_proj": (11008, 2048)}
    out = []
    for name, (k, n) in shapes.items():
        w = (torch.randn(n, k, device=device) / k**0.5).to(torch.bfloat16)
        lin = FP8Linear(w, None, input_scale=4.0 / 448)
        for m in rows_list:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            q, rs = lin.quantize(x)
            fns = {"bf16": lambda: F.linear(x, w), "fp8": lambda: lin(x), "fp8_gemm_only": lambda: lin.forward_fp8(q, rs),
                   "scaled_mm_only": lambda: lin._mm(q, rs, lin.weight_scale, None)}
            row = {"linear": name, "rows": m, "K": k, "N": n}
            if m <= 16 and sweep:
                want = lin.forward_fp8(q, rs).float()
                for cfg in SKINNY_CONFIGS:
                    try:
                        got = skinny_fp8_linear(q, lin.weight_fp8, rs, lin.weight_scale, None, *cfg).float()
                        err = ((got - want).norm() / want.norm()).item()
                    except Exception as exc:  # a config the compiler refuses: say so, keep measuring
                        row[f"triton{cfg}_error"] = str(exc).splitlines()[0][:160]
                        continue
                    row[f"triton{cfg}_rel_diff"] = round(err, 6)
                    fns[f"triton{cfg}"] = lambda cfg=cfg: skinny_fp8_linear(q, lin.weight_fp8, rs, lin.weight_scale,
                                                                            None, *cfg)
            for label, fn in fns.items():
                us = captured_us(fn, reps)
                byts = k * n * (2 if label == "bf16" else 1)
                row[f"{label}_us"] = round(us, 2)
                row[f"{label}_weight_GBs"] = round(byts / us / 1e3, 1)
                row[f"{label}_TFLOPs"] = round(2 * m * k * n / us / 1e6, 1)
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(ap)
    ap.add_argument("--calib-pairs", type=int, default=64)
    ap.add_argument("--held-out", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="MTP steps per pair in calibration and the report")
    ap.add_argument("--answer-steps", type=int, default=4, help="MTP steps of the free-running answers")
    ap.add_argument("--percentile", type=float, default=None)
    ap.add_argument("--scopes", default=f"{DEFAULT_SCOPE};lm",
                    help="';'-separated FP8 scopes for the accuracy report; the first is timed")
    ap.add_argument("--eager-batch", type=int, default=16)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--fixed-steps", type=int, default=2)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--slow-iters", type=int, default=6)
    ap.add_argument("--stage-reps", type=int, default=10)
    ap.add_argument("--gemm-rows", type=int, nargs="*", default=[12, 384, 18432])
    ap.add_argument("--sweep-skinny", action="store_true", help="time four Triton skinny GEMM configs at <= 16 rows")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: report,tokens,e2e,stages,gemm")
    ap.add_argument("--wait-for", help="before timing, wait (up to 240 s) until this file exists (a concurrent "
                                       "test run has finished), so timings see an idle GPU")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="fp8")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out_dir, stem, report = result_stem(args.out_dir, args.tag, args=vars(args), image=f"{args.width}x{args.height}")

    def save():
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))

    t = time.perf_counter()
    checkpoint = checkpoint_dir(args)
    if args.checkpoint is None:
        report["synth_s"] = round(time.perf_counter() - t, 1)
    report["checkpoint"], report["preset"] = str(checkpoint), args.preset
    t = time.perf_counter()
    base = Engine.from_pretrained(checkpoint, progress=False, graphs="off", fixed_steps=args.fixed_steps)
    report["load_s"] = round(time.perf_counter() - t, 1)
    print(f"loaded in {report['load_s']} s", flush=True)

    # 1. calibration
    cal_images = images(args.calib_pairs, args.width, args.height, seed=1000)
    cal_pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(cal_images)]
    t = time.perf_counter()
    calib = calibrate(base, cal_pairs, steps=args.steps, batch=args.eager_batch, percentile=args.percentile,
                      progress=False, dataset={"source": f"random noise images {args.width}x{args.height}, "
                                                         f"numpy seed 1000, queries cycling {QUERIES}"})
    report["calibrate_s"] = round(time.perf_counter() - t, 1)
    calib_path = calib.save(out_dir / f"{stem}_calib.json")
    print(f"calibrated {len(calib.linears)} linears on {len(cal_pairs)} pairs in {report['calibrate_s']} s", flush=True)
    del cal_images, cal_pairs
    held_images = images(args.held_out, args.width, args.height, seed=2000)
    held = [(im, QUERIES[(i + 3) % len(QUERIES)]) for i, im in enumerate(held_images)]
    scopes = [s for s in args.scopes.split(";") if s]

    # 2. accuracy per scope
    if "report" not in skip:
        report["accuracy"] = {}
        for scope in scopes:
            t = time.perf_counter()
            fp8 = base.with_options(fp8=str(calib_path), fp8_scope=scope)
            acc = accuracy_report(base, fp8, held, steps=args.steps, answer_steps=args.answer_steps,
                                  batch=args.eager_batch)
            acc["seconds"] = round(time.perf_counter() - t, 1)
            md = markdown(acc, f"FP8 ({scope}) vs bf16, {report['device']}, {report['date']}")
            (out_dir / f"{stem}_accuracy_{scope.replace(',', '_').replace('-', 'no_')}.md").write_text(md)
            report["accuracy"][scope] = {k: v for k, v in acc.items() if k != "layers"}
            report["accuracy"][scope]["layers"] = acc["layers"]
            print(md, flush=True)
            del fp8
            gc.collect()
            save()

    # 3/4. graphs: bf16 (A) and FP8 (B) on the same weights
    wait_for_file(args.wait_for, report)
    if torch.cuda.is_available() and not {"tokens", "e2e", "stages"} <= skip:
        probe = base.processor(held[0][0])
        patch = Buckets.fit((1024, 1680, 4144), probe.num_patches)
        buckets = Buckets(batch_sizes=tuple(sorted(set(args.batch) | {8})), patch_budgets=(patch,),
                          prefill_lengths=(64, 576), max_new_tokens=64)
        t = time.perf_counter()
        common = dict(graphs="on", buckets=buckets, max_new_tokens=buckets.max_new_tokens)
        engines = {"A bf16": base.with_options(**common),
                   "B fp8": base.with_options(**common, fp8=str(calib_path), fp8_scope=scopes[0])}
        report["capture_s"] = round(time.perf_counter() - t, 1)
        report["statuses"] = {k: e.status() for k, e in engines.items()}
        fp8 = engines["B fp8"]
        if "tokens" not in skip:
            pairs = held[:8]
            for label, eng in (("fp8", fp8), ("bf16", engines["A bf16"])):  # bf16: the control
                gr = eng.locate_batch(pairs)
                er = eng.with_options(graphs="off", eager_batch=8).locate_batch(pairs)
                g, e = [r.tokens for r in gr], [r.tokens for r in er]
                first = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(g, e)]
                report[f"{label}_graphs_vs_eager"] = {
                    "rows": len(pairs), "rows_equal": sum(a == b for a, b in zip(g, e)), "tokens_per_row": len(g[0]),
                    "same_tokens": sum(a == b for x, y in zip(g, e) for a, b in zip(x, y)),
                    "first_difference": first, "backends": sorted({r.backend for r in gr} | {r.backend for r in er})}
                print(label, json.dumps(report[f"{label}_graphs_vs_eager"]), flush=True)
            save()
        rows = []
        stages = {}
        for batch in args.batch:
            pool = images(batch, args.width, args.height, seed=batch)
            pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(pool)]
            if "e2e" not in skip:
                calls = {name: (lambda e=e: e.locate_batch(pairs)) for name, e in engines.items()}
                slow = any(event_ms(fn) > 1000 for fn in calls.values())
                samples = interleaved(calls, args.warmup, args.slow_iters if slow else args.iters)
                for name, s in samples.items():
                    rows.append(summarize(name, batch, s))
                    print(json.dumps(rows[-1]), flush=True)
                same = [r.tokens for r in samples["A bf16"][-1][1]] == [r.tokens for r in samples["B fp8"][-1][1]]
                rows[-1]["same_tokens_as_bf16"] = same
            else:
                for e in engines.values():
                    e.locate_batch(pairs)
            if "stages" not in skip:
                prompt_bucket = 576
                keys = [("vision", batch, patch), ("prefill", batch, prompt_bucket), ("step", batch)]
                stages[batch] = stage_ab(engines, keys, args.stage_reps)
                print(json.dumps({"batch": batch, **stages[batch]}), flush=True)
            report["e2e"], report["stages"] = rows, stages
            save()
        report["floors"] = floors(engines, patch, held[0], base)
        del engines, fp8
        gc.collect()
        torch.cuda.empty_cache()
    if torch.cuda.is_available() and "gemm" not in skip:
        report["gemm"] = gemm_bench("cuda", args.gemm_rows, sweep=args.sweep_skinny)
    save()
    (out_dir / f"{stem}.md").write_text(summary_md(report))
    print(summary_md(report))


def floors(engines: dict, patch: int, pair, base) -> dict:
    """Work per stage for the achieved-rate columns: weight bytes per step, linear FLOPs per image."""
    out = {}
    prompt = base.prompts.build(pair[1], base.processor(pair[0]).num_tokens((2, 2)))
    for name, e in engines.items():
        m = e.model
        vb, vf = linear_params(m, "vision.")
        pb, pf = linear_params(m, "projector.")
        lb, lf = linear_params(m, "llm.")
        out[name] = {"step_weight_bytes": step_bytes(m),
                     "step_floor_ms": round(step_bytes(m) / (HBM_TBS * 1e9), 3),
                     "vision_linear_flop_per_image": 2 * patch * (vb + vf) + 2 * patch // 4 * (pb + pf),
                     "prefill_linear_flop_per_row": 2 * (len(prompt.ids) - 1) * (lb + lf),
                     "prompt_tokens": len(prompt.ids), "patches": patch}
    return out


def summary_md(r: dict) -> str:
    lines = [f"# FP8 vs bf16, {r['date']}, {r['device']}, torch {r['torch']}", "",
             f"Checkpoint {r.get('preset') or r['checkpoint']} (random weights: every row runs exactly "
             f"{r['args']['fixed_steps']} MTP steps; accuracy is numerical fidelity only). Image {r['image']}.", ""]
    if "accuracy" in r:
        lines += ["## Accuracy on held-out pairs (teacher-forced steps)", "",
                  "| scope | vision emb cos | K cache cos | step | top-1 agree | logit cos mean / min | KL mean | "
                  "answers exact / token agree |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for scope, a in r["accuracy"].items():
            st = a["stages"]
            for k in range(a["steps"]):
                s = st[f"step{k + 1}"]
                lines.append(f"| {scope} | {st['vision']['embed_cos_mean']:.6f} | {st['prefill']['k_cos_mean']:.6f} | "
                             f"{k + 1} | {s['top1_agreement']:.4f} | {s['logit_cos_mean']:.6f} / "
                             f"{s['logit_cos_min']:.6f} | {s['kl_mean']:.2e} | {a['answers']['exact_fraction']:.3f} / "
                             f"{a['answers']['token_agreement']:.3f} |")
        lines.append("")
    for label in ("fp8", "bf16"):
        g = r.get(f"{label}_graphs_vs_eager")
        if g:
            lines += [f"{label} graphs vs {label} eager (FlashAttention varlen vs dense SDPA): {g['rows_equal']}/"
                      f"{g['rows']} rows equal token for token, {g.get('same_tokens')}/{g['rows'] * g['tokens_per_row']}"
                      f" tokens; first differing token per row {g.get('first_difference')}.", ""]
    if r.get("e2e"):
        lines += ["## End to end (interleaved A/B)", "", "| config | B | e2e P50 | P90 | P99 | preprocess | vision | "
                  "prefill | decode | img/s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for x in r["e2e"]:
            lines.append(f"| {x['config']} | {x['batch']} | {x['e2e_p50_ms']} | {x['e2e_p90_ms']} | {x['e2e_p99_ms']} | "
                         f"{x.get('preprocess_p50_ms')} | {x.get('vision_p50_ms')} | {x.get('prefill_p50_ms')} | "
                         f"{x.get('decode_p50_ms')} | {x['img_per_s']} |")
        lines.append("")
    if r.get("stages"):
        fl = r.get("floors", {})
        lines += ["## Graph stages replayed alone (CUDA events, A/B alternating)", "",
                  "| B | stage | config | P50 ms | P90 ms | achieved | floor / peak |", "| ---: | --- | --- | ---: | ---: | --- | --- |"]
        for batch, per in r["stages"].items():
            for name, st in per.items():
                f = fl.get(name, {})
                for key, v in st.items():
                    stage = key.split("/")[0]
                    ach, floor = "", ""
                    if stage == "step" and f:
                        ach = f"{f['step_weight_bytes'] / max(v['p50_ms'], 1e-9) / 1e9:.2f} TB/s weights"
                        floor = f"{f['step_floor_ms']} ms at {HBM_TBS} TB/s ({v['p50_ms'] / max(f['step_floor_ms'], 1e-9):.1f}x)"
                    elif stage == "vision" and f:
                        ach = f"{int(batch) * f['vision_linear_flop_per_image'] / max(v['p50_ms'], 1e-9) / 1e9:.0f} TFLOP/s linears"
                    elif stage == "prefill" and f:
                        ach = f"{int(batch) * f['prefill_linear_flop_per_row'] / max(v['p50_ms'], 1e-9) / 1e9:.0f} TFLOP/s linears"
                    if stage != "step":
                        floor = f"peak {PEAK_TFLOPS['fp8' if 'fp8' in name else 'bf16']:.0f}"
                    lines.append(f"| {batch} | {key} | {name} | {v['p50_ms']} | {v['p90_ms']} | {ach} | {floor} |")
        lines.append("")
    if r.get("gemm"):
        lines += ["## LM linear shapes as GEMMs (CUDA graph of 20 calls, median)", "",
                  "| linear | rows | bf16 us | fp8 (quant+GEMM) us | fp8 GEMM only us | _scaled_mm only us | "
                  "bf16 / fp8 weight GB/s | bf16 / fp8 TFLOP/s |", "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for g in r["gemm"]:
            lines.append(f"| {g['linear']} | {g['rows']} | {g['bf16_us']} | {g['fp8_us']} | {g['fp8_gemm_only_us']} | "
                         f"{g.get('scaled_mm_only_us')} | {g['bf16_weight_GBs']} / {g['fp8_weight_GBs']} | "
                         f"{g['bf16_TFLOPs']} / {g['fp8_TFLOPs']} |")
        tri = [(g, min((v, key) for key, v in g.items() if key.startswith("triton(") and key.endswith("_us")))
               for g in r["gemm"] if any(key.startswith("triton(") and key.endswith("_us") for key in g)]
        if tri:
            lines += ["", "| linear | rows | _scaled_mm GEMM us | best Triton skinny GEMM us (BN, BK, warps, stages) | "
                      "its weight GB/s |", "| --- | ---: | ---: | --- | ---: |"]
            for g, (us, key) in tri:
                gbs = round(g["K"] * g["N"] / us / 1e3, 1)
                lines.append(f"| {g['linear']} | {g['rows']} | {g['fp8_gemm_only_us']} | {us} {key[6:-3]} | {gbs} |")
        for m in sorted({g["rows"] for g in r["gemm"]}):
            sel = [g for g in r["gemm"] if g["rows"] == m]
            lines.append(f"| 36 layers x 4 linears | {m} | {36 * sum(g['bf16_us'] for g in sel) / 1000:.2f} ms | "
                         f"{36 * sum(g['fp8_us'] for g in sel) / 1000:.2f} ms | "
                         f"{36 * sum(g['fp8_gemm_only_us'] for g in sel) / 1000:.2f} ms | "
                         f"{36 * sum(g.get('scaled_mm_only_us', 0) for g in sel) / 1000:.2f} ms | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

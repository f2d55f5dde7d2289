"""End-to-end latency and throughput of the Engine, with back-to-back interleaved A/B.

    python benchmarks/latency.py --checkpoint DIR --batch 1 32 --a graphs=on --b graphs=off
    python benchmarks/latency.py --preset 3b --batch 1 32 --many 4      # writes a random 3B first

Each measured call is engine.locate_batch on PIL images (preprocessing included) with distinct
images per row, timed from the call to the returned boxes. Configurations A and B are engines on
the same loaded weights (Engine.with_options); their calls alternate A, B, B, A, ... so drift of
the machine (clocks, temperature) hits both. Random weights give random tokens, so every row runs
a fixed number of MTP steps (--steps; end tokens ignored), and the report states it.

Reported per configuration and batch: P50/P90/P99 end to end, P50 of each stage (preprocess,
vision, prefill, decode), images/s at P50, GPU memory, and what the work was (image size,
patches, image tokens, prompt tokens, steps, output tokens, stop reasons). --many N adds
locate_many(image, N queries) against N separate locate calls, interleaved the same way.
Writes JSON and a markdown table (--out-dir).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from capture.plan import plan_for_model
from graphrt import Engine
from graphrt.engine import EngineOptions
from graphrt.timing import StageClock, stage_clock_syncs

QUERIES = ["person", "car", "traffic light", "dog", "bicycle", "the red umbrella", "bus", "cat"]


LADDERS = {"prefill": "prefill_lengths", "patches": "patch_budgets"}


def with_ladders(model, over: dict) -> dict:
    """A config's `ladders` put on the buckets the default plan derives for `model`."""
    ladders = over.pop("ladders", None)
    if ladders:
        derived = plan_for_model(model, EngineOptions().memory_gb).buckets
        over.update(buckets=dataclasses.replace(derived, **ladders), memory_gb=None)
    return over


def parse_config(text: str) -> dict:
    """"graphs=off,share_prefix=false,attention=torch-fa2" -> EngineOptions / GenerationConfig overrides.
    `prefill=64:256:480:576` / `patches=1024:1680:4144` set the prefill / vision ladders (main() puts
    them on the buckets the default memory plan derives for the loaded model, so configs differ only
    in the ladders; such a config runs with memory_gb=None, its buckets unchecked);
    `vision_attention=varlen` the vision tower's attention in that config's graphs;
    `vision_residual=gemm|kernel` where that config's graphs of the tower add the residual
    (GRAPHRT_VISION_RESIDUAL's values);
    `stage_clock=sync` every stage lap synchronizing (graphrt.timing's A/B switch);
    `host=before` the host side as before the intake pass (benchmarks/host_gaps.py's patches,
    applied around that config's calls; pair it with batch_intake=false);
    `env.NAME=VALUE` an environment switch (e.g. env.GRAPHRT_FP8_O_INPUT=quantizer) set while that
    config's engine is made (its graphs captured) and around each of its calls."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key.strip().startswith("env."):
            out.setdefault("env", {})[key.strip()[4:]] = value
            continue
        if key.strip() in LADDERS:
            out.setdefault("ladders", {})[LADDERS[key.strip()]] = tuple(int(v) for v in value.split(":"))
            continue
        low = value.lower()
        out[key.strip()] = True if low == "true" else False if low == "false" else int(value) if value.isdigit() \
            else value
    return out


def clocked(sync_laps: bool, fn, *args):
    """fn(*args) with StageClock's laps synchronizing (the old clock, stage_clock=sync) or not."""
    StageClock.synchronize = sync_laps
    try:
        return fn(*args)
    finally:
        StageClock.synchronize = None  # back to GRAPHRT_STAGE_CLOCK


def with_host(host: str, fn, *args):
    """fn(*args) with the host side as before the intake pass (host=before) or as now."""
    if host == "now":
        return fn(*args)
    if host != "before":
        raise ValueError(f"host must be now or before, not {host!r}")
    from host_gaps import host_before  # benchmarks/ is the script's directory

    with host_before():
        return fn(*args)


def with_environment(values: dict, fn, *args):
    with environment(values):
        return fn(*args)


@contextlib.contextmanager
def environment(values: dict):
    """os.environ with `values` set, restored afterwards (a config's env.NAME=VALUE switches)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def percentile(xs, q):
    return round(float(np.percentile(np.asarray(xs), q)), 2)


def images(n: int, width: int, height: int, seed: int) -> list[Image.Image]:
    rs = np.random.RandomState(seed)
    return [Image.fromarray((rs.rand(height, width, 3) * 255).astype(np.uint8)) for _ in range(n)]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return (time.perf_counter() - t) * 1000.0, out


GPU_STAGES = ("vision_ms", "prefill_ms", "decode_ms")


def summarize(name: str, batch: int, samples: list[tuple[float, list]]) -> dict:
    e2e = [ms for ms, _ in samples]
    stages = collections.defaultdict(list)
    for _, results in samples:
        for key in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms"):
            stages[key].append(results[0].timings_ms.get(key, float("nan")))
    last = samples[-1][1]
    r0 = last[0]
    p50 = percentile(e2e, 50)
    return {
        "config": name, "batch": batch, "runs": len(e2e),
        "e2e_p50_ms": p50, "e2e_p90_ms": percentile(e2e, 90), "e2e_p99_ms": percentile(e2e, 99),
        **{f"{k[:-3]}_p50_ms": percentile(v, 50) for k, v in stages.items()},
        "img_per_s": round(batch / p50 * 1000.0, 1),
        # per call: e2e minus the GPU stages' laps (every host ms outside them), and minus all four laps
        "host_outside_gpu_p50_ms": percentile([ms - sum(r[0].timings_ms.get(k, 0.0) for k in GPU_STAGES)
                                               for ms, r in samples], 50),
        "exposed_p50_ms": percentile([ms - sum(r[0].timings_ms.get(k, 0.0) for k in ("preprocess_ms", *GPU_STAGES))
                                      for ms, r in samples], 50),
        "image": f"{r0.image_size[0]}x{r0.image_size[1]}", "patches": r0.image_patches,
        "image_tokens": r0.image_tokens, "prompt_tokens": r0.prompt_tokens,
        "steps": sorted({r.steps for r in last}), "output_tokens": sorted({len(r.tokens) for r in last}),
        "stop": dict(collections.Counter(r.stop_reason for r in last)),
    }


def interleaved(fns: dict, warmup: int, iters: int) -> dict[str, list]:
    """Run every function `warmup` times, then `iters` rounds in alternating order (ABBA...)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples = {name: [] for name in names}
    for i in range(iters):
        for name in (names if i % 2 == 0 else names[::-1]):
            samples[name].append(timed(fns[name]))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory")
    src.add_argument("--preset", choices=["tiny", "mid", "3b"], help="write a random checkpoint of this preset first")
    ap.add_argument("--a", default="graphs=on", help="config A: comma-separated option=value (default graphs=on)")
    ap.add_argument("--b", default="graphs=off,eager_batch=64",
                    help="config B (default: eager, every row in one batch); 'none' for A alone")
    ap.add_argument("--c", default="none", help="config C, interleaved with A and B (default: none)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--steps", type=int, default=2, help="MTP steps per row (fixed; end tokens ignored)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20, help="measured calls per configuration and batch")
    ap.add_argument("--slow-iters", type=int, default=6, help="measured calls when a call takes over a second")
    ap.add_argument("--many", type=int, default=0, help="also compare locate_many(N queries) vs N locate calls")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="latency")
    args = ap.parse_args()

    checkpoint = args.checkpoint
    if checkpoint is None:
        from weights.synth import write_preset

        checkpoint = write_preset(args.preset, Path(tempfile.mkdtemp()) / args.preset,
                                  device="cuda" if torch.cuda.is_available() else "cpu", progress=False)
    t0 = time.perf_counter()
    base = Engine.from_pretrained(checkpoint, progress=False, fixed_steps=args.steps, graphs="off")
    load_s = time.perf_counter() - t0
    configs = {"A " + args.a: parse_config(args.a)}
    if args.b != "none":
        configs["B " + args.b] = parse_config(args.b)
    if args.c != "none":
        configs["C " + args.c] = parse_config(args.c)
    engines, stage_sync, host_side, env = {}, {}, {}, {}
    default_vision_attention = base.model.vision.attention
    default_vision_residual = base.model.vision.residual
    for name, over in configs.items():
        t = time.perf_counter()
        # vision_attention=MODE (graphrt.vision.VISION_ATTENTION_MODES): the tower's attention as
        # this config's graphs are captured (they keep it; the weights stay shared).
        base.model.vision.attention = over.pop("vision_attention", default_vision_attention)
        base.model.vision.residual = over.pop("vision_residual", default_vision_residual)
        stage_sync[name] = stage_clock_syncs(over.pop("stage_clock", "events"))
        host_side[name] = over.pop("host", "now")
        env[name] = over.pop("env", {})
        with environment(env[name]):
            engines[name] = base.with_options(**with_ladders(base.model, over))
        base.model.vision.attention = default_vision_attention
        base.model.vision.residual = default_vision_residual
        print(f"{name}: ready in {time.perf_counter() - t:.1f} s; {engines[name].status()['graph_runtime']}",
              flush=True)

    rows = []
    for batch in args.batch:
        pool = images(batch, args.width, args.height, seed=batch)
        pairs = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(pool)]
        calls = {name: (lambda e=e, s=stage_sync[name], h=host_side[name], v=env[name]:
                        with_environment(v, with_host, h, clocked, s, e.locate_batch, pairs))
                 for name, e in engines.items()}
        probe = max(timed(fn)[0] for fn in calls.values())
        iters = args.iters if probe < 1000 else args.slow_iters
        samples = interleaved(calls, args.warmup, iters)
        first = [r.tokens for r in next(iter(samples.values()))[-1][1]]
        for name, s in samples.items():
            # every row's tokens of this config's last call against config A's (the same pairs)
            rows.append(dict(summarize(name, batch, s), same_tokens_as_a=[r.tokens for r in s[-1][1]] == first))
            print(json.dumps(rows[-1]), flush=True)

    many = []
    if args.many:
        name, engine = next(iter(engines.items()))
        image = images(1, args.width, args.height, seed=99)[0]
        queries = [QUERIES[i % len(QUERIES)] for i in range(args.many)]
        calls = {f"locate_many({args.many})": lambda: engine.locate_many(image, queries),
                 f"{args.many} x locate": lambda: [engine.locate(image, q) for q in queries]}
        samples = interleaved(calls, args.warmup, args.iters)
        same = [r.tokens for r in engine.locate_many(image, queries)] == [engine.locate(image, q).tokens
                                                                          for q in queries]
        for label, s in samples.items():
            e2e = [ms for ms, _ in s]
            many.append({"config": name, "call": label, "e2e_p50_ms": percentile(e2e, 50),
                         "e2e_p90_ms": percentile(e2e, 90), "e2e_p99_ms": percentile(e2e, 99),
                         "same_tokens": same})
            print(json.dumps(many[-1]), flush=True)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    memory = {}
    if torch.cuda.is_available():
        memory = {"max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
                  "reserved_mib": round(torch.cuda.memory_reserved() / 2**20)}
    report = {"date": dt.date.today().isoformat(), "device": device, "torch": torch.__version__,
              "checkpoint": str(checkpoint), "preset": args.preset, "dtype": str(base.model.dtype),
              "fixed_steps": args.steps, "load_s": round(load_s, 1), "gpu_memory": memory,
              "statuses": {name: e.status() for name, e in engines.items()}, "rows": rows, "locate_many": many}
    write_report(report, markdown(report), args.out_dir, args.tag)


def write_report(report: dict, text: str, out_dir: str, tag: str) -> None:
    """`report` as DATE_TAG_DEVICE.json and its markdown `text` as .md in `out_dir`; prints the markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{report['date']}_{tag}_{report['device'].replace(' ', '-')}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (out / f"{stem}.md").write_text(text)
    print(text)


def markdown(report: dict) -> str:
    lines = [f"# Latency, {report['date']}, {report['device']}, torch {report['torch']}, {report['dtype']}",
             "", f"Random weights: every row runs exactly {report['fixed_steps']} MTP steps (end tokens ignored). "
             f"GPU memory: {report['gpu_memory']}.", "",
             "| config | batch | e2e P50 | P90 | P99 | preprocess | vision | prefill | decode | img/s | image | "
             "patches | img tok | prompt tok | steps | out tok | stop |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | "
             "--- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['config']} | {r['batch']} | {r['e2e_p50_ms']} | {r['e2e_p90_ms']} | {r['e2e_p99_ms']} | "
                     f"{r.get('preprocess_p50_ms')} | {r.get('vision_p50_ms')} | {r.get('prefill_p50_ms')} | "
                     f"{r.get('decode_p50_ms')} | {r['img_per_s']} | {r['image']} | {r['patches']} | "
                     f"{r['image_tokens']} | {r['prompt_tokens']} | {r['steps']} | {r['output_tokens']} | "
                     f"{r['stop']} |")
    if report["locate_many"]:
        lines += ["", "| config | call | e2e P50 | P90 | P99 | same tokens |", "| --- | --- | ---: | ---: | ---: | --- |"]
        for r in report["locate_many"]:
            lines.append(f"| {r['config']} | {r['call']} | {r['e2e_p50_ms']} | {r['e2e_p90_ms']} | {r['e2e_p99_ms']} | "
                         f"{r['same_tokens']} |")
    lines.append("")
    lines.append("Prompt tokens are realistic: synth-checkpoint's BPE is trained on the prompt's words "
                 "(weights/synth_tokenizer.py), so a 640x480 prompt has ~451 tokens, near the real Qwen2 "
                 "tokenizer's ~455 (the older bytes-only tokenizer gave ~545).")
    lines.append("Stage columns are P50 ms of the first row's stage timings (preprocess: that row's image). "
                 "img/s = batch / e2e P50.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

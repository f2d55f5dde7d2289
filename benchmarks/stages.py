"""Per-stage latency, CUDA graphs vs eager, back to back in one process.

    python benchmarks/stages.py --checkpoint DIR [--batch 1 8 32] [--out results.json]

For each batch size (one 640x480 image per row): the graph replays of vision, prefill and one
MTP step (median of CUDA-event timings); the same stage bodies launched without graphs; the
plain eager generator (dense SDPA) per stage; and end to end, graphs and eager interleaved.
Random weights give random tokens, so rows run a fixed budget of tokens (--max-new-tokens) and
the number of MTP steps taken is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from capture import Buckets, GraphRuntime
from graphrt import Engine, EngineOptions, GenerationConfig
from graphrt.attention import sdpa
from graphrt.generate import EagerBatch, generate
from graphrt.request import Batch

WEIGHT_FLOOR_NOTE = "step floor: all LM weights read once (~6.2 GB bf16) at ~3.0 TB/s = ~2.1 ms"


def cuda_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    engine = Engine.from_pretrained(args.checkpoint, EngineOptions(graphs="off", generation=gen, progress=False))
    processed = engine.processor(Image.new("RGB", (640, 480)))
    prompt = engine.prompts.build("person</c>car", processed.num_tokens((2, 2)))
    patches = Buckets.fit((1024, 1680, 4144), processed.num_patches)
    length = (len(prompt.ids) + 63) // 64 * 64
    buckets = Buckets(batch_sizes=tuple(args.batch), patch_budgets=(patches,), prefill_lengths=(length,),
                      max_new_tokens=max(16, args.max_new_tokens))
    t0 = time.perf_counter()
    runtime = GraphRuntime(engine.model, buckets, gen, strict=True)
    runtime.warmup(progress=False)
    capture_s = time.perf_counter() - t0
    pipe = runtime.pipe
    rows_out = []
    for b in args.batch:
        pils = [Image.fromarray((np.random.RandomState(i).rand(480, 640, 3) * 255).astype(np.uint8)) for i in range(b)]
        procs = [engine.processor(p) for p in pils]
        batch = Batch.of_prompts(procs, [prompt] * b)
        result = runtime.run(batch, gen)  # sets real inputs and state
        steps_taken = max(r.steps for r in result)
        graph = {stage: cuda_ms(lambda k=key: runtime.graphs.replay(k), args.repeat)
                 for stage, key in (("vision", ("vision", b, patches)), ("prefill", ("prefill", b, length)),
                                    ("step", ("step", b)))}
        with torch.no_grad():
            launched = {"vision": cuda_ms(lambda: pipe.vision(b, patches), args.repeat),
                        "prefill": cuda_ms(lambda: pipe.prefill(b, length), args.repeat),
                        "step": cuda_ms(lambda: pipe.step(b), args.repeat)}
        # Plain eager generator, stage by stage.
        marks: list[tuple[str, float]] = []

        def mark(name):
            torch.cuda.synchronize()
            marks.append((name, time.perf_counter()))

        eager_runs = []
        for _ in range(3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            embeds = engine.encode_images(procs)
            torch.cuda.synchronize()
            vision_ms = (time.perf_counter() - t) * 1000
            marks.clear()
            mark("start")
            generate(engine.model, sdpa.lm_attention, EagerBatch.of(batch, embeds), gen, on_stage=mark)
            times = [(n, (t2 - t1) * 1000) for (_, t1), (n, t2) in zip(marks, marks[1:])]
            eager_runs.append((vision_ms, times[0][1], statistics.median([x for n, x in times if n == "step"])))
        eager = {"vision": round(statistics.median(r[0] for r in eager_runs), 3),
                 "prefill": round(statistics.median(r[1] for r in eager_runs), 3),
                 "step": round(statistics.median(r[2] for r in eager_runs), 3)}
        row = {"batch": b, "graph_ms": graph, "uncaptured_ms": launched, "eager_ms": eager,
               "steps": steps_taken, "output_tokens": len(result[0].tokens), "image": "640x480",
               "patches": processed.num_patches, "patch_bucket": patches, "image_tokens": prompt.image_tokens,
               "prompt_tokens": len(prompt.ids), "prefill_bucket": length}
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "kernel": runtime.kernel_name,
            "capture_s": round(capture_s, 1), "graphs": len(runtime.graphs),
            "graph_pool_mib": round(runtime.pool_bytes / 2**20), "note": WEIGHT_FLOOR_NOTE, "rows": rows_out}
    lines = ["| B | stage | graph ms | uncaptured ms | eager ms |", "| --- | --- | --- | --- | --- |"]
    for r in rows_out:
        for stage in ("vision", "prefill", "step"):
            lines.append(f"| {r['batch']} | {stage} | {r['graph_ms'][stage]} | {r['uncaptured_ms'][stage]} | "
                         f"{r['eager_ms'][stage]} |")
    info["table"] = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)
    print(info["table"])
    print(json.dumps({k: v for k, v in info.items() if k not in ("rows", "table")}))


if __name__ == "__main__":
    main()

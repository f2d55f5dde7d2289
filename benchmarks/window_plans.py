"""A/B of the two MTP-window attention plans on the step graph, back to back in one process.

    python benchmarks/window_plans.py --checkpoint DIR [--batch 1 8 32] [--out results.json]

shifted: the window's K/V written over the last accepted slot, one contiguous non-causal call,
then a write-back. lse: the window's K/V at its own slots, two non-causal calls merged by
log-sum-exp. Reports the median step-replay time of each, interleaved, and whether tokens agree.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from PIL import Image

from capture import Buckets, GraphRuntime
from graphrt import Engine, EngineOptions, GenerationConfig
from graphrt.request import Batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--replays", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()
    gen = GenerationConfig(max_new_tokens=12)
    engine = Engine.from_pretrained(args.checkpoint, EngineOptions(graphs="off", generation=gen, progress=False))
    pils = [Image.fromarray((np.random.RandomState(i).rand(480, 640, 3) * 255).astype(np.uint8))
            for i in range(max(args.batch))]
    procs = [engine.processor(p) for p in pils]
    prompt = engine.prompts.build("person</c>car", procs[0].num_tokens((2, 2)))
    buckets = Buckets(batch_sizes=tuple(args.batch), patch_budgets=(1680,),
                      prefill_lengths=((len(prompt.ids) + 63) // 64 * 64,), max_new_tokens=16)
    plans = {p: GraphRuntime(engine.model, buckets, gen, strict=True, window_plan=p) for p in ("shifted", "lse")}
    for rt in plans.values():
        rt.warmup(progress=False)
    rows_out = []
    for b in args.batch:
        batch = Batch.of_prompts(procs[:b], [prompt] * b)
        tokens = {p: [r.tokens for r in rt.run(batch, gen)] for p, rt in plans.items()}
        times = {p: [] for p in plans}
        for _ in range(args.rounds):  # interleaved, so drift hits both plans
            for p, rt in plans.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(args.replays):
                    rt.graphs.replay(("step", b))
                end.record()
                torch.cuda.synchronize()
                times[p].append(start.elapsed_time(end) / args.replays)
        row = {"batch": b, **{f"{p}_step_ms": round(statistics.median(t), 3) for p, t in times.items()},
               "tokens_agree": tokens["shifted"] == tokens["lse"]}
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows_out}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)
    print(json.dumps(info))


if __name__ == "__main__":
    main()

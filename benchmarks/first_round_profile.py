"""Where the merged first round's time goes (issue 12, point 4): the prefill replay with the first
round inside it against the prefill replay without it, and the step replay it saves; CUDA-event
timed, replays interleaved (merged prefill, separate prefill, step, ...), P50 of --iters; then a
torch.profiler kernel table of one replay of each (kernel, count, total us), so the difference
merged - separate prefill is named kernel by kernel. 3B (or any) checkpoint, one 640x480 image
per row, the 480-token prefill bucket, B = --batch.

    python benchmarks/first_round_profile.py --checkpoint /tmp/ck3b --batch 1 32 --out-dir $OUT
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from capture import Buckets, GraphRuntime
from graphrt import Engine, GenerationConfig
from graphrt.request import Batch


def replay_ms(rt, key, n=1) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        rt.graphs.replay(key)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def kernel_table(rt, key) -> list[tuple[str, int, float]]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        rt.graphs.replay(key)
        torch.cuda.synchronize()
    rows = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            rows[e.name[:90]][0] += 1
            rows[e.name[:90]][1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    return sorted(((k, c, round(t, 1)) for k, (c, t) in rows.items()), key=lambda r: -r[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args()
    engine = Engine.from_pretrained(args.checkpoint, progress=False, graphs="off")
    gen = GenerationConfig(fixed_steps=2, max_new_tokens=64)
    rs = np.random.RandomState(0)
    images = [engine.processor(Image.fromarray(rs.randint(0, 255, (480, 640, 3), dtype=np.uint8)))
              for _ in range(max(args.batch))]
    queries = ["person", "car", "dog", "cat"]
    batch = Batch.of_prompts(images, [engine.prompts.build(queries[i % 4], im.num_tokens((2, 2)))
                                      for i, im in enumerate(images)])
    buckets = Buckets(batch_sizes=tuple(args.batch), patch_budgets=(1680,), prefill_lengths=(480,), max_new_tokens=64)
    rts = {}
    for how in ("merged", "separate"):
        rts[how] = GraphRuntime(engine.model, buckets, gen, first_round=how)
        rts[how].warmup(progress=False)
    report = {"date": dt.date.today().isoformat(), "device": torch.cuda.get_device_name(),
              "prompt_tokens": len(batch.rows[0].prompt.ids), "patches": images[0].num_patches, "results": []}
    lines = [f"# First round merged into the prefill: where the time goes ({report['date']}, {report['device']})", "",
             f"3B random, 640x480 ({images[0].num_patches} patches), {report['prompt_tokens']}-token prompts, "
             f"prefill bucket 480; replays interleaved, P50 of {args.iters}.", ""]
    for b in args.batch:
        for how, rt in rts.items():  # state as a real request leaves it (vision, prefill, steps)
            rt.run(batch.part(list(range(b)), list(range(b))), gen)
        times = collections.defaultdict(list)
        for _ in range(args.iters):
            times["prefill merged"].append(replay_ms(rts["merged"], ("prefill", b, 480)))
            times["prefill separate"].append(replay_ms(rts["separate"], ("prefill", b, 480)))
            times["step"].append(replay_ms(rts["separate"], ("step", b)))
        p50 = {k: round(float(np.median(v)), 3) for k, v in times.items()}
        tables = {"prefill merged": kernel_table(rts["merged"], ("prefill", b, 480)),
                  "prefill separate": kernel_table(rts["separate"], ("prefill", b, 480)),
                  "step": kernel_table(rts["separate"], ("step", b))}
        report["results"].append({"batch": b, "p50_ms": p50, "kernels": tables})
        extra = p50["prefill merged"] - p50["prefill separate"]
        lines += [f"## B={b}", "", f"prefill merged {p50['prefill merged']} ms, separate {p50['prefill separate']} ms "
                  f"(+{extra:.3f} ms for round 1 inside), step replay {p50['step']} ms: per batch "
                  f"{p50['step'] - extra:.3f} ms saved.", "",
                  "Kernels whose total differs (merged - separate prefill, us; profiler, one replay each):", "",
                  "| kernel | count merged | count separate | us merged | us separate | diff |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        m = {k: (c, t) for k, c, t in tables["prefill merged"]}
        s = {k: (c, t) for k, c, t in tables["prefill separate"]}
        diff = sorted(set(m) | set(s), key=lambda k: -abs(m.get(k, (0, 0))[1] - s.get(k, (0, 0))[1]))
        for k in diff[:25]:
            cm, tm = m.get(k, (0, 0.0))
            cs, ts = s.get(k, (0, 0.0))
            lines.append(f"| `{k}` | {cm} | {cs} | {tm} | {ts} | {tm - ts:+.1f} |")
        lines += ["", f"Totals: merged {sum(t for _, _, t in tables['prefill merged']):.0f} us, separate "
                  f"{sum(t for _, _, t in tables['prefill separate']):.0f} us, step {sum(t for _, _, t in tables['step']):.0f} us.", ""]
        print(json.dumps({"batch": b, **p50}), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{report['date']}_first-round-profile_{report['device'].replace(' ', '-')}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

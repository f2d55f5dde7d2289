"""The batched intake alone: ImageProcessor.process_loaded of B decoded PIL frames on the GPU, the
host pixels uploaded pageable (one copy per image on the calling thread: EngineOptions
pinned_intake=False) vs through the pinned ring filled by N threads (graphrt/host_staging.py),
interleaved in rotating order over the same images. No model: the processor with the released
preprocessor config (in_token_limit as the checkpoint's; 640x480 is not downscaled, only padded
up to multiples of 28: one resize pass pair per batch).

Per call: `host` = process_loaded's wall time (what the call's critical path waits for on the
host), `done` = until the resized batch is on the GPU (a synchronize after it), both P50/P90/P99;
the copy's rate (B x H x W x 4 bytes of RGBX / host ms). Pixels are checked equal across variants.

    python benchmarks/preprocess_ab.py --batch 1 32 --threads 4 8 16 --iters 30 --out res.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from graphrt.config import PreprocessorConfig
from graphrt.host_staging import PinnedStaging
from graphrt.processor import ImageProcessor


def pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--out", default="preprocess_ab.json")
    args = ap.parse_args()
    cfg = PreprocessorConfig()
    processors = {"pageable": ImageProcessor(cfg, resize_device="cuda")}
    for n in args.threads:
        processors[f"pinned-t{n}"] = ImageProcessor(cfg, resize_device="cuda", staging=PinnedStaging("cuda", n))
    report = {"device": torch.cuda.get_device_name(0), "cpu_count": __import__("os").cpu_count(),
              "work": f"process_loaded of B distinct {args.width}x{args.height} RGB PIL images "
                      f"(RGBX {args.width * args.height * 4:,} bytes each), {args.iters} calls per variant", "results": {}}
    rs = np.random.RandomState(0)
    for batch in args.batch:
        images = [Image.fromarray((rs.rand(args.height, args.width, 3) * 255).astype(np.uint8)) for _ in range(batch)]
        names = list(processors)
        host = {n: [] for n in names}
        done = {n: [] for n in names}
        pixels = {}
        for i in range(args.warmup + args.iters):
            for name in names[i % len(names):] + names[:i % len(names)]:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = processors[name].process_loaded(images)
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                t2 = time.perf_counter()
                if i >= args.warmup:
                    host[name].append((t1 - t0) * 1e3)
                    done[name].append((t2 - t0) * 1e3)
                if i == args.warmup:
                    pixels[name] = torch.stack([o.rgb for o in out]).cpu()
        ref = pixels["pageable"]
        mb = batch * args.width * args.height * 4 / 1e6
        res = {"same_pixels": all(torch.equal(p, ref) for p in pixels.values()), "mbytes": round(mb, 2)}
        for name in names:
            res[name] = {"host_ms": {q: pct(host[name], q) for q in (50, 90, 99)},
                         "done_ms": {q: pct(done[name], q) for q in (50, 90, 99)},
                         "copy_gb_s_at_p50": round(mb / pct(host[name], 50), 2)}
        report["results"][f"B={batch}"] = res
        print(f"B={batch} ({mb:.1f} MB RGBX) same pixels: {res['same_pixels']}")
        for name in names:
            r = res[name]
            print(f"  {name:12s} host P50/P90/P99 {r['host_ms'][50]:.3f}/{r['host_ms'][90]:.3f}/{r['host_ms'][99]:.3f} ms"
                  f"  done {r['done_ms'][50]:.3f}/{r['done_ms'][90]:.3f}/{r['done_ms'][99]:.3f} ms"
                  f"  ({r['copy_gb_s_at_p50']} GB/s)")
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Host preprocessing of a one-frame call, three device-path variants of the processor interleaved
(mid preset: real vision widths; eager engine: the host path is the same with graphs on):

  pinned    no EXIF copy, np.asarray (one copy out of PIL), pinned block, async copy to the GPU
  pageable  no EXIF copy, np.asarray, pageable (synchronous) copy to the GPU (kept; since the pre
            branch the processor reads PIL's RGBX memory instead of np.asarray: host_gaps.py)
  before    exif_transpose copy, np.array (two copies), pageable copy

Reports Engine.locate's preprocess_ms (P50/P90 of --iters calls per variant, 640x480 PIL image).

    python benchmarks/preprocess_ab.py --iters 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

import graphrt.processor as proc
from graphrt import Engine
from graphrt.gpu_resize import resize_bicubic
from weights.synth import write_preset


def variant_pinned(self, image, device):
    target = self.rounded_size(*self.capped_size(*image.size))
    rgb = proc.host_pixels(image).pin_memory().to(device, non_blocking=True)
    return resize_bicubic(rgb, target)


def variant_pageable(self, image, device):
    capped = self.capped_size(*image.size)
    target = self.rounded_size(*capped)
    rgb = proc.host_pixels(image).to(device)
    return resize_bicubic(rgb, target)


def variant_before(self, image, device):
    image = ImageOps.exif_transpose(image)
    target = self.rounded_size(*self.capped_size(*image.size))
    rgb = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device)
    return resize_bicubic(rgb, target)


ORIGINAL = proc.ImageProcessor.rescale_on_device
VARIANTS = {"pinned": variant_pinned, "pageable": variant_pageable, "before": variant_before}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--out", default="preprocess_ab.json")
    args = ap.parse_args()
    ckpt = write_preset("mid", Path(tempfile.mkdtemp()) / "mid", device="cuda", progress=False)
    engine = Engine.from_pretrained(ckpt, progress=False, fixed_steps=1, graphs="off")  # same host path as graphs on
    image = Image.fromarray(np.random.RandomState(3).randint(0, 256, size=(480, 640, 3)).astype(np.uint8))
    times = {k: [] for k in VARIANTS}
    for i in range(args.iters + 3):
        order = list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            proc.ImageProcessor.rescale_on_device = VARIANTS[name]
            r = engine.locate(image, "person")
            if i >= 3:
                times[name].append(r.timings_ms["preprocess_ms"])
    proc.ImageProcessor.rescale_on_device = ORIGINAL
    res = {k: {"p50_ms": round(statistics.median(v), 3), "p90_ms": round(float(np.percentile(v, 90)), 3),
               "min_ms": round(min(v), 3)} for k, v in times.items()}
    res["work"] = f"Engine.locate, 640x480 PIL image, mid preset, eager, {args.iters} calls per variant, interleaved"
    res["device"] = torch.cuda.get_device_name(0)
    print(json.dumps(res, indent=1))
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

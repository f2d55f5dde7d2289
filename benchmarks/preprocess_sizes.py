"""Host preprocessing by image size: PIL on the host vs the device path before and after the
downscale moved to the GPU, interleaved, with each variant's pixels checked against PIL's.

    pil      ImageProcessor without a resize device: both resizes in PIL on the host (the
             official processor's arithmetic)
    before   the device path as it was: the downscale to the patch budget (images above
             in_token_limit = 25,600 patches, ~5 MP) in PIL, the pad-up on the GPU
    after    both resizes on the GPU (graphrt/gpu_resize.py, Pillow's pass order); PIL's RGBX
             memory read directly where Pillow exports it (images up to ~4 MP)
    packed   `after` with PIL's pixels packed into a copy first (as before the RGBX read)

Per size and input kind (a decoded PIL image, or JPEG bytes: decode included): `host_ms`, the
processor call's wall time (the host is free after it; GPU work may still run) and `done_ms`,
the same with the GPU work finished (torch.cuda.synchronize). P50/P90 of --iters calls. Then
the split of the `after` path: decode, PIL -> uint8 view, host -> device copy, resize device time.

    python benchmarks/preprocess_sizes.py --iters 15 --out sizes.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from graphrt.config import PreprocessorConfig
from graphrt.gpu_resize import resize_bicubic
import contextlib

import graphrt.processor
from graphrt.processor import ImageProcessor, host_pixels, load_image

SIZES = [(640, 480), (1600, 1200), (1920, 1080), (2240, 2240), (4000, 3000), (6000, 4000)]


def rescale_before(self, image, device):
    """rescale_on_device before the downscale moved: PIL's resize for the downscale."""
    capped = self.capped_size(*image.size)
    if capped != image.size:
        image = image.resize(capped, Image.Resampling.BICUBIC)
    target = self.rounded_size(*image.size)
    self._check_grid(*target)
    rgb = host_pixels(image).to(device)
    return resize_bicubic(rgb, target) if target != image.size else rgb


AFTER = ImageProcessor.rescale_on_device
RGBX = graphrt.processor.pil_rgbx


@contextlib.contextmanager
def no_rgbx(image):
    yield None


def use(variant: str) -> None:
    ImageProcessor.rescale_on_device = rescale_before if variant == "before" else AFTER
    graphrt.processor.pil_rgbx = no_rgbx if variant == "packed" else RGBX


def rgbx_to_device(image):
    """PIL's RGBX memory to the device and the pad byte dropped (None where Pillow cannot export)."""
    with RGBX(image) as rgbx:
        return None if rgbx is None else rgbx.to("cuda")[..., :3].contiguous()


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth content plus noise (JPEG-like statistics, so decode times are realistic)."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 37.0 + c) * np.cos(y / 53.0 - c) for c in range(3)], -1)
    return Image.fromarray(np.clip(base + rs.randn(height, width, 3) * 12, 0, 255).astype(np.uint8))


def pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3)


def device_ms(fn, iters: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    out = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return round(statistics.median(out), 3)


def host_ms(fn, iters: int = 10) -> float:
    fn()
    out = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    torch.cuda.synchronize()
    return round(statistics.median(out), 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--pil-iters", type=int, default=5, help="calls of the (slow) PIL variant")
    ap.add_argument("--out", default="preprocess_sizes.json")
    ap.add_argument("--sizes", nargs="*", default=None, help="WxH sizes (default: all)")
    ap.add_argument("--variants", default="before,after,packed,pil")
    args = ap.parse_args()
    cfg = PreprocessorConfig()
    pil, dev = ImageProcessor(cfg), ImageProcessor(cfg, resize_device="cuda")
    report = {"device": torch.cuda.get_device_name(0), "pillow": PIL.__version__, "torch": torch.__version__,
              "work": "ImageProcessor call on one image (PIL RGB or JPEG q90 bytes), P50/P90 ms", "sizes": {}}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes] if args.sizes else SIZES
    variants = args.variants.split(",")
    for k, (w, h) in enumerate(sizes):
        image = photo(w, h, seed=k)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        entry = {"patches": (w // 14) * (h // 14), "target": list(dev.target_size(w, h)),
                 "downscale": dev.capped_size(w, h) != (w, h)}
        # exactness first: the device paths against PIL's pixels
        ref = pil(image).rgb
        for name in ("before", "after", "packed"):
            use(name)
            entry[f"{name}_equals_pil"] = bool(torch.equal(dev(image).rgb.cpu(), ref))
        samples = {f"{v}_{kind}_{m}": [] for v in variants for kind in ("image", "jpeg") for m in ("host", "done")}
        n = len(variants)
        iters = args.iters if w * h <= 5_000_000 else min(args.iters, 6)  # the PIL variants take ~0.1-1 s there
        for i in range(iters + 2):
            for v in variants[i % n:] + variants[: i % n]:
                if v == "pil" and i >= args.pil_iters + 2:
                    continue
                use(v)
                proc = pil if v == "pil" else dev
                for kind, src in (("image", image), ("jpeg", data)):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    out = proc(src)
                    t1 = time.perf_counter()
                    torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    del out
                    if i >= 2:
                        samples[f"{v}_{kind}_host"].append((t1 - t0) * 1e3)
                        samples[f"{v}_{kind}_done"].append((t2 - t0) * 1e3)
        use("after")
        for key, xs in samples.items():
            if xs:
                entry[key] = {"p50": pct(xs, 50), "p90": pct(xs, 90), "n": len(xs)}
        # split of the after path
        rgb = load_image(image)
        host = host_pixels(rgb)
        on_dev = host.to("cuda")
        capped, target = dev.capped_size(w, h), dev.target_size(w, h)

        def resize():
            x = resize_bicubic(on_dev, capped) if capped != (w, h) else on_dev
            return resize_bicubic(x, target) if target != capped else x

        entry["split"] = {
            "jpeg_decode_ms": host_ms(lambda: load_image(data), 5),
            "pil_image_intake_ms": host_ms(lambda: load_image(image)),
            "host_pixels_ms": host_ms(lambda: host_pixels(rgb)),
            "h2d_pageable_ms": host_ms(lambda: host.to("cuda")),
            "rgbx_to_device_ms": host_ms(lambda: rgbx_to_device(rgb)),
            "resize_launch_host_ms": host_ms(resize),
            "resize_device_ms": device_ms(resize),
            "pil_resize_host_ms": host_ms(lambda: pil.rescale(rgb), 3),
        }
        report["sizes"][f"{w}x{h}"] = entry
        print(f"{w}x{h}", json.dumps(entry))
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

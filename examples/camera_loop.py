"""A robot-style control loop: one `locate` per camera frame, then latency percentiles.

    python examples/camera_loop.py                                  # tiny random checkpoint, synthetic frames
    python examples/camera_loop.py --checkpoint DIR --frames-dir run/ --query "red cup"

Frames come from a folder of images (sorted by name, looped) or, without --frames-dir, from a
synthetic moving scene. The first --warmup frames are not counted (CUDA graph capture happens at
load; the warm-up frames fill per-image-size caches). With a random checkpoint the boxes are
meaningless: only the timings mean something.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from graphrt import Engine, GraphrtError
from graphrt.batch_io import IMAGE_SUFFIXES


def synthetic_frames(width: int, height: int):
    """A bright square moving over a noisy background, forever."""
    rs = np.random.RandomState(0)
    background = (rs.rand(height, width, 3) * 80).astype(np.uint8)
    t = 0
    while True:
        frame = background.copy()
        x = int((width - 60) * (0.5 + 0.5 * np.sin(t / 15)))
        y = int((height - 60) * (0.5 + 0.5 * np.cos(t / 23)))
        frame[y : y + 60, x : x + 60] = (230, 40, 40)
        yield Image.fromarray(frame)
        t += 1


def folder_frames(folder: Path):
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {folder}")
    while True:
        yield from files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint directory; omitted: a tiny random one is written and used")
    ap.add_argument("--frames-dir", help="folder of frames (looped); omitted: synthetic 640x480 frames")
    ap.add_argument("--query", default="red square")
    ap.add_argument("--frames", type=int, default=100, help="frames measured")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="token cap per frame (bounds the worst case)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    checkpoint = args.checkpoint
    if checkpoint is None:
        from weights.synth import write_preset

        checkpoint = write_preset("tiny", Path(tempfile.mkdtemp(prefix="graphrt-camera-")) / "tiny", progress=False)
        print(f"No --checkpoint: using a tiny RANDOM checkpoint ({checkpoint}); its boxes are meaningless.")
    frames = folder_frames(Path(args.frames_dir)) if args.frames_dir else synthetic_frames(640, 480)
    try:
        engine = Engine.from_pretrained(checkpoint, device=args.device, max_new_tokens=args.max_new_tokens)
    except GraphrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = engine.status()
    print(f"device {status['device']}, {status['dtype']}, graphs: {status['graph_runtime']}, "
          f"attention: {status['attention']}")

    latencies, stages, capped = [], [], 0
    for i in range(args.warmup + args.frames):
        frame = next(frames)
        t = time.perf_counter()
        result = engine.locate(frame, args.query)  # boxes are back on the host when this returns
        ms = (time.perf_counter() - t) * 1000
        if i < args.warmup:
            continue
        latencies.append(ms)
        stages.append(result.timings_ms)
        capped += result.stop_reason == "max_new_tokens"
        if i % 20 == 0:
            best = result.detections[0].describe() if result.detections else "no detections"
            print(f"frame {i}: {ms:.1f} ms, {result.steps} steps, {best}")

    p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
    print(f"\n{len(latencies)} frames, locate() end to end: P50 {p(latencies, 50):.1f} ms, "
          f"P90 {p(latencies, 90):.1f} ms, P99 {p(latencies, 99):.1f} ms, max {max(latencies):.1f} ms")
    for key in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms"):
        values = [s[key] for s in stages if key in s]
        if values:
            print(f"  {key[:-3]:>10}: P50 {p(values, 50):.1f} ms  P99 {p(values, 99):.1f} ms")
    if capped:
        print(f"  {capped} frames hit the --max-new-tokens cap (random weights rarely emit an end token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

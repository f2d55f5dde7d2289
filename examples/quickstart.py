"""Locate objects in an image with graphrt.

    python examples/quickstart.py                       # built-in tiny random checkpoint (boxes meaningless)
    python examples/quickstart.py --checkpoint DIR --image street.jpg --query "person</c>car"

Without --checkpoint, a tiny random checkpoint is written once (sharded, with an index, like the
real one) to $GRAPHRT_CACHE_DIR, else $XDG_CACHE_HOME/graphrt, else ~/.cache/graphrt, and reused.
Progress bars are drawn only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

from graphrt import Engine, EngineOptions, GraphrtError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="LocateAnything checkpoint directory (official HF layout); "
                                             "omitted: a tiny random checkpoint is written and used")
    parser.add_argument("--image", help="image file; omitted: a generated test image")
    parser.add_argument("--query", default="person</c>car", help="phrase, or categories joined by </c>")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="token cap (an answer may run up to 5 tokens past it: a step's box is kept whole)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) | cpu | cuda")
    args = parser.parse_args()

    checkpoint = args.checkpoint
    if checkpoint is None:
        from weights.cache import CACHE_ENV, cache_root, cached_tiny_checkpoint

        try:
            checkpoint = cached_tiny_checkpoint()
        except OSError as exc:
            print(f"error: cannot write the tiny checkpoint under {cache_root()} ({exc.strerror or exc}); "
                  f"set {CACHE_ENV} to a writable folder", file=sys.stderr)
            return 2
        print(f"No --checkpoint given: using the tiny RANDOM checkpoint cached at {checkpoint}.")
        print("Its weights are random, so the tokens and boxes below are meaningless; they show the pipeline runs.\n")
    # A generated image (in memory) when none is given.
    image = args.image or Image.fromarray((np.random.RandomState(0).rand(480, 640, 3) * 255).astype(np.uint8))

    try:
        engine = Engine.from_pretrained(checkpoint, EngineOptions(device=args.device, progress=sys.stderr.isatty()))
        result = engine.locate(image, args.query, max_new_tokens=args.max_new_tokens)
    except GraphrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    w, h = result.image_size
    print(f"image {w}x{h}: {result.image_patches} patches -> {result.image_tokens} image tokens; "
          f"prompt {result.prompt_tokens} tokens")
    print(f"generated {len(result.tokens)} tokens in {result.steps} MTP steps (stop: {result.stop_reason})")
    print(f"timings ms: {result.timings_ms}")
    print(f"raw text: {result.text[:200]!r}{'...' if len(result.text) > 200 else ''}")
    for d in result.detections:
        print(f"  {d.describe()}")
    if not result.detections:
        print("  no detections")
    return 0


if __name__ == "__main__":
    sys.exit(main())

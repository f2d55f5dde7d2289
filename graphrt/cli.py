"""The `graphrt` command.

  graphrt synth-checkpoint --preset tiny --out ckpt/       random checkpoint of the official layout
  graphrt locate --checkpoint ckpt/ --image a.jpg --query "person</c>car" --json
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import GraphrtError

EPILOG = "Random checkpoints produce random tokens: their boxes mean nothing. Exit status 2 means bad input."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphrt", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth-checkpoint", help="write a random checkpoint in the official HF layout",
                           description="Write config, tokenizer and random safetensors weights in the layout of "
                                       "nvidia/LocateAnything-3B. tiny: tests and demos (seconds); mid: real widths, "
                                       "2 layers; 3b: the full model (about 7.7 GB, for benchmarks).")
    synth.add_argument("--preset", choices=["tiny", "mid", "3b"], default="tiny")
    synth.add_argument("--out", required=True, help="output directory (created; weights in it are replaced)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--device", default="cpu", help="where random numbers are drawn (cuda is faster for 3b)")

    loc = sub.add_parser("locate", help="find the boxes of a query in an image",
                         description="Run LocateAnything on one image. The query is a phrase or categories "
                                     "joined by </c>, e.g. \"person</c>car\".")
    loc.add_argument("--checkpoint", required=True, help="checkpoint directory (official HF layout)")
    loc.add_argument("--image", required=True, help="image file (any format Pillow reads)")
    loc.add_argument("--query", required=True, help='phrase or categories joined by </c>')
    loc.add_argument("--json", action="store_true", help="print the result as one JSON object")
    loc.add_argument("--task", choices=["detect", "ground_multi", "ground_single"], default="detect")
    loc.add_argument("--mode", choices=["fast", "hybrid", "slow"], default="fast",
                     help="fast: MTP box decoding (default); hybrid: MTP with AR after a broken box; slow: AR")
    loc.add_argument("--max-new-tokens", type=int, default=2048)
    loc.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    loc.add_argument("--device", default="auto")
    loc.add_argument("--dtype", default="auto", help="bfloat16 | float16 | float32 | auto")
    loc.add_argument("--graphs", choices=["auto", "on", "off"], default="off",
                     help="CUDA graphs: capture costs seconds, worth it for many requests, not for one image "
                          "(default off here; the Python Engine defaults to auto)")

    args = parser.parse_args(argv)
    try:
        if args.command == "synth-checkpoint":
            return _synth(args)
        return _locate(args)
    except GraphrtError as exc:
        print(f"graphrt: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad option values from the config dataclasses
        print(f"graphrt: error: {exc}", file=sys.stderr)
        return 2


def _synth(args) -> int:
    from weights.synth import write_preset

    out = write_preset(args.preset, args.out, seed=args.seed, device=args.device)
    print(f"wrote random {args.preset} checkpoint to {out} (random weights: outputs are meaningless)")
    return 0


def _locate(args) -> int:
    from .engine import Engine, EngineOptions
    from .generate import GenerationConfig
    from .sampler import SamplingConfig

    gen = GenerationConfig(mode=args.mode, max_new_tokens=args.max_new_tokens,
                           sampling=SamplingConfig(temperature=args.temperature))
    opts = EngineOptions(device=args.device, dtype=args.dtype, task=args.task, generation=gen,
                         progress=sys.stderr.isatty(), graphs=args.graphs)
    engine = Engine.from_pretrained(args.checkpoint, opts)
    result = engine.locate(args.image, args.query)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    w, h = result.image_size
    print(f"{args.image}: {w}x{h}, {result.image_tokens} image tokens, {result.steps} steps, "
          f"{len(result.tokens)} tokens, stop: {result.stop_reason}")
    for d in result.detections:
        print(f"  {d.describe()}")
    if not result.detections:
        print("  no detections")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `graphrt` command.

  graphrt synth-checkpoint --preset tiny --out ckpt/            random checkpoint of the official layout
  graphrt locate --checkpoint ckpt/ --image a.jpg --query "person</c>car" [--json]
  graphrt locate --checkpoint ckpt/ --jsonl requests.jsonl --out results.jsonl [--overlay DIR]
  graphrt locate --checkpoint ckpt/ --image photos/ --query car --format coco --out boxes.json
  graphrt status --checkpoint ckpt/                              backend, buckets, memory
  graphrt calibrate --checkpoint ckpt/ --images DIR --out calib.json   FP8 scales (then --fp8 calib.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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

    loc = sub.add_parser("locate", help="find the boxes of queries in images (one image, a folder, or JSONL)",
                         description="Run LocateAnything. The query is a phrase or categories joined by </c>, "
                                     "e.g. \"person</c>car\". One image prints its boxes; a folder (--image DIR "
                                     "--query Q) or a JSONL file (--jsonl FILE, rows {\"image\": path, \"query\": "
                                     "str or list, \"temperature\": optional}) writes one output row per input row. "
                                     "A bad row (not JSON, missing field, unreadable image, empty query) gets an "
                                     "output row with its line number and an error; the run goes on.",
                         epilog=EPILOG)
    _engine_args(loc)
    src = loc.add_argument_group("input (one of)")
    src.add_argument("--image", help="image file, or a folder of images (with --query)")
    src.add_argument("--jsonl", help="JSONL file of requests")
    loc.add_argument("--query", help='phrase or categories joined by </c> (with --image)')
    loc.add_argument("--image-root", help="folder that relative image paths in --jsonl are taken from (default: .)")
    loc.add_argument("--out", help="output file (default: stdout)")
    loc.add_argument("--format", choices=["jsonl", "coco"], default="jsonl",
                     help="batch output: one JSON row per request, or one COCO-style JSON document")
    loc.add_argument("--json", action="store_true", help="single image: print the result as one JSON object")
    loc.add_argument("--overlay", help="folder to write each image with its boxes and labels drawn (PNG)")

    stat = sub.add_parser("status", help="load a checkpoint and print the backend, buckets and memory",
                          description="Load the engine as `locate` would (capturing graphs on a GPU) and print "
                                      "device, dtype, attention kernel, graph count and capture time, buckets, "
                                      "generation defaults and GPU memory, as JSON.")
    _engine_args(stat)

    from calib.cli import add_parser as add_calibrate_parser

    add_calibrate_parser(sub, EPILOG)

    args = parser.parse_args(argv)
    try:
        if args.command == "synth-checkpoint":
            return _synth(args)
        if args.command == "status":
            return _status(args)
        if args.command == "calibrate":
            from calib.cli import run as run_calibrate

            return run_calibrate(args)
        return _locate(args, parser)
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


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (official HF layout)")
    p.add_argument("--task", choices=["detect", "ground_multi", "ground_single"], default="detect")
    p.add_argument("--mode", choices=["fast", "hybrid", "slow"], default="fast",
                   help="fast: MTP box decoding (default); hybrid: MTP with AR after a broken box; slow: AR")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="token cap per request")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="bfloat16 | float16 | float32 | auto")
    p.add_argument("--graphs", choices=["auto", "on", "off"], default=None,
                   help="CUDA graphs (capture costs seconds). Default: off for one image, auto for a folder "
                        "or JSONL file and for status")
    p.add_argument("--fp8", metavar="CALIB_JSON", help="FP8 linears with the static scales of this calibration file "
                                                       "(from `graphrt calibrate` for this checkpoint; CUDA + bf16)")


def _engine(args, graphs: str):
    from .engine import Engine, EngineOptions
    from .generate import GenerationConfig
    from .sampler import SamplingConfig

    gen = GenerationConfig(mode=args.mode, max_new_tokens=args.max_new_tokens,
                           sampling=SamplingConfig(temperature=args.temperature))
    opts = EngineOptions(device=args.device, dtype=args.dtype, task=args.task, generation=gen,
                         progress=sys.stderr.isatty(), graphs=args.graphs or graphs,
                         sampling_graphs=args.temperature > 0, fp8=args.fp8)
    return Engine.from_pretrained(args.checkpoint, opts)


def _status(args) -> int:
    print(json.dumps(_engine(args, "auto").status(), indent=2))
    return 0


def _locate(args, parser) -> int:
    if bool(args.image) == bool(args.jsonl):
        parser.error("give --image (file or folder) or --jsonl")
    if args.image and not args.query:
        parser.error("--image needs --query")
    if args.image and not Path(args.image).is_dir():
        return _locate_one(args)
    from .batch_io import read_folder, read_jsonl

    if args.jsonl:
        if not Path(args.jsonl).is_file():
            print(f"graphrt: error: JSONL file not found: {args.jsonl}", file=sys.stderr)
            return 2
        requests = read_jsonl(args.jsonl, args.image_root)
    else:
        requests = read_folder(args.image, args.query)
    if not requests:
        print("graphrt: error: no requests (empty JSONL file or no images in the folder)", file=sys.stderr)
        return 2
    return _locate_many(args, _engine(args, "auto"), requests)


def _locate_one(args) -> int:
    engine = _engine(args, "off")
    result = engine.locate(args.image, args.query)
    if args.overlay:
        from .batch_io import draw_overlay

        draw_overlay(args.image, result.detections, Path(args.overlay) / f"{Path(args.image).stem}.png")
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


def _locate_many(args, engine, requests) -> int:
    import time

    from tqdm import tqdm

    from .batch_io import coco, draw_overlay, result_record

    good = [r for r in requests if r.error is None]
    records: dict[int, dict] = {}
    for r in requests:
        if r.error is not None:
            records[r.line] = result_record(r, None)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        if args.format == "jsonl":
            for line in sorted(records):
                out.write(json.dumps(records[line]) + "\n")
        t0 = time.perf_counter()
        bar = tqdm(total=len(requests), unit="req", desc="locate", disable=not sys.stderr.isatty() and not args.out,
                   initial=len(records), file=sys.stderr)
        pairs = [(r.image, r.query) for r in good]
        temps = [r.temperature for r in good]
        images_done: set[str] = set()
        for i, result in engine.locate_stream(pairs, temps, errors="report"):
            req = good[i]
            rec = result_record(req, result)
            records[req.line] = rec
            if args.format == "jsonl":
                out.write(json.dumps(rec) + "\n")
                out.flush()
            if args.overlay and result.error is None:
                name = f"{req.line:06d}_{Path(req.image).stem}.png"
                draw_overlay(req.image, result.detections, Path(args.overlay) / name)
            if result.error is None:
                images_done.add(req.image)
            bar.update(1)
            bar.set_postfix_str(f"{len(images_done) / max(time.perf_counter() - t0, 1e-9):.1f} img/s")
        bar.close()
        wall = time.perf_counter() - t0
        if args.format == "coco":
            out.write(json.dumps(coco([records[k] for k in sorted(records)])) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    errors = sorted(k for k, rec in records.items() if "error" in rec)
    answered = len(records) - len(errors)
    listed = ", ".join(map(str, errors[:20])) + (" ..." if len(errors) > 20 else "")
    print(f"graphrt: {answered} answered, {len(errors)} errors{' (lines ' + listed + ')' if errors else ''}; "
          f"{len(images_done)} images in {wall:.2f} s ({len(images_done) / max(wall, 1e-9):.1f} img/s)",
          file=sys.stderr)
    return 0 if answered else 2


if __name__ == "__main__":
    sys.exit(main())

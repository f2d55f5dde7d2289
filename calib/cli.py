"""`graphrt calibrate`: static FP8 activation scales for a checkpoint, and the accuracy report.

    graphrt calibrate --checkpoint DIR --images DIR --out calib.json
    graphrt calibrate --checkpoint DIR --jsonl pairs.jsonl --out calib.json --report report.md
    graphrt calibrate --checkpoint DIR --images DIR --fp8 calib.json --report report.md   (report only)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub, epilog: str, **parser_options) -> argparse.ArgumentParser:
    """`parser_options`: the formatter the other commands use."""
    p = sub.add_parser(
        "calibrate", help="record static FP8 activation scales (and an FP8-vs-bf16 accuracy report)",
        description="Run the bf16 model eagerly over (image, query) pairs (vision, prefill and --steps MTP "
                    "steps each) and write the input range of every linear as a JSON calibration file for "
                    "`--fp8 FILE` / EngineOptions(fp8=FILE). The file is keyed to this checkpoint (a fingerprint "
                    "of its weight files) and records the graphrt version, the date and the pairs seen. With "
                    "--report, the FP8 model is compared with bf16 on held-out pairs (never the calibration "
                    "images): per-stage cosines, window-logit top-1 agreement and KL, per-linear cosines, "
                    "whole-answer token agreement and box IoU.",
        epilog=epilog, **parser_options)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (official HF layout)")
    src = p.add_argument_group("pairs (one of)")
    src.add_argument("--images", help="folder of images; each is paired with built-in queries (or --queries); this or "
                                      "--jsonl is required")
    src.add_argument("--jsonl", help="JSONL rows {\"image\": path, \"query\": ...}: the first --pairs calibrate, "
                                     "the next --held-out are held out; this or --images is required")
    p.add_argument("--image-root", help="folder that relative image paths in --jsonl are taken from "
                                          "(default: the current directory)")
    p.add_argument("--queries", help="with --images: queries joined by ';' (default: a built-in list of 20)")
    p.add_argument("--out", help="calibration file to write (required unless --fp8 is given)")
    p.add_argument("--pairs", type=int, default=256, help="calibration pairs (default 256)")
    p.add_argument("--steps", type=int, default=2, help="MTP steps run per pair (default 2)")
    p.add_argument("--batch", type=int, default=8, help="pairs per eager batch (default 8)")
    p.add_argument("--percentile", type=float, default=None,
                   help="scale from this percentile of |x| (e.g. 99.99) instead of the max; clips outliers "
                        "(default: the max)")
    p.add_argument("--report", help="write the FP8-vs-bf16 accuracy report here (.md, with a .json beside it; default: none)")
    p.add_argument("--held-out", type=int, default=64, help="held-out pairs for --report (default 64)")
    p.add_argument("--fp8", help="existing calibration file: skip calibrating, only report (default: none)")
    p.add_argument("--fp8-scope", default=None, help="linears made FP8 for the report (default: lm; see calib/apply.py)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    return p


def run(args) -> int:
    from graphrt import Engine, EngineOptions

    from .apply import DEFAULT_SCOPE
    from .calibrate import calibrate
    from .calibration import CalibrationError
    from .dataset import DEFAULT_QUERIES, describe, folder_pairs, jsonl_pairs

    if bool(args.images) == bool(args.jsonl):
        raise CalibrationError("give --images DIR or --jsonl FILE")
    if not args.out and not args.fp8:
        raise CalibrationError("give --out FILE (or --fp8 FILE with --report)")
    if args.pairs < 1 or args.held_out < 0 or args.steps < 1 or args.batch < 1:
        raise CalibrationError("--pairs, --steps and --batch must be >= 1, --held-out >= 0")
    held = args.held_out if args.report else 0
    if args.images:
        queries = tuple(q.strip() for q in args.queries.split(";") if q.strip()) if args.queries else DEFAULT_QUERIES
        cal_pairs, held_pairs = folder_pairs(args.images, args.pairs, held, queries)
        source = f"folder {args.images}"
    else:
        cal_pairs, held_pairs = jsonl_pairs(args.jsonl, args.pairs, held, args.image_root)
        source = f"jsonl {args.jsonl}"
    if args.report and not held_pairs:
        raise CalibrationError("--report needs held-out pairs (the source has none beyond --pairs)")
    tty = sys.stderr.isatty()
    engine = Engine.from_pretrained(args.checkpoint, EngineOptions(device=args.device, dtype=args.dtype,
                                                                   graphs="off", progress=tty))
    calib_path = args.fp8
    if not args.fp8:
        calib = calibrate(engine, cal_pairs, steps=args.steps, batch=args.batch, percentile=args.percentile,
                          progress=tty, dataset=describe(source, cal_pairs))
        calib_path = str(calib.save(args.out))
        print(f"wrote {calib_path}: {len(calib.linears)} linears, {len(cal_pairs)} pairs, statistic "
              f"{calib.statistic}", file=sys.stderr)
    if args.report:
        from .report import accuracy_report, markdown

        fp8 = engine.with_options(fp8=calib_path, fp8_scope=args.fp8_scope or DEFAULT_SCOPE)
        report = accuracy_report(engine, fp8, held_pairs, steps=args.steps, batch=args.batch)
        report["held_out"] = describe(source, held_pairs)
        out = Path(args.report)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(report))
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        print(markdown(report))
    return 0

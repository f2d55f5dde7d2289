"""The `graphrt` command: boxes for (image, query) pairs from a LocateAnything checkpoint.

examples:
  graphrt synth-checkpoint --preset tiny --out ckpt/
  graphrt locate --checkpoint ckpt/ --image a.jpg --query "person</c>car" [--json]
  graphrt locate --checkpoint ckpt/ --image a.jpg --task point --query "the traffic light"
  graphrt locate --checkpoint ckpt/ --image a.jpg --task detect_visual_prompt --exemplar-box 100,200,300,400
  graphrt locate --checkpoint ckpt/ --jsonl requests.jsonl --out results.jsonl [--overlay DIR]
  graphrt locate --checkpoint ckpt/ --image photos/ --query car --format coco --out boxes.json
  graphrt status --checkpoint ckpt/
  graphrt calibrate --checkpoint ckpt/ --images DIR --out calib.json   FP8 scales (then --fp8 calib.json)
  graphrt locate --checkpoint ckpt/ --jsonl requests.jsonl --out results.jsonl --ray --engines 8   (graphrt[ray])
  graphrt serve --checkpoint ckpt/ --port 8000 [--ray --replicas 8]                             (graphrt[ray])

`graphrt COMMAND --help` explains each command and its options.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from . import __version__
from .errors import GraphrtError, InputError
from .prompt import PHRASE_TASKS, TASKS
from calib.cli import add_parser as add_calibrate_parser, run as run_calibrate

from .scaleout.commands import add_locate_options, add_serve_command, run_locate as run_locate_ray, run_serve

EPILOG = ("Random checkpoints (synth-checkpoint) produce random tokens: their boxes mean nothing. "
          "Exit status 2: bad input or options (one line on stderr saying which).")
OVERSHOOT = ("an answer may run up to 5 tokens past it: a decode step appends a whole 6-token box frame "
             "and the official loop checks the cap between steps")
# One example per task (the question text is the official worker's; see graphrt.prompt.TASKS).
TASK_HELP = """tasks (--task; the query fills {phrase}):
  detect                --query "person</c>car"          Locate all the instances that matches ...: {phrase}.
  detect_text           (no query)                       Detect all the text in box format.
  ground_single         --query "the man in a red hat"   Locate a single instance that matches ...: {phrase}.
  ground_multi          --query "people wearing red"     Locate all the instances that match ...: {phrase}.
  ground_text           --query "EXIT"                   Please locate the text referred as {phrase}.
  region                --query "the search button"      Locate the region that matches ...: {phrase}. (GUI)
  point                 --query "the traffic light"      Point to: {phrase}.  (answers points)
  detect_visual_prompt  --exemplar-box 100,200,300,400   Detect all the objects in the image that belong to
                        (or --exemplar crop.png)         the category set: <image-2>.  (the exemplar is image 2)
Any other task also takes --exemplar/--exemplar-box: "\\nVisual prompt: <image-2>" is appended to its question.
"""

FORMATS = {
    "jsonl": "one JSON row per request",
    "coco": "COCO results, the list pycocotools' COCO.loadRes reads: {image_id, category_id, bbox [x, y, w, h], "
            "score}",
    "coco-dataset": "one COCO-style document: images, categories, annotations, and the error rows",
}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and appends each option's default to its help."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # a flag
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n", 1)
    parser = argparse.ArgumentParser(prog="graphrt", description=doc[0] + "\n" + doc[1], epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"graphrt {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    synth = sub.add_parser("synth-checkpoint", help="write a random checkpoint in the official HF layout (tests, "
                                                   "demos, benchmarks)",
                           formatter_class=_HelpFormatter, epilog=EPILOG,
                           description="Write config, tokenizer and random safetensors weights in the layout of "
                                       "nvidia/LocateAnything-3B.\n"
                                       "  tiny: tests and demos (1.5 MB, seconds): one model.safetensors\n"
                                       "  mid:  real widths, 2 layers (1.6 GB): one model.safetensors\n"
                                       "  3b:   the full model (7.7 GB): 2 GB shards + model.safetensors.index.json\n"
                                       "--shard-mb makes smaller shards (with the index) for any preset.")
    synth.add_argument("--preset", choices=["tiny", "mid", "3b"], default="tiny", help="model size")
    synth.add_argument("--out", required=True, help="output directory (created; weights in it are replaced)")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    synth.add_argument("--device", default="cpu", help="where random numbers are drawn (cuda is faster for 3b)")
    synth.add_argument("--shard-mb", type=float, default=2048,
                       help="largest shard in MiB; weights above it are split into shards with an index")

    loc = sub.add_parser("locate", help="find the boxes of a query in one image, a folder of images, or a JSONL "
                              "file of requests",
                         formatter_class=_HelpFormatter, epilog=TASK_HELP + "\n" + EPILOG,
                         description="Run LocateAnything. The query is a phrase or categories joined by </c>, "
                                     "e.g. \"person</c>car\".\n\n"
                                     "  one image:  --image FILE --query Q   prints its boxes (--json: one JSON "
                                     "object; --out FILE: also writes it in --format)\n"
                                     "  a folder:   --image DIR --query Q    one output row per image file\n"
                                     "  JSONL:      --jsonl FILE             one output row per request row\n\n"
                                     "JSONL rows: {\"image\": path, \"query\": str or [str, ...], \"temperature\": "
                                     "optional number >= 0, \"task\", \"exemplar\" (path or list), \"exemplar_box\" and "
                                     "\"box_format\" optional}, UTF-8 (a BOM and CRLF line ends are fine, blank lines "
                                     "are skipped). Output rows carry the input's line number and are written as "
                                     "they complete. A bad row (not JSON or not UTF-8, a field missing or of the "
                                     "wrong type, an unreadable image, an empty query, or any failure while "
                                     "answering it) gets an output row with an \"error\" instead of boxes, and the "
                                     "run goes on; the summary on stderr lists the error lines.\n\n"
                                     "--out and --overlay are checked before the checkpoint loads. "
                                     "--max-new-tokens caps each answer; " + OVERSHOOT + ".")
    _engine_args(loc, generation=True)
    src = loc.add_argument_group("input (give --image or --jsonl)")
    src.add_argument("--image", help="image file, or a folder of images (with --query); this or --jsonl is required")
    src.add_argument("--jsonl", help="JSONL file of requests; this or --image is required")
    src.add_argument("--query", help="phrase, or categories joined by </c> (required with --image, except for the "
                                     "tasks detect_text and detect_visual_prompt)")
    src.add_argument("--image-root", help="folder that relative image paths in --jsonl are taken from "
                                          "(default: the current directory)")
    vis = loc.add_argument_group("visual prompt (with --image: applies to the image, or each image of a folder)")
    vis.add_argument("--exemplar", action="append", help="exemplar image sent after the query image (repeatable; "
                                                         "default: none)")
    vis.add_argument("--exemplar-box", help="exemplar as a box x1,y1,x2,y2 on the query image, cropped and sent "
                                            "after it, before any --exemplar (default: none)")
    vis.add_argument("--box-format", choices=["normalized_1000", "normalized_1", "pixel"], default="normalized_1000",
                     help="units of --exemplar-box: 0..1000 of the image side (the model's box format), 0..1, or "
                          "pixels")
    out = loc.add_argument_group("output")
    out.add_argument("--out", help="output file (default: stdout for a folder or JSONL; a single image is printed "
                                   "and, with --out, also written)")
    out.add_argument("--format", choices=list(FORMATS), default="jsonl",
                     help="what --out holds: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    out.add_argument("--json", action="store_true", help="single image: print the result as one JSON object")
    out.add_argument("--overlay", help="folder to write each image with its boxes and labels drawn, as PNG "
                                       "(default: none)")

    add_locate_options(loc)
    stat = sub.add_parser("status", help="load a checkpoint as `locate` would; print device, kernels, graphs, memory",
                          formatter_class=_HelpFormatter, epilog=EPILOG,
                          description="Load the engine as `locate` would (capturing CUDA graphs on a GPU) and "
                                      "print device, dtype, attention kernel, graph count and capture time, "
                                      "buckets, generation defaults and GPU memory, as JSON.")
    _engine_args(stat, generation=False)
    add_serve_command(sub, lambda p: _engine_args(p, generation=True), formatter_class=_HelpFormatter, epilog=EPILOG)
    add_calibrate_parser(sub, EPILOG, formatter_class=_HelpFormatter)
    return parser


def _engine_args(p: argparse.ArgumentParser, generation: bool) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (official HF layout)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                   help="weights and compute; auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--graphs", choices=["auto", "on", "off"], default=None,
                   help="CUDA graphs (capture costs seconds at load). auto: on a GPU in bf16/fp16. Default: "
                        + ("off for one image, auto for a folder or JSONL file" if generation else "auto"))
    p.add_argument("--fp8", metavar="CALIB_JSON", help="FP8 linears with the static scales of this calibration file "
                                                       "(from `graphrt calibrate` for this checkpoint; CUDA + bf16; "
                                                       "default: none, bf16 linears)")
    p.add_argument("--memory-gb", type=float, default=24.0, metavar="GIB",
                   help="GPU memory the engine may use, weights included; the graph buckets and the KV cache "
                        "are derived from it at load (`status` prints the plan); 0: no budget")
    p.add_argument("--kernels", choices=["auto", "fused", "torch"], default="auto",
                   help="decoder kernels inside the graphs: fused Triton kernels (auto: on CUDA in fp16/bf16) "
                        "or plain torch ops")
    if not generation:
        return
    p.add_argument("--task", choices=list(TASKS), default="detect",
                   help="the official worker's task; see the list of tasks below")
    p.add_argument("--prompt-format", choices=["official", "jinja"], default="official",
                   help="official: the worker's prompt text; jinja: render chat_template.json instead")
    p.add_argument("--mode", choices=["fast", "hybrid", "slow"], default="fast",
                   help="fast: MTP box decoding; hybrid: MTP with AR after a broken box; slow: AR only")
    p.add_argument("--max-new-tokens", type=int, default=2048,
                   help="token cap per request; " + OVERSHOOT)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature, 0 = greedy; a JSONL row's own temperature wins")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "synth-checkpoint":
            return _synth(args)
        if args.command == "calibrate":
            return run_calibrate(args)
        _check_engine_args(args)
        if args.command == "status":
            print(json.dumps(_engine(args, "auto").status(), indent=2))
            return 0
        if args.command == "serve":
            return run_serve(args, _engine_options(args, "auto"))
        return _locate(args, parser)
    except (GraphrtError, ValueError, OSError) as exc:  # bad input, bad option values, files
        print(f"graphrt: error: {exc}", file=sys.stderr)
        return 2


def _check_device(device: str) -> None:
    if not _DEVICE.fullmatch(device):
        raise InputError(f"--device {device}: choose auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is available to torch here (use cpu or auto)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")


def _check_engine_args(args) -> None:
    _check_device(args.device)
    if not Path(args.checkpoint).is_dir():
        raise InputError(f"--checkpoint {args.checkpoint}: checkpoint directory not found")
    if getattr(args, "max_new_tokens", 1) < 1:
        raise InputError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    temperature = getattr(args, "temperature", 0.0)
    if not temperature >= 0 or temperature == float("inf"):
        raise InputError(f"--temperature {temperature}: must be a finite number >= 0")


def _synth(args) -> int:
    from weights.synth import write_preset

    _check_device(args.device)
    if args.shard_mb <= 0:
        raise InputError(f"--shard-mb {args.shard_mb}: must be > 0")
    out = write_preset(args.preset, args.out, seed=args.seed, device=args.device, progress=sys.stderr.isatty(),
                       max_shard_bytes=int(args.shard_mb * 2**20))
    print(f"wrote random {args.preset} checkpoint to {out} (random weights: outputs are meaningless)")
    return 0


def _engine(args, graphs: str):
    from .engine import Engine

    return Engine.from_pretrained(args.checkpoint, _engine_options(args, graphs))


def _engine_options(args, graphs: str):
    from .engine import EngineOptions
    from .decode import GenerationConfig
    from .sampler import SamplingConfig

    temperature = getattr(args, "temperature", 0.0)
    options = dict(device=args.device, dtype=args.dtype, progress=sys.stderr.isatty(), graphs=args.graphs or graphs,
                   sampling_graphs=temperature > 0, kernels=args.kernels, fp8=args.fp8,
                   memory_gb=args.memory_gb or None)
    if hasattr(args, "max_new_tokens"):
        options.update(task=args.task, prompt_format=args.prompt_format, generation=GenerationConfig(
            mode=args.mode, max_new_tokens=args.max_new_tokens, sampling=SamplingConfig(temperature=temperature)))
    return EngineOptions(**options)


# ---------------------------------------------------------------------- locate

def _locate(args, parser) -> int:
    if bool(args.image) == bool(args.jsonl):
        parser.error("give --image (file or folder) or --jsonl")
    if args.image and not args.query and args.task in PHRASE_TASKS:
        parser.error(f"--image needs --query (task {args.task} takes a phrase)")
    if args.jsonl and args.query:
        parser.error("--query goes with --image; JSONL rows carry their own queries")
    if args.jsonl and (args.exemplar or args.exemplar_box):
        parser.error("--exemplar/--exemplar-box go with --image; JSONL rows carry their own exemplar fields")
    from .batch_io import Request, read_folder, read_jsonl

    single = bool(args.image) and not Path(args.image).is_dir()
    if single and args.ray is not None:
        parser.error("--ray takes a folder (--image DIR) or --jsonl, not one image")
    if single:
        if not Path(args.image).is_file():
            raise InputError(f"--image {args.image}: image not found")
        requests = [Request(1, args.image, args.query)]
        _add_cli_exemplar(args, requests)
    elif args.jsonl:
        if not Path(args.jsonl).is_file():
            raise InputError(f"--jsonl {args.jsonl}: JSONL file not found")
        requests = read_jsonl(args.jsonl, args.image_root)
    else:
        requests = read_folder(args.image, args.query)
        _add_cli_exemplar(args, requests)
    if not requests:
        raise InputError("no requests (empty JSONL file or no images in the folder)")
    out = _open_outputs(args)  # before the checkpoint loads: a bad target costs no work
    try:
        if single:
            return _locate_one(args, out)
        if args.ray is not None:
            return run_locate_ray(args, _engine_options(args, "auto"), requests)
        return _locate_many(args, _engine(args, "auto"), requests, out)
    finally:
        if out is not None:
            out.close()


def _add_cli_exemplar(args, requests) -> None:
    exemplar = _cli_exemplar(args)
    for r in requests:
        r.exemplar, r.exemplar_box, r.box_format = exemplar, args.exemplar_box, args.box_format


def _cli_exemplar(args):
    return None if not args.exemplar else args.exemplar[0] if len(args.exemplar) == 1 else list(args.exemplar)


def _open_outputs(args):
    """Open --out and make sure --overlay can take files, or raise InputError naming the option.
    With --ray, --out is only checked (a rerun resumes from the rows in it; the Ray run appends to
    it itself), so nothing is returned."""
    if args.overlay:
        folder = Path(args.overlay)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise InputError(f"--overlay {folder}: cannot write images there ({exc.strerror or exc})") from None
    if not args.out:
        return None
    path = Path(args.out)
    if path.is_dir():
        raise InputError(f"--out {path}: is a folder; give a file path")
    if not path.parent.is_dir():
        raise InputError(f"--out {path}: folder {path.parent} does not exist")
    try:
        if getattr(args, "ray", None) is not None:  # checked, not touched: the run appends to it
            if not os.access(path if path.exists() else path.parent, os.W_OK):
                raise InputError(f"--out {path}: cannot write (permission denied)")
            return None
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--out {path}: cannot write ({exc.strerror or exc})") from None


def _locate_one(args, out) -> int:
    from .batch_io import Request, result_record

    engine = _engine(args, "off")
    result = engine.locate(args.image, args.query, exemplar=_cli_exemplar(args), exemplar_box=args.exemplar_box,
                           box_format=args.box_format)
    if args.overlay:
        from .batch_io import draw_overlay

        draw_overlay(args.image, result.detections, Path(args.overlay) / f"{Path(args.image).stem}.png")
    if out is not None:
        _write_documents(args.format, out, [result_record(Request(1, args.image, args.query), result)])
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


def _write_documents(fmt: str, out, records: list[dict]) -> None:
    """The whole-file formats (and jsonl for a single image)."""
    from .batch_io import coco_dataset, coco_results

    if fmt == "jsonl":
        for rec in records:
            out.write(json.dumps(rec) + "\n")
    else:
        out.write(json.dumps(coco_results(records) if fmt == "coco" else coco_dataset(records)) + "\n")


def answer_rows(engine, pairs: list, temperatures: list):
    """Yield (index, LocateResult) for every pair, good or bad. A bad pair that the engine reports
    gets its error result; if the engine raises instead (any exception), the rows not yet answered
    are split in halves and retried, so the failure ends up on the one row that causes it, reported
    with the exception's type, and every other row is still answered."""
    yield from _answer(engine, pairs, temperatures, list(range(len(pairs))))


def _answer(engine, pairs, temperatures, indices):
    from .engine import LocateResult

    done: set[int] = set()
    try:
        for k, result in engine.locate_stream([pairs[i] for i in indices], [temperatures[i] for i in indices],
                                              errors="report"):
            done.add(indices[k])
            yield indices[k], result
        return
    except Exception as exc:  # noqa: BLE001 - one row must not end the run; the row reports it
        failure = exc
    left = [i for i in indices if i not in done]
    if len(indices) == 1:
        query = pairs[indices[0]][1]
        query = "</c>".join(map(str, query)) if isinstance(query, list) else str(query)
        message = str(failure) if isinstance(failure, GraphrtError) else f"{type(failure).__name__}: {failure}"
        yield indices[0], LocateResult.failed(query, message)
        return
    half = (len(left) + 1) // 2
    for part in (left[:half], left[half:]):
        if part:
            yield from _answer(engine, pairs, temperatures, part)


def _locate_many(args, engine, requests, out) -> int:
    import time

    from tqdm import tqdm

    from .batch_io import draw_overlay, result_record

    stream = out if out is not None else sys.stdout
    good = [r for r in requests if r.error is None]
    records: dict[int, dict] = {}
    for r in requests:
        if r.error is not None:
            records[r.line] = result_record(r, None)
    if args.format == "jsonl":
        for line in sorted(records):
            stream.write(json.dumps(records[line]) + "\n")
    t0 = time.perf_counter()
    bar = tqdm(total=len(requests), unit="req", desc="locate", disable=not sys.stderr.isatty(),
               initial=len(records), file=sys.stderr)
    images_done: set[str] = set()
    pairs = [r.pair() for r in good]
    for i, result in answer_rows(engine, pairs, [r.temperature for r in good]):
        req = good[i]
        rec = result_record(req, result)
        if args.overlay and result.error is None:
            try:
                draw_overlay(req.image, result.detections, Path(args.overlay) / f"{req.line:06d}_{Path(req.image).stem}.png")
            except Exception as exc:  # noqa: BLE001 - a drawing failure must not lose the answer
                rec["overlay_error"] = f"{type(exc).__name__}: {exc}"
        records[req.line] = rec
        if args.format == "jsonl":
            stream.write(json.dumps(rec) + "\n")
            stream.flush()
        if result.error is None:
            images_done.add(req.image)
        bar.update(1)
        bar.set_postfix_str(f"{len(images_done) / max(time.perf_counter() - t0, 1e-9):.1f} img/s")
    bar.close()
    wall = time.perf_counter() - t0
    if args.format != "jsonl":
        _write_documents(args.format, stream, [records[k] for k in sorted(records)])
    errors = sorted(k for k, rec in records.items() if "error" in rec)
    answered = len(records) - len(errors)
    listed = ", ".join(map(str, errors[:20])) + (" ..." if len(errors) > 20 else "")
    print(f"graphrt: {answered} answered, {len(errors)} errors{' (lines ' + listed + ')' if errors else ''}; "
          f"{len(images_done)} images in {wall:.2f} s ({len(images_done) / max(wall, 1e-9):.1f} img/s)",
          file=sys.stderr)
    return 0 if answered else 2


if __name__ == "__main__":
    sys.exit(main())

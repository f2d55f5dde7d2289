"""CLI hooks of the scale-out commands: `locate --ray ...` options and the `serve` command.

Imports no Ray: graphrt/cli.py registers these at startup, and Ray (the `graphrt[ray]` extra)
is imported only when one of them runs."""

from __future__ import annotations

import argparse
import sys

from ..errors import GraphrtError

RAY_EXTRA = "pip install 'graphrt[ray]'"


def add_locate_options(loc: argparse.ArgumentParser) -> None:
    ray = loc.add_argument_group(
        "scale-out on Ray (a folder or --jsonl; needs " + RAY_EXTRA + ")",
        "Rows are decoded on CPU workers and answered by a pool of engine actors, one per GPU, and "
        "appended to --out as they finish (same rows as without --ray). A dead engine's rows run again; "
        "rerunning the command resumes: rows already in --out are skipped.")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run on Ray: without ADDRESS a local cluster of this machine's GPUs and CPUs; "
                          "'auto' the cluster running here; or host:port / ray://host:10001 (default: no Ray, "
                          "one process)")
    ray.add_argument("--engines", type=int, default=1, help="engine actors (default 1; one per GPU)")
    ray.add_argument("--gpus-per-engine", type=float, default=1.0,
                     help="GPUs each engine reserves (default 1; 0 runs engines on CPUs)")


def add_serve_command(sub, engine_args, **parser_options) -> None:
    """`parser_options`: the formatter and epilog the other commands use."""
    srv = sub.add_parser(
        "serve", help="answer locate requests over HTTP (one local replica, or Ray Serve replicas)",
        description="HTTP service. POST /v1/locate with JSON {\"image\": base64 or \"image_path\": a file under "
                    "--image-root, \"query\": str or list, optional \"task\", \"temperature\", \"top_p\", "
                    "\"top_k\", \"repetition_penalty\", \"seed\", \"mode\", \"max_new_tokens\"} returns the JSON "
                    "of `graphrt locate --json`; GET /health; GET /status. Concurrent requests are batched "
                    "into the engine's graph buckets; a bad request gets a 4xx with its reason. Without "
                    "--ray one replica runs here (uvicorn); with --ray, Ray Serve runs --replicas engines.",
        **{"epilog": f"Needs the Ray extra: {RAY_EXTRA}. Listens on 127.0.0.1 unless --host says otherwise.",
           **parser_options})
    engine_args(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    srv.add_argument("--image-root", help="allow image_path requests for files under this folder (default: off)")
    srv.add_argument("--batch-wait-ms", type=float, default=5.0,
                     help="how long a request waits for others to share its batch (default 5)")
    srv.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="serve with Ray Serve: without ADDRESS a local cluster; 'auto' or host:port to join one "
                          "(default: no Ray, one local replica)")
    srv.add_argument("--replicas", type=int, default=1, help="engine replicas with --ray (default 1; one per GPU)")
    srv.add_argument("--gpus-per-engine", type=float, default=1.0,
                     help="GPUs each replica reserves with --ray (default 1; 0 runs replicas on CPUs)")


def _address(value: str) -> str | None:
    return None if value == "local" else value


def run_locate(args, options, requests) -> int:
    """`graphrt locate --ray`: the batch on a Ray cluster; the summary line of the single-process CLI."""
    if not args.out:
        raise GraphrtError("--ray needs --out (rows are appended there as they finish; a rerun resumes)")
    try:
        from . import offline
    except ImportError as exc:
        raise GraphrtError(f"--ray needs Ray ({exc.name} is missing): {RAY_EXTRA}") from exc

    cfg = offline.OfflineConfig(str(args.checkpoint), options, engines=args.engines,
                                gpus_per_engine=args.gpus_per_engine, overlay=args.overlay, fmt=args.format)
    offline.connect(_address(args.ray))
    summary = offline.run(cfg, requests, args.out)
    records = summary["records"]
    errors = [rec["line"] for rec in records if "error" in rec]
    answered = len(records) - len(errors)
    listed = ", ".join(map(str, errors[:20])) + (" ..." if len(errors) > 20 else "")
    wall, images = summary["wall_s"], summary["images"]
    resumed = f"; {summary['skipped']} rows already in {args.out}" if summary["skipped"] else ""
    print(f"graphrt: {answered} answered, {len(errors)} errors{' (lines ' + listed + ')' if errors else ''}; "
          f"{images} images in {wall:.2f} s ({images / max(wall, 1e-9):.1f} img/s) on {args.engines} engine(s)"
          f"{resumed}", file=sys.stderr)
    return 0 if answered else 2


def run_serve(args, options) -> int:
    try:
        from . import serve, service
    except ImportError as exc:
        raise GraphrtError(f"graphrt serve needs {exc.name}: {RAY_EXTRA}") from exc

    cfg = service.ServiceConfig(str(args.checkpoint), options, image_root=args.image_root,
                                batch_wait_ms=args.batch_wait_ms)
    print(f"graphrt: serving {args.checkpoint} on http://{args.host}:{args.port} "
          f"({'Ray Serve, ' + str(args.replicas) + ' replica(s)' if args.ray else 'one local replica'})",
          file=sys.stderr)
    if args.ray is None:
        serve.run_local(cfg, args.host, args.port)
        return 0
    opts = serve.ServeOptions(args.host, args.port, args.replicas, args.gpus_per_engine)
    serve.deploy(cfg, opts, _address(args.ray), blocking=True)
    return 0

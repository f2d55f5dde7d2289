"""`graphrt locate --ray`: a batch over many engines as a Ray Data pipeline.

    driver: read rows (batch_io) -> skip lines already in OUT -> bad rows written at once
    -> decode + resize images on CPU tasks      (pixels travel as uint8 bytes in the object store)
    -> an actor pool of engines, one per GPU      (batches of the largest graph bucket)
    -> overlays on CPU tasks (when asked)
    -> driver: rows appended to OUT as they finish, progress with rows/s and ETA on a TTY

An engine actor that dies is restarted by Ray and its batch runs again (Ray Data's actor pools
default to max_restarts=-1, max_task_retries=-1); a row handed back twice is written once.
Engines on GPUs keep the decode stage on its own CPU tasks; engines on CPUs only
(--gpus-per-engine 0) ask for the same resources as the decode tasks, and Ray Data then fuses
the decode into the engine actors (fine there: they share the same CPUs). A stopped run
resumes from OUT (journal.py). Output rows are those of the single-process CLI (batch_io).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from ..batch_io import Request, coco_dataset, coco_results, draw_overlay, result_record
from ..boxes import Detection
from ..config import PreprocessorConfig
from ..engine import EngineOptions
from ..errors import GraphrtError, InputError
from ..processor import ImageProcessor
from .journal import Journal
from .replica import load_engine, pack, unpack

DECODE_ROWS = 8  # rows per CPU decode task: small, so decoding spreads over the workers


@dataclass(frozen=True)
class OfflineConfig:
    checkpoint: str
    options: EngineOptions
    engines: int = 1  # engine actors (one per GPU)
    gpus_per_engine: float = 1.0  # 0: engines on CPUs (tests, CPU clusters)
    cpus_per_engine: float | None = None  # None: 0 with GPUs (the GPU is the resource), else 1
    batch_rows: int = 0  # rows per engine call; 0: the largest graph batch (eager batch without graphs)
    overlay: str | None = None  # folder for images with their boxes drawn
    fmt: str = "jsonl"  # jsonl | coco | coco-dataset (graphrt.cli.FORMATS)

    def __post_init__(self):
        if self.engines < 1:
            raise ValueError("--engines must be >= 1")
        if self.gpus_per_engine < 0:
            raise ValueError("--gpus-per-engine must be >= 0")

    def rows_per_batch(self) -> int:
        if self.batch_rows:
            return self.batch_rows
        if self.options.graphs == "off" or self.gpus_per_engine == 0 or self.options.device == "cpu":
            return self.options.eager_batch  # no graphs: the eager path's batch
        from capture import Buckets

        return (self.options.buckets or Buckets()).max_batch

    def engine_cpus(self) -> float:
        if self.cpus_per_engine is not None:
            return self.cpus_per_engine
        return 0.0 if self.gpus_per_engine > 0 else 1.0


# ---------------------------------------------------------------- pipeline stages (run on workers)

def decode_images(batch: dict, preprocessor: PreprocessorConfig) -> dict:
    """CPU task: each row's image decoded and resized once per path. A row whose image fails keeps
    no pixels; its engine then meets the raw path and reports the same error as on one machine."""
    processor = ImageProcessor(preprocessor)
    decoded: dict[str, dict | None] = {}
    out = {k: [] for k in ("line", "request", "rgb", "rgb_h", "rgb_w", "grid_h", "grid_w", "width", "height")}
    for line, request in zip(batch["line"], batch["request"]):
        image = json.loads(request)["image"]
        if image not in decoded:
            try:
                decoded[image] = pack(processor(image))
            except InputError:
                decoded[image] = None
        fields = decoded[image] or {"rgb": b"", "rgb_h": 0, "rgb_w": 0, "grid_h": 0, "grid_w": 0, "width": 0,
                                    "height": 0}
        out["line"].append(line)
        out["request"].append(request)
        for k, v in fields.items():
            out[k].append(v)
    return {k: np.array(v, dtype=object if k in ("request", "rgb") else np.int64) for k, v in out.items()}


class EngineWorker:
    """Actor: one engine (one GPU) answering batches of decoded rows with output records."""

    def __init__(self, checkpoint: str, options: EngineOptions):
        self.engine = load_engine(checkpoint, options)

    def __call__(self, batch: dict) -> dict:
        requests = [Request(**json.loads(r)) for r in batch["request"]]
        images: dict[str, object] = {}  # one decoded image per path: its rows share vision and prefix
        pairs = []
        for i, req in enumerate(requests):
            pair = req.pair()
            if req.exemplar_box is not None:  # the crop is cut from the image as read: the engine reads it
                pairs.append(pair)
                continue
            if batch["rgb_h"][i] > 0 and req.image not in images:
                images[req.image] = unpack({k: batch[k][i] for k in batch}, self.engine.processor)
            pairs.append((images.get(req.image, req.image), *pair[1:]))
        results = self.engine.locate_batch(pairs, [r.temperature for r in requests], errors="report")
        records = [json.dumps(result_record(req, res)) for req, res in zip(requests, results)]
        return {"line": np.array([r.line for r in requests], dtype=np.int64), "record": np.array(records, dtype=object)}


def draw_overlays(batch: dict, folder: str) -> dict:
    """CPU task: the images of answered rows with their boxes, named as the single-process CLI names them."""
    for text in batch["record"]:
        rec = json.loads(text)
        if "error" not in rec:
            dets = [Detection(**d) for d in rec["detections"]]
            draw_overlay(rec["image"], dets, Path(folder) / f"{rec['line']:06d}_{Path(rec['image']).stem}.png")
    return batch


# ---------------------------------------------------------------- driver

def connect(address: str | None) -> None:
    """Join the cluster at `address` ("auto": the running one), or start a local one (None)."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar and summary say what matters


def check_resources(engines: int, gpus_per_engine: float) -> None:
    """Fail at once when the cluster cannot place the engines (Ray would wait for them forever)."""
    have = ray.cluster_resources().get("GPU", 0)
    if engines * gpus_per_engine > have:
        raise GraphrtError(f"{engines} engine(s) x {gpus_per_engine:g} GPU need {engines * gpus_per_engine:g} GPUs; "
                           f"the Ray cluster has {have:g} (use --engines, or --gpus-per-engine 0 for CPU engines)")


def preprocessor_config(checkpoint: str | Path) -> PreprocessorConfig:
    path = Path(checkpoint) / "preprocessor_config.json"
    return PreprocessorConfig.from_dict(json.loads(path.read_text())) if path.is_file() else PreprocessorConfig()


def run(cfg: OfflineConfig, requests: list[Request], out: str, worker: type = EngineWorker) -> dict:
    """Answer `requests` into `out`, resuming from what it holds. Returns the run's summary."""
    check_resources(cfg.engines, cfg.gpus_per_engine)
    preprocessor = preprocessor_config(cfg.checkpoint)
    journal_path = out if cfg.fmt == "jsonl" else f"{out}.rows.jsonl"
    t0 = time.perf_counter()
    with Journal(journal_path) as journal:
        todo = [r for r in requests if r.line not in journal.done]
        skipped = len(requests) - len(todo)
        for r in todo:
            if r.error is not None:
                journal.write(result_record(r, None))
        todo = [r for r in todo if r.error is None]
        bar = tqdm(total=len(requests), initial=len(journal.done), unit="row", desc="locate", file=sys.stderr,
                   disable=not sys.stderr.isatty())
        images = set()
        first_row_s = None  # start-up: actors placed, engines loaded, first batch answered
        if todo:
            for row in _pipeline(cfg, todo, preprocessor, worker).iter_rows():
                first_row_s = first_row_s or time.perf_counter() - t0
                rec = json.loads(row["record"])
                journal.write(rec)
                if "error" not in rec:
                    images.add(rec["image"])
                bar.update(1)
        bar.close()
        records = sorted(journal.records, key=lambda rec: rec["line"])
    if cfg.fmt != "jsonl":  # the COCO formats are one document, written once every row is in
        document = coco_results(records) if cfg.fmt == "coco" else coco_dataset(records)
        Path(out).write_text(json.dumps(document) + "\n", encoding="utf-8")
        Path(journal_path).unlink()
    wall = time.perf_counter() - t0
    return {"records": records, "skipped": skipped, "ran": len(todo), "images": len(images), "wall_s": wall,
            "first_row_s": first_row_s}


def _pipeline(cfg: OfflineConfig, todo: list[Request], preprocessor: PreprocessorConfig, worker: type):
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts rows; Ray's would count blocks per stage
    rows = [{"line": r.line, "request": json.dumps(dataclasses.asdict(r))} for r in todo]
    blocks = max(1, min(len(rows), -(-len(rows) // DECODE_ROWS)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(decode_images, fn_kwargs={"preprocessor": preprocessor}, batch_size=DECODE_ROWS,
                        batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(worker, fn_constructor_args=(cfg.checkpoint, cfg.options), batch_size=cfg.rows_per_batch(),
                        batch_format="numpy", compute=ActorPoolStrategy(size=cfg.engines),
                        num_gpus=cfg.gpus_per_engine, num_cpus=cfg.engine_cpus())
    if cfg.overlay:
        ds = ds.map_batches(draw_overlays, fn_kwargs={"folder": cfg.overlay}, batch_format="numpy", num_cpus=1)
    return ds

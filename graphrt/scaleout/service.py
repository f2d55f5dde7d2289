"""The HTTP app of `graphrt serve` (FastAPI), the same in a Ray Serve replica and under uvicorn.

    POST /v1/locate  {"image": base64 | "image_path": path under --image-root, "query": str | [str],
                      "task", "temperature", "top_p", "top_k", "repetition_penalty", "seed",
                      "mode", "max_new_tokens" (all optional)}
                     -> the JSON of `graphrt locate --json`
    GET  /health     -> {"status": "ok"}
    GET  /status     -> the engine's status and this replica's counters

Images are decoded on the server's handler threads while the engine runs the previous batch.
A bad request gets a 4xx with a message naming what is wrong: 400 unreadable image, bad
options; 403 a path outside --image-root; 404 a missing path; 422 a malformed body or a query
the model cannot take. Other requests are served on.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from ..engine import EngineOptions, LocateResult
from ..errors import InputError
from ..decode import GenerationConfig
from .batcher import Batcher
from .replica import load_engine, task_view


@dataclass(frozen=True)
class ServiceConfig:
    checkpoint: str
    options: EngineOptions
    image_root: str | None = None  # image_path requests must lie under it; None: image_path refused
    batch_rows: int = 0  # 0: the engine's largest batch (graph bucket, or eager batch)
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company


class LocateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = None  # base64 of the encoded file (a data: URL prefix is accepted)
    image_path: str | None = None  # a file on the server, under its --image-root
    query: str | list[str]
    task: Literal["detect", "ground_multi", "ground_single"] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    mode: Literal["fast", "hybrid", "slow"] | None = None
    max_new_tokens: int | None = None


class LocateService:
    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.engine = load_engine(cfg.checkpoint, cfg.options)
        rows = cfg.batch_rows or (self.engine.runtime.buckets.max_batch if self.engine.runtime
                                  else cfg.options.eager_batch)
        self.batcher = Batcher(self._run, rows, cfg.batch_wait_ms / 1000)
        self.started = time.time()
        self.requests = 0
        self.rejected = 0

    async def locate(self, req: LocateRequest) -> dict:
        self.requests += 1
        try:
            image = await run_in_threadpool(self._image, req)
            task, gen = self._generation(req)
            result: LocateResult = await self.batcher.submit((image, req.query, req.temperature, task, gen))
        except HTTPException:
            self.rejected += 1
            raise
        if result.error is not None:
            self.rejected += 1
            raise HTTPException(422, f"request cannot run: {result.error}")
        return result.to_dict()

    def status(self) -> dict:
        out = self.engine.status()
        out["service"] = {"replica_pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1),
                          "requests": self.requests, "rejected": self.rejected, "batches": self.batcher.batches,
                          "batched_rows": self.batcher.rows, "largest_batch": self.batcher.largest,
                          "max_batch_rows": self.batcher.max_rows,
                          "waiting": self.batcher.waiting}
        return out

    # ------------------------------------------------------------ request -> engine input

    def _image(self, req: LocateRequest):
        """The decoded, resized image (handler thread), or a 4xx naming what is wrong."""
        if (req.image is None) == (req.image_path is None):
            raise HTTPException(400, "give exactly one of image (base64) and image_path")
        if req.image is not None:
            text = req.image.split(",", 1)[1] if req.image.startswith("data:") else req.image
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise HTTPException(400, f"image is not valid base64: {exc}") from exc
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    source = ImageOps.exif_transpose(img)  # as a path is read (processor.load_image)
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise HTTPException(400, f"image is not a readable image file: {exc}") from exc
        else:
            source = self._server_path(req.image_path)
        try:
            return self.engine.processor.inner(source)
        except InputError as exc:
            raise HTTPException(400, str(exc)) from exc

    def _server_path(self, name: str) -> str:
        if self.cfg.image_root is None:
            raise HTTPException(403, "image_path is off on this server (start it with --image-root DIR)")
        root = Path(self.cfg.image_root).resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise HTTPException(403, f"image_path {name!r} lies outside the server's image root")
        if not path.is_file():
            raise HTTPException(404, f"image_path {name!r} not found under the server's image root")
        return str(path)

    def _generation(self, req: LocateRequest) -> tuple[str, GenerationConfig]:
        """The request's task and generation config (the server's defaults where it gives none)."""
        base = self.cfg.options.generation
        if req.max_new_tokens is not None and not 1 <= req.max_new_tokens <= base.max_new_tokens:
            raise HTTPException(400, f"max_new_tokens must be in 1..{base.max_new_tokens} on this server")
        if req.temperature is not None and req.temperature < 0:
            raise HTTPException(400, "temperature must be >= 0")
        sampling = {k: getattr(req, k) for k in ("top_p", "top_k", "repetition_penalty") if getattr(req, k) is not None}
        general = {k: getattr(req, k) for k in ("mode", "max_new_tokens", "seed") if getattr(req, k) is not None}
        try:
            gen = dataclasses.replace(base, sampling=dataclasses.replace(base.sampling, **sampling), **general)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        return req.task or self.cfg.options.task, gen

    # ------------------------------------------------------------ one batch (the engine's thread)

    def _run(self, items: list) -> list[LocateResult]:
        """Rows grouped by (task, generation config); each group one engine call, in arrival order."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, _, _, task, gen) in enumerate(items):
            groups.setdefault((task, gen), []).append(i)
        out: list[LocateResult | None] = [None] * len(items)
        for (task, gen), idx in groups.items():
            pairs = [(items[i][0], items[i][1]) for i in idx]
            temps = [items[i][2] for i in idx]
            fields = {f.name: getattr(gen, f.name) for f in dataclasses.fields(GenerationConfig)}
            results = task_view(self.engine, task).locate_batch(pairs, temps, errors="report", **fields)
            for i, result in zip(idx, results):
                out[i] = result
        return out


def build_app(service: LocateService) -> FastAPI:
    app = FastAPI(title="graphrt", description="LocateAnything boxes over HTTP (graphrt serve)")

    @app.post("/v1/locate")
    async def locate(req: LocateRequest) -> dict:
        return await service.locate(req)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/status")
    async def status() -> dict:
        return service.status()

    return app


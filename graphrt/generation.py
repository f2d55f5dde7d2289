"""A generation in flight that can be advanced step by step, paused into a state, and resumed.

    run = engine.start(pairs)          # vision + prefill
    run.advance(steps=2)               # two MTP steps of every row
    state = run.pause()                # per-row device state and KV, copied to CPU
    state.save("run.pt")               # ... later, in this or another process:
    run = engine.resume(GenerationState.load("run.pt"))
    results = run.finish()             # the same tokens as an uninterrupted run

On the graph runtime a running generation holds the runtime's buffers: any other engine call
displaces it (its next advance raises), so pause it first. The eager path keeps its own cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backend import Decode
from .decode import PAUSED_TENSORS, GenerationConfig
from .errors import InputError
from .mtp import MTPConfig
from .processor import ProcessedImage
from .prompt import Prompt
from .request import ImageJob, ResultMaker, Row
from .sampler import SamplingConfig


# Format 2 (2026-11-24): per-row tensors named as graphrt.decode.PAUSED_TENSORS on both backends.
# Format 1 (no `format` key: each backend its own names) is refused with an InputError saying so.
STATE_FORMAT = 2


@dataclass
class GenerationState:
    backend: str  # "graphs" | "eager": the backend that paused it, and the one that resumes it
    generation: dict  # GenerationConfig as a dict
    rows: list[dict]  # per row: what results need (query, prompt, image size, ...)
    tensors: dict = field(default_factory=dict)  # CPU tensors: PAUSED_TENSORS and the KV rows
    extra: dict = field(default_factory=dict)  # plain values only one backend has (eager: AR mode, ...)
    steps_done: int = 0
    format: int = 1  # a state file without the key is format 1

    def save(self, path: str | Path) -> None:
        torch.save(dataclasses.asdict(self), str(path))

    @classmethod
    def load(cls, path: str | Path) -> "GenerationState":
        """A state written by save(); anything else is an InputError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"generation state {path}: no such file")
        try:
            raw = torch.load(str(path), weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 -- torch raises many types for files it cannot unpickle
            raise InputError(f"generation state {path}: not a file written by GenerationState.save "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or not {"backend", "generation", "rows"} <= set(raw) or set(raw) - names:
            found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise InputError(f"generation state {path}: not a file written by GenerationState.save (holds {found})")
        state = cls(**raw)
        if state.backend not in ("graphs", "eager") or not isinstance(state.rows, list) \
                or not isinstance(state.generation, dict) or not isinstance(state.tensors, dict):
            raise InputError(f"generation state {path}: malformed (backend {state.backend!r})")
        if state.format != STATE_FORMAT:
            raise InputError(f"generation state {path}: format {state.format} (an older graphrt); this version "
                             f"resumes format {STATE_FORMAT} only: run the request again")
        missing = sorted(set(PAUSED_TENSORS) - set(state.tensors))
        if missing:
            raise InputError(f"generation state {path}: malformed (no tensors {', '.join(missing)})")
        try:
            state.generation_config()
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(f"generation state {path}: its generation settings are unusable ({exc})") from exc
        return state

    def jobs(self) -> list[ImageJob]:
        """The paused rows as image jobs (one row each; the images themselves are not kept)."""
        return [ImageJob(ProcessedImage(torch.empty(0), tuple(m["grid"]), tuple(m["size"])), [_row_of(m)])
                for m in self.rows]

    def generation_config(self) -> GenerationConfig:
        d = dict(self.generation)
        return GenerationConfig(**dict(d, sampling=SamplingConfig(**d["sampling"]), mtp=MTPConfig(**d["mtp"])))


class Generation:
    """A batch in flight on one backend (the engine's graphs or its eager loop), step by step."""

    def __init__(self, jobs: list[ImageJob], gen: GenerationConfig, backend: str, decode: Decode,
                 results: ResultMaker):
        self.jobs, self.gen, self.backend, self.decode, self.results = jobs, gen, backend, decode, results
        self.steps_done = 0

    # ------------------------------------------------------------------ running

    @property
    def done(self) -> bool:
        return self.decode.done

    def advance(self, steps: int = 1) -> bool:
        """Run up to `steps` decode steps of every unfinished row; True when all rows are done."""
        for _ in range(steps):
            if self.decode.done:
                break
            self.decode.step()
            self.steps_done += 1
        return self.decode.done

    def finish(self) -> list:
        """Run to the end; results in the order of the pairs given to start()."""
        while not self.decode.done:
            self.advance(64)
        self.decode.finish()
        for job in self.jobs:
            job.timings_ms = {"steps_total": self.steps_done}
        results = dict(self.results(self.jobs, self.backend))
        return [results[i] for i in sorted(results)]

    # ------------------------------------------------------------------ pause / resume

    def pause(self) -> GenerationState:
        rows = [_row_meta(job, r) for job in self.jobs for r in job.rows]
        tensors, extra = self.decode.pause()
        return GenerationState(self.backend, dataclasses.asdict(self.gen), rows, tensors, extra, self.steps_done,
                               STATE_FORMAT)


def _row_meta(job: ImageJob, r: Row) -> dict:
    return {"index": r.index, "query": r.query, "ids": r.prompt.ids, "image_start": r.prompt.image_start,
            "image_tokens": r.prompt.image_tokens, "prefix_len": r.prompt.prefix_len, "temperature": r.temperature,
            "grid": list(job.image.grid), "size": list(job.image.size), "task": r.task}


def _row_of(meta: dict) -> Row:
    prompt = Prompt(meta["ids"], meta["image_start"], meta["image_tokens"], meta["prefix_len"])
    return Row(meta["index"], meta["query"], meta.get("task", ""), prompt, meta["temperature"])

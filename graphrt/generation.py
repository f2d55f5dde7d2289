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

from .errors import InputError
from .decode import GenerationConfig
from .mtp import MTPConfig
from .sampler import SamplingConfig


@dataclass
class GenerationState:
    backend: str  # "graphs" | "eager"
    generation: dict  # GenerationConfig as a dict
    rows: list[dict]  # per row: what results need (query, prompt, image size, ...)
    tensors: dict = field(default_factory=dict)  # CPU tensors (device state, KV)
    extra: dict = field(default_factory=dict)  # plain Python state of the eager loop
    steps_done: int = 0

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
        try:
            state.generation_config()
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(f"generation state {path}: its generation settings are unusable ({exc})") from exc
        return state

    def generation_config(self) -> GenerationConfig:
        d = dict(self.generation)
        return GenerationConfig(**dict(d, sampling=SamplingConfig(**d["sampling"]), mtp=MTPConfig(**d["mtp"])))


class Generation:
    def __init__(self, engine, prepared: list, gen: GenerationConfig, backend: str):
        self.engine, self.prepared, self.gen, self.backend = engine, prepared, gen, backend
        self.steps_done = 0
        self.decoder = None  # eager
        self.targets: list[int] = []  # graphs: cache rows [0, n)
        self.batch = 0
        self._done = False

    # ------------------------------------------------------------------ running

    @property
    def done(self) -> bool:
        return self._done

    def advance(self, steps: int = 1) -> bool:
        """Run up to `steps` decode steps of every unfinished row; True when all rows are done."""
        for _ in range(steps):
            if self._done:
                break
            if self.backend == "eager":
                self.decoder.step()
                self._done = self.decoder.done
            else:
                self._check_owner()
                self.engine.runtime.step(self.batch)
                self._done = bool(self.engine.runtime.pipe.all_done)
            self.steps_done += 1
        return self._done

    def finish(self) -> list:
        """Run to the end; results in the order of the pairs given to start()."""
        while not self._done:
            self.advance(64)
        if self.backend == "eager":
            rows = self.decoder.results
        else:
            self._check_owner()
            rows = self.engine.runtime.collect(self.targets)
            self.engine.runtime.owner = None
        results = dict(self.engine._results(self.prepared, rows, {"steps_total": self.steps_done}, self.backend))
        return [results[i] for i in sorted(results)]

    def _check_owner(self) -> None:
        if self.engine.runtime.owner is not self:
            raise InputError("this generation was displaced by another call on the engine; pause() it first")

    # ------------------------------------------------------------------ pause / resume

    def pause(self) -> GenerationState:
        rows = [_row_meta(p, r) for p in self.prepared for r in p.rows]
        state = GenerationState(self.backend, dataclasses.asdict(self.gen), rows, steps_done=self.steps_done)
        if self.backend == "eager":
            raw = self.decoder.state_dict()
            state.tensors = {k: raw.pop(k) for k in ("cache_k", "cache_v", "seen")}
            if (rng := raw.pop("rng")) is not None:
                state.tensors["rng"] = rng
            state.extra = raw
        else:
            self._check_owner()
            state.tensors = self.engine.runtime.snapshot(self.targets)
            state.extra = {"batch": self.batch, "done": self._done}
            self.engine.runtime.owner = None
        return state


def _row_meta(p, r) -> dict:
    return {"index": r.index, "query": r.query, "ids": r.prompt.ids, "image_start": r.prompt.image_start,
            "image_tokens": r.prompt.image_tokens, "prefix_len": r.prompt.prefix_len, "temperature": r.temperature,
            "grid": list(p.image.grid), "size": list(p.image.size), "task": r.task}

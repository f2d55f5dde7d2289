"""The record of a request from the API to its result.

    pair (image, query, options) --Engine validates, preprocesses--> Row in an ImageJob
        --a Backend prefills and decodes--> Row.result (RowResult) --> LocateResult

A `Row` is one (image, query) the caller asked about; an `ImageJob` is one preprocessed image with
the rows that ask about it (one vision pass, one shared prompt prefix), the unit the engine
batches and the scheduler admits; a `Batch` is rows decoded together with the images they name,
what the decoders read (the graph runtime directly, the eager loop with the images embedded:
graphrt.generate.EagerBatch). The backends read rows and write `Row.result`; `ResultMaker` turns
each finished row into the public `LocateResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .boxes import Detection, parse_detections
from .config import TokenIds
from .decode import RowResult
from .processor import ProcessedImage
from .prompt import Prompt


@dataclass
class Row:
    index: int  # position in the caller's list; also the row's sampling-stream id
    query: str  # the normalized phrase ("" for tasks without one)
    task: str
    prompt: Prompt
    temperature: float | None = None  # None: the generation config's
    max_new_tokens: int | None = None  # None: the generation config's
    exemplars: list[ProcessedImage] = field(default_factory=list)  # images 2..N (visual prompt)
    result: RowResult | None = None  # set by the backend when the row is done

    @classmethod
    def of_prompt(cls, prompt: Prompt, index: int = 0, temperature: float | None = None,
                  max_new_tokens: int | None = None) -> "Row":
        """A row from a built prompt, with no query text: tests, benchmarks and calibration drive
        the decoders (capture.runtime.GraphBatch, graphrt.generate.EagerBatch) with these."""
        return cls(index, "", "", prompt, temperature, max_new_tokens)


@dataclass
class ImageJob:
    image: ProcessedImage
    rows: list[Row]
    preprocess_ms: float = 0.0
    timings_ms: dict = field(default_factory=dict)  # per stage, set by the backend that ran the job

    @property
    def results(self) -> list[RowResult | None]:
        return [r.result for r in self.rows]

    @property
    def image_count(self) -> int:
        """Images of the job's vision work: the query image and every row's exemplars."""
        return 1 + sum(len(r.exemplars) for r in self.rows)


@dataclass(frozen=True)
class Batch:
    """Rows decoded together and the images they name: what the decoders read. `row_images[r]` is
    the position in `images` of each image of row r's prompt, in placeholder order (the query
    image, then its exemplars); rows naming the same query image share its vision work and their
    prompt prefix."""

    images: list[ProcessedImage]
    rows: list[Row]
    row_images: list[tuple[int, ...]]

    def __post_init__(self):
        if len(self.row_images) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(self.row_images)} image lists")

    @classmethod
    def of(cls, jobs: list[ImageJob]) -> "Batch":
        """The jobs' rows in order; the images are the jobs' images, then each row's exemplars."""
        images = [job.image for job in jobs]
        rows, row_images = [], []
        for i, job in enumerate(jobs):
            for row in job.rows:
                rows.append(row)
                row_images.append((i, *range(len(images), len(images) + len(row.exemplars))))
                images += row.exemplars
        return cls(images, rows, row_images)

    @classmethod
    def of_prompts(cls, images: list[ProcessedImage], prompts: list[Prompt]) -> "Batch":
        """Row i asks prompts[i] about images[i] (benchmarks and calibration build prompts themselves)."""
        rows = [Row.of_prompt(p, i) for i, p in enumerate(prompts)]
        return cls(list(images), rows, [(i,) for i in range(len(rows))])

    def part(self, images: list[int], rows: list[int]) -> "Batch":
        """These images and rows as a batch of their own (image positions renumbered)."""
        local = {old: new for new, old in enumerate(images)}
        return Batch([self.images[i] for i in images], [self.rows[r] for r in rows],
                     [tuple(local[i] for i in self.row_images[r]) for r in rows])


@dataclass
class LocateResult:
    detections: list[Detection]
    text: str  # raw generated text, special tokens kept
    tokens: list[int]
    stop_reason: str  # "end" | "max_new_tokens" | "fixed_steps" (benchmarks) | "error"
    steps: int  # LM decode steps (MTP or AR)
    image_size: tuple[int, int]
    image_patches: int
    image_tokens: int
    prompt_tokens: int
    query: str = ""
    task: str = ""
    exemplars: int = 0  # visual-prompt images sent after the query image
    empty_frames: int = 0
    malformed: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # set (and nothing else) when this request could not run
    backend: str = ""  # "graphs" | "eager": which path answered

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["detections"] = [d.to_dict() for d in self.detections]
        return out

    @classmethod
    def failed(cls, query, message: str) -> "LocateResult":
        return cls([], "", [], "error", 0, (0, 0), 0, 0, 0, query=str(query), error=message)

    @classmethod
    def of(cls, job: ImageJob, row: Row, tokens_cfg, decode, timings: dict, backend: str) -> "LocateResult":
        """The public result of a finished row; `decode` turns token ids into text."""
        out = row.result
        parsed = parse_detections(out.tokens, tokens_cfg, decode, job.image.size)
        return cls(
            detections=parsed.detections, text=decode(out.tokens), tokens=out.tokens, stop_reason=out.stop_reason,
            steps=out.steps, image_size=job.image.size, image_patches=job.image.num_patches,
            image_tokens=row.prompt.image_tokens, prompt_tokens=len(row.prompt.ids), query=row.query, task=row.task,
            exemplars=len(row.prompt.image_spans) - 1, empty_frames=parsed.empty_frames, malformed=parsed.malformed,
            timings_ms=dict(timings, steps=out.steps), backend=backend)


@dataclass(frozen=True)
class ResultMaker:
    """Finished rows to public results, with the checkpoint's token ids and its tokenizer's decode."""

    tokens: TokenIds
    decode: Callable[[list[int]], str]  # token ids -> text, special tokens kept

    def __call__(self, jobs: list[ImageJob], backend: str) -> Iterator[tuple[int, LocateResult]]:
        """(index, LocateResult) of each row of finished jobs; the job's timings gain its preprocessing."""
        for job in jobs:
            timings = dict(job.timings_ms, preprocess_ms=job.preprocess_ms)
            for row in job.rows:
                yield row.index, LocateResult.of(job, row, self.tokens, self.decode, timings, backend)

"""Pairs to image jobs: each (image, query[, options]) pair's options read, its image decoded and
resized (on the GPU where the engine runs there; equal-size images of a batch together),
exemplars cropped or loaded, the prompt built and checked against the context;
the rows of one image become one ImageJob. A bad image fails all its rows, a bad query only its own."""

from __future__ import annotations

import time
from pathlib import Path

from .config import ModelConfig
from .decode import GenerationConfig, context_budget
from .errors import InputError
from .processor import ImageProcessor, ProcessedImage, load_image
from .prompt import PHRASE_TASKS, PromptBuilder, check_task, normalize_query
from .request import ImageJob, LocateResult, Row
from .visual_prompt import VisualPrompt, exemplar_inputs

PAIR_OPTIONS = ("task", "exemplar", "exemplar_box", "box_format")  # keys of a pair's third element


class Intake:
    def __init__(self, cfg: ModelConfig, processor: ImageProcessor, prompts: PromptBuilder,
                 max_image_pixels: int | None, max_query_chars: int | None):
        self.cfg, self.processor, self.prompts = cfg, processor, prompts
        self.max_image_pixels, self.max_query_chars = max_image_pixels, max_query_chars

    def prepare(self, pairs, indices: list[int], temps, gen: GenerationConfig, errors: str, task: str):
        """Image and prompts of one group -> (ImageJob or None, [(index, failed result)]). A bad
        image fails all its rows; a bad query (or task, or exemplar) only its own."""
        return self.prepare_many(pairs, [indices], temps, gen, errors, task)[0]

    def prepare_many(self, pairs, groups: list[list[int]], temps, gen: GenerationConfig, errors: str, task: str,
                     pool=None) -> list[tuple]:
        """`prepare` of every group at once, in order: images loaded (on `pool`'s threads when
        given: decoders release the GIL), then resized together (equal sizes share one upload
        buffer and one set of resize launches: graphrt.processor.process_loaded), then each
        group's rows built. Each job's preprocess_ms is the wall time of the whole preparation
        (no image of the batch is ready before the last one is). Errors as in `prepare`; with
        errors="raise" the first bad group (image before its rows) raises."""
        t0 = time.perf_counter()
        load = lambda indices: self._load(pairs, indices, task)  # noqa: E731
        loaded = list(pool.map(load, groups)) if pool is not None and len(groups) > 1 else [load(g) for g in groups]
        todo = [k for k, (_, rgb, image) in enumerate(loaded) if image is None and not isinstance(rgb, InputError)]
        processed = dict(zip(todo, self.processor.process_loaded([loaded[k][1] for k in todo]))) if todo else {}
        outcomes = []
        for k, (indices, (specs, rgb, image)) in enumerate(zip(groups, loaded)):
            image = processed.get(k, rgb if image is None else image)
            if isinstance(image, InputError):
                if errors == "raise":
                    raise image
                outcomes.append((None, [(i, LocateResult.failed(query_text(pairs[i][1]), str(image)))
                                        for i in indices]))
                continue
            outcomes.append(self._rows(pairs, indices, specs, rgb, image, temps, gen, errors))
        ms = round((time.perf_counter() - t0) * 1000, 3)
        for job, _ in outcomes:
            if job is not None:
                job.preprocess_ms = ms
        return outcomes

    def _load(self, pairs, indices: list[int], task: str) -> tuple:
        """(each row's pair options or its InputError, the group's loaded RGB image or its
        InputError, its ProcessedImage or None when `process_loaded` is to make it). A processor
        that is only a callable (scale-out's, which passes images processed elsewhere through)
        processes each image here."""
        specs = {}
        for i in indices:
            try:
                specs[i] = pair_options(pairs[i], task)
            except InputError as exc:
                specs[i] = exc
        src = pairs[indices[0]][0]
        try:
            if isinstance(self.processor, ImageProcessor):
                # Boxes are cropped from the image as read (before the processor resizes it).
                return specs, self.processor.load(src), None
            boxed = any(not isinstance(v, Exception) and v[2] is not None and v[2].box is not None
                        for v in specs.values())
            rgb = load_image(src, self.max_image_pixels) if boxed else None
            return specs, rgb, self.processor(rgb if boxed else src)
        except InputError as exc:
            return specs, exc, None

    def _rows(self, pairs, indices: list[int], specs: dict, rgb, image: ProcessedImage, temps,
              gen: GenerationConfig, errors: str) -> tuple:
        """(ImageJob of the group's good rows or None, [(index, failed result)])."""
        rows, failures = [], []
        merge = self.cfg.vision.merge_kernel_size
        for i in indices:
            query = pairs[i][1]
            try:
                if isinstance(specs[i], Exception):
                    raise specs[i]
                _, row_task, visual = specs[i]
                if query is not None or row_task in PHRASE_TASKS:
                    self.check_query_length(query)
                exemplars = [] if visual is None else [
                    self._exemplar(k, x) for k, x in enumerate(exemplar_inputs(rgb, visual))]
                counts = [image.num_tokens(merge)] + [e.num_tokens(merge) for e in exemplars]
                prompt = self.prompts.build(query, counts, row_task)
                context_budget(self.cfg, len(prompt.ids), gen.max_new_tokens)
            except InputError as exc:
                if errors == "raise":
                    raise
                failures.append((i, LocateResult.failed(query_text(query), str(exc))))
                continue
            phrase = normalize_query(query) if row_task in PHRASE_TASKS else ""
            rows.append(Row(i, phrase, row_task, prompt, temps[i], exemplars=exemplars))
        return (ImageJob(image, rows) if rows else None), failures

    def check_query_length(self, query) -> None:
        if not isinstance(query, (str, list, tuple)):
            raise InputError(f"query must be a non-empty string or a list of strings, found {type(query).__name__}")
        limit = self.max_query_chars
        text = normalize_query(query)
        if limit is not None and len(text) > limit:
            raise InputError(f"query of {len(text):,} characters is over EngineOptions.max_query_chars = {limit:,}")

    def _exemplar(self, k: int, src) -> ProcessedImage:
        try:
            return self.processor(src)
        except InputError as exc:
            raise InputError(f"exemplar {k + 1}: {exc}") from exc


def pair_options(pair, task: str) -> tuple:
    """(query, task, VisualPrompt or None) of an (image, query) or (image, query, options) pair."""
    if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
        raise InputError("a pair is (image, query) or (image, query, {task, exemplar, exemplar_box, box_format})")
    opts = pair[2] if len(pair) == 3 and pair[2] is not None else {}
    if not isinstance(opts, dict):
        raise InputError(f"a pair's third element must be a dict of {', '.join(PAIR_OPTIONS)}")
    unknown = sorted(set(opts) - set(PAIR_OPTIONS))
    if unknown:
        raise InputError(f"unknown pair option(s) {', '.join(unknown)}; known: {', '.join(PAIR_OPTIONS)}")
    row_task = check_task(opts.get("task") or task)
    visual = VisualPrompt.of(opts.get("exemplar"), opts.get("exemplar_box"),
                             opts.get("box_format") or "normalized_1000")
    return pair[1], row_task, visual


def image_key(src):
    if isinstance(src, (str, Path)):
        try:
            return "path", str(Path(src).resolve())
        except (OSError, ValueError):  # e.g. a NUL byte: the processor names the problem
            return "path", str(src)
    return "object", id(src)


def group_by_image(pairs, limit: int, indices=None) -> list[list[int]]:
    """Indices of pairs (all, or `indices`) grouped by image (same path or same object), in first-seen
    order; a group holds at most `limit` rows (the largest batch), so a job always fits a batch."""
    groups: dict = {}
    order: list[list[int]] = []
    for i in range(len(pairs)) if indices is None else indices:
        key = image_key(pairs[i][0])
        if key not in groups or len(groups[key]) >= limit:
            groups[key] = []
            order.append(groups[key])
        groups[key].append(i)
    return order


def batch_groups(groups: list[list[int]], rows: int) -> list[list[list[int]]]:
    """Consecutive groups cut into batches of at most `rows` rows (a group is never split; one
    larger than `rows` is a batch alone): what a stream prepares together."""
    batches: list[list[list[int]]] = []
    held = rows
    for group in groups:
        if held + len(group) > rows:
            batches.append([])
            held = 0
        batches[-1].append(group)
        held += len(group)
    return batches


def query_text(query) -> str:
    if query is None:
        return ""
    return query if isinstance(query, str) else "</c>".join(map(str, query)) if isinstance(query, (list, tuple)) \
        else repr(query)

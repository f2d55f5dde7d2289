"""Public entry point: load a checkpoint once, then answer (image, query) requests with boxes.

    engine = Engine.from_pretrained("path/to/LocateAnything-3B")
    result = engine.locate("street.jpg", "person</c>car")           # one frame (robot loop)
    results = engine.locate_many("street.jpg", ["person", "car"])   # one image, shared vision + prefix
    results = engine.locate_batch(pairs)                            # any (image, query) list
    result = engine.locate("street.jpg", "the traffic light", task="point")           # any worker task
    result = engine.locate("street.jpg", task="detect_visual_prompt", exemplar_box=(100, 200, 300, 400))

Rows of one image are vision-encoded once and their prompt prefix (everything up to `</img>`) is
prefilled once. Up to the largest batch bucket a call runs as one batch; larger workloads stream
through the continuous-batching scheduler with images preprocessed on CPU threads meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from calib import engine_model, quantize_model
from capture.backend import GraphBackend
from capture.plan import plan_for_model
from capture.runtime import GraphRuntime
from weights.loader import load_weights

from .backend import Backend, stream_prepared
from .config import ModelConfig, PreprocessorConfig
from .decode import GenerationConfig
from .eager import EagerBackend, encode_images
from .errors import CheckpointError, InputError, OptionError
from .generation import Generation, GenerationState
from .intake import PAIR_OPTIONS, Intake, batch_groups, group_by_image, query_text
from .model import LocateAnything
from .prefetch import Flattened, Prefetcher
from .host_staging import PinnedStaging
from .processor import DEFAULT_MAX_PIXELS, ImageProcessor, ProcessedImage
from .prompt import TASKS, PromptBuilder, check_task, load_chat_template, load_tokenizer
from .request import ImageJob, LocateResult, ResultMaker
from .status import engine_status

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float32": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class EngineOptions:
    """How an Engine runs. Every field is checked when the options are made (an OptionError names it).

    Limits that protect the process (the one table of them; docs/notes.md repeats it):

    | option            | default    | what it refuses (InputError, on the row's own result in report mode) |
    |-------------------|------------|------------------------------------------------------------------------|
    | max_image_pixels  | 64,000,000 | an image of more pixels, read from its header before decoding (bombs)  |
    | max_query_chars   | 16,384     | a query (categories joined by `</c>`) of more characters               |
    | max_rows          | 100,000    | a locate_batch / start call with more pairs (locate_stream streams any) |

    None switches a limit off. The prompt must also fit the model's context (max_position_embeddings).
    """

    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": bfloat16 on cuda, float32 on cpu
    # The worker's task (graphrt.prompt.TASKS): detect | detect_text | ground_single | ground_multi |
    # ground_text | region | point | detect_visual_prompt; a call or a pair may name another.
    task: str = "detect"
    prompt_format: str = "official"  # official: the worker's prompt text | jinja: chat_template.json
    generation: GenerationConfig = GenerationConfig()  # mode, max_new_tokens, sampling defaults, fixed_steps
    progress: bool = True  # progress bars on long work (loading, graph capture)
    graphs: str = "auto"  # auto: CUDA graphs on a GPU in fp16/bf16, else eager | on | off
    buckets: object = None  # capture.Buckets; None: derived from memory_gb (capture/plan.py)
    # GPU memory the engine may use, weights included (GiB): the graph buckets and the KV cache are
    # derived from it at load; given buckets are checked against it. None: no budget, default buckets.
    memory_gb: float | None = 24.0
    attention: str = "auto"  # varlen kernel of the graph path: auto | flash_attn | torch-fa2 | emulated
    strict: bool = False  # refuse fallbacks (another attention kernel, eager for a batch beyond the buckets)
    kernels: str = "auto"  # layer/step kernels of the graph path: auto (fused on CUDA) | fused (Triton) | torch
    sampling_graphs: bool = False  # also capture the sampling branch (needed for temperature > 0 on graphs)
    # Graph path: the first MTP round inside the prefill replay (merged, NVIDIA's loop: prompt + window
    # in one forward) or as the first step replay (separate). GRAPHRT_FIRST_ROUND overrides it (A/B).
    first_round: str = "merged"
    share_prefix: bool = True  # rows of one image prefill the shared prompt prefix once
    preprocess_workers: int = 0  # CPU threads preparing images for large batches; 0: min(8, cores)
    # One batch's equal-size images resized together on the GPU (one upload buffer, one set of
    # resize launches per size), and a stream's images prepared batch by batch (max_batch rows) on
    # a thread of their own; False: image by image on the CPU threads (the A/B of the change).
    batch_intake: bool = True
    # Host pixels of a batch (>= 4 MiB) go to the GPU through a kept ring of pinned blocks (4 x 8
    # MiB), copied out of PIL's memory by min(4, workers) threads (graphrt/host_staging.py); False:
    # one pageable copy per image on the calling thread (the A/B of the change).
    pinned_intake: bool = True
    eager_batch: int = 8  # rows per batch of the eager path (CPU, or what the graphs cannot take)
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS  # limits: see the table above
    max_query_chars: int | None = 16_384
    max_rows: int | None = 100_000
    fp8: str | None = None  # calibration file (graphrt calibrate): FP8 linears with its static scales
    fp8_scope: str = "lm"  # linears made FP8 (calib/apply.py): lm, vision, projector, -NAME; default the LM's

    def __post_init__(self):
        device = self.device
        if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or _is_cuda_index(device)):
            raise OptionError(f"device {device!r} is not supported; choose auto, cpu, cuda or cuda:N")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise OptionError(f"dtype {self.dtype!r} is not supported; choose auto, {', '.join(_DTYPES)}")
        if self.task not in TASKS:
            raise OptionError(f"task {self.task!r} is unknown; choose {', '.join(TASKS)}")
        if self.prompt_format not in ("official", "jinja"):
            raise OptionError(f"prompt_format {self.prompt_format!r}: choose official or jinja")
        if self.graphs not in ("auto", "on", "off"):
            raise OptionError(f"graphs {self.graphs!r}: choose auto, on or off")
        if self.first_round not in ("merged", "separate"):
            raise OptionError(f"first_round {self.first_round!r}: choose merged or separate")
        for name, least in (("preprocess_workers", 0), ("eager_batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise OptionError(f"{name} must be an integer >= {least}, found {value!r}")
        for name in ("batch_intake", "pinned_intake"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be True or False, found {getattr(self, name)!r}")
        for name in ("max_image_pixels", "max_query_chars", "max_rows"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise OptionError(f"{name} must be a positive integer or None (no limit), found {value!r}")
        if self.memory_gb is not None and (isinstance(self.memory_gb, bool) or not isinstance(self.memory_gb, numbers.Real)
                                           or not math.isfinite(self.memory_gb) or self.memory_gb <= 0):
            raise OptionError(f"memory_gb must be a positive number of GiB or None (no budget), found {self.memory_gb!r}")
        _check_generation(self.generation)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise OptionError(f"device {self.device!r}: CUDA is not available here (torch "
                                  f"{torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA); "
                                  "use device='cpu' or 'auto'")
            index = int(self.device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise OptionError(f"device {self.device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device(self.device)

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def workers(self) -> int:
        return self.preprocess_workers or min(8, os.cpu_count() or 1)


# Copy threads of the pinned intake: 4 measured fastest on the H100 host (32 frames of 640x480:
# 3.7 ms at 4, 4.9 at 8, 7.3 at 16, 6.7 pageable; benchmarks/preprocess_ab.py).
STAGE_THREADS = 4


class Engine:
    def __init__(self, checkpoint_dir: Path, cfg: ModelConfig, model: LocateAnything, tokenizer,
                 preprocessor: PreprocessorConfig, options: EngineOptions, chat_template: str):
        self.checkpoint_dir = checkpoint_dir
        self.cfg = cfg
        if options.fp8 is not None or getattr(model, "fp8_info", None) is not None:
            model = engine_model(model, checkpoint_dir, options.fp8, options.fp8_scope)
        self.model = model
        self.options = options
        self.preprocessor_config, self.chat_template = preprocessor, chat_template
        # On a GPU the pad-up resize runs there, bit-identical to PIL (graphrt/gpu_resize.py).
        cuda = model.device.type == "cuda"
        staging = PinnedStaging(model.device, min(STAGE_THREADS, options.workers())) \
            if cuda and options.pinned_intake else None
        self.processor = ImageProcessor(preprocessor, options.max_image_pixels,
                                        resize_device=model.device if cuda else None, staging=staging)
        # CPU threads for image preprocessing (started on first use)
        self._pool = ThreadPoolExecutor(options.workers(), thread_name_prefix="graphrt-prep")
        # A stream's next batch is prepared here: its own thread, since that work uses _pool's threads
        self._batch_thread = ThreadPoolExecutor(1, thread_name_prefix="graphrt-batch")
        if isinstance(tokenizer, Future) and tokenizer.done():
            tokenizer = tokenizer.result()  # a broken tokenizer fails here, before the capture
        self.eager, self.backend, self.memory_plan = _backends(model, options)
        self.runtime = self.backend.runtime  # the graph runtime, None when graphs are off (introspection)
        # from_pretrained loads the tokenizer (transformers' import, seconds) on a thread during the capture
        self.tokenizer = tokenizer.result() if isinstance(tokenizer, Future) else tokenizer
        self.prompts = PromptBuilder(self.tokenizer, cfg, chat_template, options.task, options.prompt_format)
        self.results = ResultMaker(cfg.tokens, self.prompts.decode)  # finished rows -> LocateResult

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, options: EngineOptions | None = None, **overrides) -> "Engine":
        """Load a checkpoint. Overrides are EngineOptions fields, or GenerationConfig fields
        (max_new_tokens=64, mode="hybrid", fixed_steps=2) applied to the generation defaults."""
        options = _override(options or EngineOptions(), overrides)
        root = Path(checkpoint_dir)
        if not root.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {root}")
        cfg = ModelConfig.from_pretrained(root)
        preprocessor = PreprocessorConfig.from_pretrained(root, cfg.vision)
        # The tokenizer needs nothing below: its load (mostly transformers' import) overlaps the rest.
        loader = ThreadPoolExecutor(1, thread_name_prefix="graphrt-tokenizer")
        tokenizer = loader.submit(load_tokenizer, root)
        loader.shutdown(wait=False)  # the thread ends with its one job
        device = options.resolved_device()
        model = LocateAnything(cfg, options.resolved_dtype(device), device)
        load_weights(model, root, cfg, progress=options.progress)
        model.eval()
        if options.fp8 is not None:  # in place: the bf16 copies of the FP8 linears are freed
            model = quantize_model(model, options.fp8, options.fp8_scope, inplace=True, checkpoint_dir=root)
        return cls(root, cfg, model, tokenizer, preprocessor, options, load_chat_template(root))

    def with_options(self, **overrides) -> "Engine":
        """Another engine on the same loaded weights with other options (A/B runs, graphs off...).
        Overrides as in from_pretrained; a graph runtime is captured anew when graphs are on."""
        options = _override(self.options, overrides)
        return Engine(self.checkpoint_dir, self.cfg, self.model, self.tokenizer, self.preprocessor_config, options,
                      self.chat_template)

    # ------------------------------------------------------------------ requests

    def locate(self, image, query=None, temperature: float | None = None, *, task: str | None = None,
               exemplar=None, exemplar_box=None, box_format: str = "normalized_1000", **generation) -> LocateResult:
        """One (image, query): the robot-loop call. On graphs: fixed buffers, no re-capture.

        `task`: one of graphrt.prompt.TASKS (default: EngineOptions.task); tasks without a phrase
        (detect_text, detect_visual_prompt) take query=None. Visual prompt: `exemplar` (an image or
        a list of images) and/or `exemplar_box` (x1, y1, x2, y2 on `image`, 0..1000 by default;
        box_format "normalized_1" or "pixel" otherwise), sent as image 2 (and 3...)."""
        extra = {"exemplar": exemplar, "exemplar_box": exemplar_box, "box_format": box_format}
        pair = (image, query, extra) if exemplar is not None or exemplar_box is not None else (image, query)
        return self.locate_batch([pair], None if temperature is None else [temperature], task=task,
                                 **generation)[0]

    def locate_many(self, image, queries, temperatures: list[float | None] | None = None, *,
                    task: str | None = None, **generation) -> list[LocateResult]:
        """Several queries about one image: one vision pass, one shared prompt prefix."""
        if isinstance(queries, str):
            raise InputError("locate_many takes a list of queries (use locate for one)")
        queries = _as_list(queries, "queries", "a list of queries")
        return self.locate_batch([(image, q) for q in queries], temperatures, task=task, **generation)

    def locate_batch(self, pairs, temperatures: list[float | None] | None = None, errors: str = "raise",
                     task: str | None = None, **generation) -> list[LocateResult]:
        """Answer (image, query) pairs, in their order (greedy unless a temperature is given).

        A pair may carry a third element, a dict with any of `task`, `exemplar`, `exemplar_box`,
        `box_format` (as in locate). `task` applies to pairs that name none.
        errors="raise": the first bad pair raises InputError. errors="report": a bad pair gets a
        result with `error` set, and every other pair is answered."""
        pairs = _as_list(pairs, "pairs", "a list of (image, query) pairs")
        self._check_rows(len(pairs), "locate_batch")
        out: list[LocateResult | None] = [None] * len(pairs)
        for i, result in self.locate_stream(pairs, temperatures, errors, task=task, **generation):
            out[i] = result
        return out

    def locate_stream(self, pairs, temperatures: list[float | None] | None = None, errors: str = "raise",
                      task: str | None = None, **generation):
        """Like locate_batch, but yields (index, result) as results complete (for progress bars)."""
        if errors not in ("raise", "report"):
            raise OptionError(f"errors must be 'raise' or 'report', found {errors!r}")
        pairs = _as_list(pairs, "pairs", "a list of (image, query) pairs")
        if not pairs:
            return
        task, gen, temps = self._call_settings(len(pairs), temperatures, task, generation)
        good = []
        for i, problem in enumerate(_pair_problems(pairs, temps, errors)):
            if problem is None:
                good.append(i)
            else:
                yield i, LocateResult.failed(query_text(pairs[i][1]) if _is_pair(pairs[i]) else "", problem)
        if not good:
            return
        backend = self._backend_for_config(gen, [temps[i] for i in good])
        groups = group_by_image(pairs, backend.max_batch, good)
        intake = self._intake()
        prepare = lambda indices: intake.prepare(pairs, indices, temps, gen, errors, task)  # noqa: E731
        if len(good) <= backend.max_batch and len(groups) <= backend.max_batch:
            # One batch: prepared inline (no thread hand-off on the latency path), equal-size
            # images resized together; encoded files decode on the CPU threads.
            jobs = []
            outcomes = self._prepare_batch(intake, pairs, groups, temps, gen, errors, task)
            for job, failures in outcomes:
                yield from failures
                if job is not None:
                    jobs.append(job)
            if jobs:
                backend = self._backend_for_batch(backend, jobs, gen)
                backend.run(jobs, gen)
                yield from self.results(jobs, backend.name)
            return
        if self.options.batch_intake:
            # A scan: batches of up to max_batch rows prepared as one (one upload, one set of resize
            # launches: what a one-batch call does) on one thread, the next batch while the GPU runs
            # this one; the scheduler then admits whole batches. Image by image on the pool instead,
            # the intake could not keep a B=32 640x480 scan fed (2026-11-25, H100: 124 img/s vs a
            # one-batch call's 147, FP8).
            batches = batch_groups(groups, backend.max_batch)
            prepare_batch = lambda b: self._prepare_batch(intake, pairs, b, temps, gen, errors, task)  # noqa: E731
            prepared = Flattened(Prefetcher(prepare_batch, batches, self._batch_thread, ahead=2))
        else:
            prepared = Prefetcher(prepare, groups, self._pool, ahead=2 * backend.max_batch)
        with prepared:
            yield from stream_prepared(prepared, backend, self.eager, gen, self.results, self._fallback)

    def start(self, pairs, temperatures: list[float | None] | None = None, task: str | None = None,
              **generation) -> Generation:
        """Vision and prefill of one batch; returns a Generation to advance, pause or finish."""
        pairs = _as_list(pairs, "pairs", "a list of (image, query) pairs")
        if not pairs:
            raise InputError("start() needs at least one (image, query) pair")
        self._check_rows(len(pairs), "start")
        task, gen, temps = self._call_settings(len(pairs), temperatures, task, generation)
        list(_pair_problems(pairs, temps, "raise"))
        intake = self._intake()
        groups = group_by_image(pairs, len(pairs))
        jobs = [job for job, _ in self._prepare_batch(intake, pairs, groups, temps, gen, "raise", task)]
        backend = self._backend_for_config(gen, temps, quiet=True)
        backend = self._backend_for_batch(backend, jobs, gen, quiet=True)
        return Generation(jobs, gen, backend.name, backend.start(jobs, gen), self.results)

    def resume(self, state: GenerationState) -> Generation:
        """Continue a paused generation (from pause(), or GenerationState.load)."""
        gen = state.generation_config()
        jobs = state.jobs()
        backend = {b.name: b for b in (self.eager, self.backend)}.get(state.backend)
        if backend is None:
            raise InputError(f"this state was paused on the {state.backend} backend, which this engine does not have")
        run = Generation(jobs, gen, backend.name, backend.resume(jobs, gen, state.tensors, state.extra), self.results)
        run.steps_done = state.steps_done
        return run

    def _intake(self) -> Intake:
        """Pairs to jobs with the engine's processor and prompts as they are now (scale-out replaces
        the processor, and makes views with other prompts)."""
        return Intake(self.cfg, self.processor, self.prompts, self.options.max_image_pixels,
                      self.options.max_query_chars)

    def _prepare_batch(self, intake: Intake, pairs, groups, temps, gen, errors: str, task: str) -> list[tuple]:
        """(job or None, failures) of each group of one batch. batch_intake with the resizes on the
        GPU: all groups at once (Intake.prepare_many; files and bytes decode on the CPU threads,
        decoded images are loaded inline: one thread measured faster for them); else group by
        group on the threads (PIL's host resizes run in parallel there)."""
        batched = isinstance(self.processor, ImageProcessor) and self.processor.resize_device is not None
        if not self.options.batch_intake or not batched:
            prepare = lambda indices: intake.prepare(pairs, indices, temps, gen, errors, task)  # noqa: E731
            return [prepare(groups[0])] if len(groups) == 1 else list(self._pool.map(prepare, groups))
        encoded = any(isinstance(pairs[g[0]][0], (str, Path, bytes, bytearray, memoryview)) for g in groups)
        return intake.prepare_many(pairs, groups, temps, gen, errors, task, pool=self._pool if encoded else None)

    def _call_settings(self, n: int, temperatures, task: str | None, generation: dict) -> tuple:
        """(task, GenerationConfig, one temperature per pair) of a call on n pairs."""
        task = check_task(task or self.options.task)
        gen = _check_generation(dataclasses.replace(self.options.generation, **generation))
        temps = _as_list(temperatures, "temperatures", "a list (one per pair)") if temperatures is not None \
            else [None] * n
        if len(temps) != n:
            raise InputError(f"temperatures must have one entry per pair ({len(temps)} for {n} pairs)")
        return task, gen, temps

    def _check_rows(self, n: int, call: str) -> None:
        limit = self.options.max_rows
        if limit is not None and n > limit:
            raise InputError(f"{call} got {n:,} pairs, over EngineOptions.max_rows = {limit:,}; "
                             "use locate_stream (it streams any number) or raise the limit")

    # ------------------------------------------------------------------ scheduling choice

    def _backend_for_config(self, gen: GenerationConfig, temps, quiet: bool = False) -> Backend:
        """The engine's backend when it takes these settings, else eager (saying why unless quiet)."""
        return self._choose(self.backend, self.backend.unsupported_config(gen, temps), quiet)

    def _backend_for_batch(self, backend: Backend, jobs: list[ImageJob], gen: GenerationConfig,
                           quiet: bool = False) -> Backend:
        """`backend` when it takes this batch, else eager."""
        return self._choose(backend, backend.unsupported(jobs, gen), quiet)

    def _choose(self, backend: Backend, reason: str | None, quiet: bool) -> Backend:
        if reason is None:
            return backend
        if not quiet:
            self._fallback(reason)
        return self.eager

    def _fallback(self, reason: str) -> None:
        """Say why the engine's backend is not used (or refuse, in strict mode)."""
        if self.options.strict:
            raise InputError(f"request does not fit the captured graphs: {reason}")
        log.warning("running eager: %s", reason)

    # ------------------------------------------------------------------ pieces

    def encode_images(self, images: list[ProcessedImage]) -> list[torch.Tensor]:
        """All images in one packed vision call; returns LM-width embeddings per image."""
        return encode_images(self.model, images)

    def status(self) -> dict:
        """What the engine runs with (checkpoint, device, backend, memory plan, kernels, GPU memory)."""
        return engine_status(self.model, self.checkpoint_dir, self.backend, self.memory_plan, self.options)


def _backends(model: LocateAnything, options: EngineOptions) -> tuple:
    """(eager backend, the engine's backend, capture.plan.MemoryPlan or None): the graph backend,
    captured now, when graphs are on; the eager one runs what the graphs cannot (everything when off)."""
    if options.kernels not in ("auto", "fused", "torch"):
        raise ValueError("kernels must be auto, fused or torch")
    graphs_off = _graphs_off(options, model)
    if options.kernels == "fused" and graphs_off:  # the eager path is plain torch only
        raise ValueError(f"kernels='fused' needs the graph runtime, which is off ({graphs_off})")
    eager = EagerBackend(model, options.eager_batch, options.share_prefix, graphs_off)
    if graphs_off is not None:
        return eager, eager, None
    memory_plan = plan_for_model(model, options.memory_gb, options.buckets)
    runtime = GraphRuntime(model, memory_plan.buckets, options.generation, options.attention,
                           options.strict, use_graphs=model.device.type == "cuda",
                           sampling_graphs=options.sampling_graphs, kernels=options.kernels,
                           first_round=options.first_round)
    runtime.warmup(progress=options.progress)
    return eager, GraphBackend(runtime, options.share_prefix), memory_plan


def _graphs_off(options: EngineOptions, model) -> str | None:
    """Why this engine runs without graphs (None: it captures them)."""
    half = model.dtype in (torch.float16, torch.bfloat16)
    if options.graphs == "on" or (options.graphs == "auto" and model.device.type == "cuda" and half):
        return None
    if options.graphs == "off":
        return "graphs off"
    return "no CUDA device" if model.device.type != "cuda" else "fp32 (graphs need fp16/bf16)"


def _override(options: EngineOptions, overrides: dict) -> EngineOptions:
    """EngineOptions fields, and GenerationConfig fields applied to options.generation."""
    overrides = dict(overrides)
    gen_fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(overrides) - gen_fields - {f.name for f in dataclasses.fields(EngineOptions)})
    if unknown:
        raise OptionError(f"unknown option(s) {', '.join(unknown)}: not an EngineOptions or GenerationConfig field")
    gen_over = {k: overrides.pop(k) for k in list(overrides) if k in gen_fields}
    if gen_over:
        overrides["generation"] = dataclasses.replace(overrides.get("generation", options.generation), **gen_over)
    return dataclasses.replace(options, **overrides)


def _is_cuda_index(device: str) -> bool:
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


def _is_pair(pair) -> bool:
    return isinstance(pair, (tuple, list)) and len(pair) in (2, 3)


def _as_list(items, name: str, wanted: str) -> list:
    """A caller's sequence as a list; a string, a mapping or a non-iterable is refused, not split."""
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
        raise InputError(f"{name} must be {wanted}, found {type(items).__name__}")
    return list(items)


def _check_generation(gen: GenerationConfig) -> GenerationConfig:
    """What the config dataclasses let through: a NaN or infinite default temperature."""
    if not math.isfinite(gen.sampling.temperature):
        raise OptionError(f"generation temperature must be finite and >= 0, found {gen.sampling.temperature!r}")
    return gen


def _pair_problems(pairs: list, temps: list, errors: str):
    """Per pair: None when it is well formed, else "pair i: problem" (errors="raise": InputError)."""
    for i, (pair, temperature) in enumerate(zip(pairs, temps)):
        problem = _pair_problem(pair) or _temperature_problem(temperature)
        if problem is not None and errors == "raise":
            raise InputError(f"pair {i}: {problem}")
        yield None if problem is None else f"pair {i}: {problem}"


def _pair_problem(pair) -> str | None:
    if not _is_pair(pair):
        shown = repr(pair) if len(repr(pair)) <= 60 else repr(pair)[:57] + "..."
        return f"expected an (image, query) or (image, query, options) pair, found {type(pair).__name__} {shown}"
    if len(pair) == 3 and pair[2] is not None and not isinstance(pair[2], dict):
        return (f"a pair's third element must be a dict of {', '.join(PAIR_OPTIONS)}, "
                f"found {type(pair[2]).__name__} {pair[2]!r}"[:200])
    return None


def _temperature_problem(temperature) -> str | None:
    if temperature is None:
        return None
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        return f"temperature must be a number or None, found {type(temperature).__name__} {temperature!r}"
    if not math.isfinite(temperature) or temperature < 0:
        return f"temperature must be finite and >= 0 (0: greedy), found {temperature!r}"
    return None

"""Public entry point: load a checkpoint once, then answer (image, query) requests with boxes.

    engine = Engine.from_pretrained("path/to/LocateAnything-3B")
    result = engine.locate("street.jpg", "person</c>car")
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .attention import sdpa
from .boxes import Detection, parse_detections
from .config import ModelConfig, PreprocessorConfig
from .errors import CheckpointError, InputError
from .generate import GenerationConfig, RowRequest, generate
from .model import LocateAnything
from .processor import ImageProcessor, ProcessedImage
from .prompt import PromptBuilder, load_chat_template, load_tokenizer
from .timing import StageClock
from .vision import vision_geometry

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float32": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class EngineOptions:
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": bfloat16 on cuda, float32 on cpu
    task: str = "detect"  # detect | ground_multi | ground_single (the model card's instructions)
    generation: GenerationConfig = GenerationConfig()
    progress: bool = True  # progress bars on long work (loading, graph capture)
    graphs: str = "auto"  # auto: CUDA graphs on a GPU in fp16/bf16, else eager | on | off
    buckets: object = None  # capture.Buckets; None: the defaults
    attention: str = "auto"  # varlen kernel of the graph path: auto | flash_attn | torch-fa2 | emulated
    strict: bool = False  # refuse fallbacks (another attention kernel, eager for a batch beyond the buckets)
    sampling_graphs: bool = False  # also capture the sampling branch (needed for temperature > 0 on graphs)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or auto")
        return _DTYPES[self.dtype]


@dataclass
class LocateResult:
    detections: list[Detection]
    text: str  # raw generated text, special tokens kept
    tokens: list[int]
    stop_reason: str  # "end" | "max_new_tokens"
    steps: int  # LM decode steps (MTP or AR)
    image_size: tuple[int, int]
    image_patches: int
    image_tokens: int
    prompt_tokens: int
    empty_frames: int = 0
    malformed: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["detections"] = [d.to_dict() for d in self.detections]
        return out


class Engine:
    def __init__(self, checkpoint_dir: Path, cfg: ModelConfig, model: LocateAnything, tokenizer,
                 preprocessor: PreprocessorConfig, options: EngineOptions, chat_template: str):
        self.checkpoint_dir = checkpoint_dir
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.processor = ImageProcessor(preprocessor)
        self.prompts = PromptBuilder(tokenizer, cfg, chat_template, options.task)
        self.runtime = None
        half = model.dtype in (torch.float16, torch.bfloat16)
        if options.graphs == "on" or (options.graphs == "auto" and model.device.type == "cuda" and half):
            from capture import Buckets, GraphRuntime

            self.runtime = GraphRuntime(model, options.buckets or Buckets(), options.generation, options.attention,
                                        options.strict, use_graphs=model.device.type == "cuda",
                                        sampling_graphs=options.sampling_graphs)
            self.runtime.warmup(progress=options.progress)
        elif options.graphs not in ("auto", "off"):
            raise ValueError("graphs must be auto, on or off")

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, options: EngineOptions | None = None, **overrides) -> "Engine":
        from weights.loader import load_weights

        options = dataclasses.replace(options or EngineOptions(), **overrides)
        root = Path(checkpoint_dir)
        if not root.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {root}")
        cfg = ModelConfig.from_pretrained(root)
        pre_path = root / "preprocessor_config.json"
        preprocessor = PreprocessorConfig()
        if pre_path.is_file():
            import json

            preprocessor = PreprocessorConfig.from_dict(json.loads(pre_path.read_text()))
        device = options.resolved_device()
        model = LocateAnything(cfg, options.resolved_dtype(device), device)
        load_weights(model, root, cfg, progress=options.progress)
        model.eval()
        return cls(root, cfg, model, load_tokenizer(root), preprocessor, options, load_chat_template(root))

    # ------------------------------------------------------------------ requests

    def locate(self, image, query, **generation) -> LocateResult:
        return self.locate_batch([(image, query)], **generation)[0]

    def locate_batch(self, pairs, temperatures: list[float | None] | None = None, **generation) -> list[LocateResult]:
        """Answer a list of (image, query) pairs in one batch (greedy unless a temperature is given)."""
        if not pairs:
            return []
        gen = dataclasses.replace(self.options.generation, **generation)
        temps = temperatures or [None] * len(pairs)
        if len(temps) != len(pairs):
            raise InputError("temperatures must have one entry per pair")
        clock = StageClock(self.model.device)
        images, image_of = self._unique_images([image for image, _ in pairs])
        merge = self.cfg.vision.merge_kernel_size
        prompts = [self.prompts.build(q, images[i].num_tokens(merge)) for (_, q), i in zip(pairs, image_of)]
        clock.lap("preprocess")
        rows = self._run_graphs(images, image_of, prompts, temps, gen) if self.runtime else None
        if rows is not None:
            clock.laps.update(self.runtime.last_timings_ms)
        else:
            embeds = self.encode_images(images)
            clock.lap("vision")
            requests = [RowRequest(p.ids, embeds[i], p.image_start, t) for p, i, t in zip(prompts, image_of, temps)]
            rows = generate(self.model, sdpa.lm_attention, requests, gen)
        clock.lap("generate")
        images = [images[i] for i in image_of]
        results = []
        for image, prompt, row in zip(images, prompts, rows):
            parsed = parse_detections(row.tokens, self.cfg.tokens, self.prompts.decode, image.size)
            results.append(LocateResult(
                detections=parsed.detections, text=self.prompts.decode(row.tokens), tokens=row.tokens,
                stop_reason=row.stop_reason, steps=row.steps, image_size=image.size,
                image_patches=image.num_patches, image_tokens=prompt.image_tokens, prompt_tokens=len(prompt.ids),
                empty_frames=parsed.empty_frames, malformed=parsed.malformed, timings_ms=dict(clock.laps),
            ))
        return results

    def _unique_images(self, sources) -> tuple[list[ProcessedImage], list[int]]:
        """Process each distinct image once (same path or same object), so it is encoded once."""
        images, index, image_of = [], {}, []
        for src in sources:
            key = str(src) if isinstance(src, (str, Path)) else id(src)
            if key not in index:
                index[key] = len(images)
                images.append(self.processor(src))
            image_of.append(index[key])
        return images, image_of

    def _run_graphs(self, images, image_of, prompts, temps, gen):
        """Rows from the CUDA graphs, or None (with the reason logged) when the batch does not fit."""
        from capture.runtime import GraphRow

        rows = [GraphRow(p, i, t) for p, i, t in zip(prompts, image_of, temps)]
        reason = self.runtime.unsupported(images, rows, gen)
        if reason is None:
            return self.runtime.run(images, rows, gen)
        if self.options.strict:
            raise InputError(f"batch does not fit the captured graphs: {reason}")
        log.warning("running eager: %s", reason)
        return None

    @torch.no_grad()
    def encode_images(self, images: list[ProcessedImage]) -> list[torch.Tensor]:
        """All images in one packed vision call; returns LM-width embeddings per image."""
        device = self.model.device
        geo = vision_geometry([im.grid for im in images], self.cfg.vision, device)
        pixels = torch.cat([im.pixels for im in images]).to(device)
        out = self.model.encode_images(pixels, geo, sdpa.vision_attention)
        merge = self.cfg.vision.merge_kernel_size[0] * self.cfg.vision.merge_kernel_size[1]
        return list(out.split([im.num_patches // merge for im in images]))

    def status(self) -> dict:
        params = sum(p.numel() for p in self.model.parameters())
        return {
            "checkpoint": str(self.checkpoint_dir),
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "parameters": params,
            "attention": self.runtime.kernel_name if self.runtime else "sdpa (dense mask, eager)",
            "graphs": len(self.runtime.graphs) if self.runtime else 0,
            "capture_s": round(self.runtime.capture_seconds, 1) if self.runtime else 0.0,
            "graph_pool_mib": round(self.runtime.pool_bytes / 2**20, 1) if self.runtime else 0.0,
            "buckets": dataclasses.asdict(self.runtime.buckets) if self.runtime else None,
            "generation": dataclasses.asdict(self.options.generation),
        }

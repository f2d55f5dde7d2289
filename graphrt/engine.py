"""Public entry point: load a checkpoint once, then answer (image, query) requests with boxes.

    engine = Engine.from_pretrained("path/to/LocateAnything-3B")
    result = engine.locate("street.jpg", "person</c>car")
"""

from __future__ import annotations

import dataclasses
import time
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
from .vision import vision_geometry

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float32": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class EngineOptions:
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": bfloat16 on cuda, float32 on cpu
    task: str = "detect"  # detect | ground_multi | ground_single (the model card's instructions)
    generation: GenerationConfig = GenerationConfig()
    progress: bool = True  # progress bars on long work (loading)

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
        clock = _Clock(self.model.device)
        images = [self.processor(image) for image, _ in pairs]
        merge = self.cfg.vision.merge_kernel_size
        prompts = [self.prompts.build(q, im.num_tokens(merge)) for (_, q), im in zip(pairs, images)]
        clock.lap("preprocess")
        embeds = self.encode_images(images)
        clock.lap("vision")
        temps = temperatures or [None] * len(pairs)
        if len(temps) != len(pairs):
            raise InputError("temperatures must have one entry per pair")
        requests = [RowRequest(p.ids, e, p.image_start, t) for p, e, t in zip(prompts, embeds, temps)]
        rows = generate(self.model, sdpa.lm_attention, requests, gen)
        clock.lap("generate")
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
            "attention": "sdpa (dense mask, eager)",
            "graphs": False,
            "generation": dataclasses.asdict(self.options.generation),
        }


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.laps: dict[str, float] = {}
        self.t = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = round((now - self.t) * 1000.0, 3)
        self.t = now

"""One engine of a scale-out replica (a Ray Data actor, a Ray Serve replica, the local server).

Images reach it already decoded and resized (a CPU worker or the HTTP handler did that), as a
`ProcessedImage` or its packed form (raw uint8 bytes, which Ray's object store and Arrow carry
without pickling tensors). Anything else (a path, bytes) the engine decodes itself as usual, so
a bad image fails with the same error row as on one machine.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..engine import Engine, EngineOptions
from ..processor import ImageProcessor, ProcessedImage
from ..prompt import PromptBuilder


class DecodedOrRaw:
    """The engine's image processor, passing images decoded elsewhere through untouched."""

    def __init__(self, processor: ImageProcessor):
        self.inner = processor
        self.cfg = processor.cfg

    def __call__(self, image) -> ProcessedImage:
        return image if isinstance(image, ProcessedImage) else self.inner(image)


def load_engine(checkpoint: str | Path, options: EngineOptions) -> Engine:
    engine = Engine.from_pretrained(checkpoint, dataclasses.replace(options, progress=False))
    engine.processor = DecodedOrRaw(engine.processor)
    return engine


def task_view(engine: Engine, task: str) -> Engine:
    """The engine asking with another task's instruction, on the same weights and graphs (the
    task only changes the prompt; Engine.with_options would capture a second set of graphs)."""
    if task == engine.options.task:
        return engine
    view = copy.copy(engine)
    view.options = dataclasses.replace(engine.options, task=task)
    view.prompts = PromptBuilder(engine.tokenizer, engine.cfg, engine.chat_template, task)
    return view


def pack(image: ProcessedImage) -> dict:
    """A decoded image as plain fields: uint8 pixels as bytes, grid and original size."""
    h, w, _ = image.rgb.shape
    return {"rgb": image.rgb.numpy().tobytes(), "rgb_h": h, "rgb_w": w, "grid_h": image.grid[0],
            "grid_w": image.grid[1], "width": image.size[0], "height": image.size[1]}


def unpack(fields: dict, processor: ImageProcessor | DecodedOrRaw) -> ProcessedImage:
    rgb = np.frombuffer(fields["rgb"], dtype=np.uint8).reshape(int(fields["rgb_h"]), int(fields["rgb_w"]), 3)
    cfg = processor.cfg
    return ProcessedImage(torch.from_numpy(rgb.copy()), (int(fields["grid_h"]), int(fields["grid_w"])),
                          (int(fields["width"]), int(fields["height"])), tuple(cfg.image_mean), tuple(cfg.image_std))

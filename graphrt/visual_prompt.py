"""Visual prompts (the worker's `detect_visual_prompt`): exemplar images sent after the query image.

An exemplar is an image (path, bytes, PIL, array), several images, or a box on the query image
that is cropped out. Box coordinates are normalized to 0..1000 by default (the model's own box
format), or 0..1, or pixels, and the crop follows the worker's `_crop_visual_prompt` exactly:
Python round() (half to even), then left/top clamped to [0, side-1] and right/bottom to
[left+1, side]. Unlike the worker, a box outside its range or with no area is refused with a
clear error instead of being silently clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from .errors import InputError

BOX_FORMATS = {"normalized_1000": 1000.0, "normalized_1": 1.0, "pixel": None}


@dataclass(frozen=True)
class VisualPrompt:
    """The exemplars of one request: a box on the query image (cropped first, as the worker does)
    and/or exemplar images, in that order."""
    images: tuple = ()
    box: tuple[float, float, float, float] | None = None
    box_format: str = "normalized_1000"

    @property
    def count(self) -> int:
        return len(self.images) + (self.box is not None)

    @classmethod
    def of(cls, exemplar=None, exemplar_box=None, box_format: str = "normalized_1000") -> "VisualPrompt | None":
        """From the API's keyword arguments; None when no exemplar is given."""
        if exemplar is None and exemplar_box is None:
            return None
        if box_format not in BOX_FORMATS:
            raise InputError(f"box_format must be one of {', '.join(BOX_FORMATS)}, not {box_format!r}")
        images = () if exemplar is None else tuple(exemplar) if isinstance(exemplar, (list, tuple)) else (exemplar,)
        if exemplar is not None and not images:
            raise InputError("exemplar list is empty")
        return cls(images, None if exemplar_box is None else parse_box(exemplar_box), box_format)


def parse_box(box) -> tuple[float, float, float, float]:
    """Four numbers (a sequence, or a string "x1,y1,x2,y2") -> floats, with clear errors."""
    raw = box.replace(",", " ").split() if isinstance(box, str) else box
    try:
        values = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        raise InputError(f"exemplar_box must be four numbers x1,y1,x2,y2; got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"exemplar_box must be four finite numbers x1,y1,x2,y2; got {box!r}")
    return values


def crop_box(image: Image.Image, box, box_format: str = "normalized_1000") -> Image.Image:
    """The exemplar a box on `image` selects, by the worker's rounding and clamping."""
    if box_format not in BOX_FORMATS:
        raise InputError(f"box_format must be one of {', '.join(BOX_FORMATS)}, not {box_format!r}")
    x1, y1, x2, y2 = parse_box(box)
    w, h = image.size
    scale = BOX_FORMATS[box_format]
    limits = (w, h, w, h) if scale is None else (scale,) * 4
    if any(v < 0 or v > lim for v, lim in zip((x1, y1, x2, y2), limits)):
        unit = "pixels of the query image" if scale is None else f"0..{scale:g}"
        raise InputError(f"exemplar_box {[x1, y1, x2, y2]} is outside {unit} ({box_format})")
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"exemplar_box {[x1, y1, x2, y2]} is empty (needs x1 < x2 and y1 < y2)")
    if scale is None:
        left, top, right, bottom = x1, y1, x2, y2
    else:
        left, top, right, bottom = x1 / scale * w, y1 / scale * h, x2 / scale * w, y2 / scale * h
    left = max(0, min(w - 1, round(left)))
    top = max(0, min(h - 1, round(top)))
    right = max(left + 1, min(w, round(right)))
    bottom = max(top + 1, min(h, round(bottom)))
    return image.crop((left, top, right, bottom)).convert("RGB")


def exemplar_inputs(query_image: Image.Image | None, prompt: VisualPrompt) -> list:
    """The exemplars in the worker's order: the box crop (a PIL image) first, then the given
    images as they were given (the caller's image loader reads and checks them)."""
    crops = [] if prompt.box is None else [crop_box(query_image, prompt.box, prompt.box_format)]
    return crops + list(prompt.images)

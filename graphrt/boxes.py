"""Generated token ids -> detections. Parsing works on ids (from the config), not on text, so it
holds for any tokenizer; labels come from the reference text that precedes the boxes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from .config import TokenIds


@dataclass(frozen=True)
class Detection:
    label: str | None  # reference text before the box (the category), None when absent
    kind: str  # "box" | "point"
    box_norm: tuple[int, ...]  # 0..1000: (x1, y1, x2, y2) for a box, (x, y) for a point
    box: tuple[float, ...]  # the same in pixels of the original image
    score: float | None = None  # the stock decoder produces no score
    # Points (`<box><x><y></box>`, the `point` task): the same (x, y) again, named, None for boxes.
    point: tuple[float, float] | None = None  # pixels of the original image
    point_norm: tuple[int, int] | None = None  # 0..1000

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for people: label, kind, pixel box, normalized box."""
        pixels = ", ".join(f"{v:.1f}" for v in self.box)
        return f"{self.label or '-'}: {self.kind} ({pixels}) px  norm {list(self.box_norm)}"


@dataclass(frozen=True)
class ParsedAnswer:
    detections: list[Detection]
    empty_frames: int  # `<box>none</box>`: the model says nothing matches
    malformed: int  # box frames that are neither a box, a point nor empty (kept in the raw text)


def parse_detections(ids: list[int], tokens: TokenIds, decode: Callable[[list[int]], str],
                     image_size: tuple[int, int]) -> ParsedAnswer:
    width, height = image_size
    out: list[Detection] = []
    label: str | None = None
    empty = malformed = 0
    i = 0
    while i < len(ids):
        tok = ids[i]
        if tok == tokens.im_end:
            break
        if tok == tokens.ref_start:
            end = _find(ids, tokens.ref_end, i + 1)
            label = decode(ids[i + 1 : end]).strip() or None
            i = end + 1
            continue
        if tok == tokens.box_start:
            end = _find(ids, tokens.box_end, i + 1, limit=6)
            body = ids[i + 1 : end]
            if end < len(ids) and body == [tokens.none]:
                empty += 1
            elif end < len(ids) and len(body) in (2, 4) and all(tokens.is_coord(t) for t in body):
                values = tuple(t - tokens.coord_start for t in body)
                scale = (width, height) * (len(values) // 2)
                pixels = tuple(v / 1000.0 * s for v, s in zip(values, scale))
                if len(values) == 4:
                    out.append(Detection(label, "box", values, pixels))
                else:
                    out.append(Detection(label, "point", values, pixels, point=pixels, point_norm=values))
            else:
                malformed += 1
            i = end + 1
            continue
        i += 1
    return ParsedAnswer(out, empty, malformed)


def _find(ids: list[int], token: int, start: int, limit: int | None = None) -> int:
    stop = len(ids) if limit is None else min(len(ids), start + limit)
    for j in range(start, stop):
        if ids[j] == token:
            return j
    return stop

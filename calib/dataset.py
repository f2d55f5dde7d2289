"""Calibration and held-out (image, query) pairs from a folder of images or a JSONL file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from graphrt.batch_io import IMAGE_SUFFIXES, read_jsonl

from .calibration import CalibrationError

# Queries paired with folder images: categories, phrases and multi-category queries, as users ask.
DEFAULT_QUERIES = (
    "person", "car", "dog", "cat", "chair", "bottle", "cup", "bicycle", "traffic light", "bus",
    "the red umbrella", "a man riding a horse", "person</c>car", "laptop</c>keyboard</c>mouse",
    "the tallest building", "a bird on the left", "potted plant", "book", "the white truck", "sign",
)


def folder_pairs(folder: str | Path, calib: int, held_out: int, queries=DEFAULT_QUERIES):
    """Images of the folder split in two disjoint sets (the held-out pairs never share an image
    with the calibration pairs); each set's images cycle through the queries."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"image folder not found: {root}")
    files = sorted(str(p) for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < (2 if held_out else 1):
        raise CalibrationError(f"{root}: needs at least {2 if held_out else 1} images, found {len(files)}")
    n_held = max(1, round(len(files) * held_out / (calib + held_out))) if held_out else 0
    n_held = min(n_held, len(files) - 1)
    cal_files, held_files = files[: len(files) - n_held], files[len(files) - n_held :]
    return _cycle(cal_files, calib, queries), _cycle(held_files, held_out, queries)


def _cycle(files: list[str], n: int, queries) -> list[tuple[str, str]]:
    if not files or n <= 0:
        return []
    n = min(n, len(files) * len(queries))  # distinct (image, query) pairs only
    return [(files[i % len(files)], queries[(i // len(files) + i) % len(queries)]) for i in range(n)]


def jsonl_pairs(path: str | Path, calib: int, held_out: int, image_root: str | Path | None = None):
    """The file's rows in order: the first `calib` for calibration, the next `held_out` held out."""
    if not Path(path).is_file():
        raise CalibrationError(f"JSONL file not found: {path}")
    rows = read_jsonl(path, image_root)
    bad = [f"line {r.line}: {r.error}" for r in rows if r.error]
    if bad:
        raise CalibrationError(f"{path}: unusable rows ({'; '.join(bad[:3])})")
    pairs = [(r.image, r.query) for r in rows]
    if not pairs:
        raise CalibrationError(f"{path}: no rows")
    return pairs[:calib], pairs[calib : calib + held_out]


def describe(source: str, pairs) -> dict:
    """What the calibration saw: source, count, and a hash of the (image, query) list."""
    items = [[str(im), str(q)] for im, q in pairs]
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
    return {"source": source, "pairs_sha256": digest, "images": len({i for i, _ in items}), "items": items}

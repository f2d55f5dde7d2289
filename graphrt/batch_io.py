"""Batch inputs and outputs of the CLI: JSONL or folder requests, JSONL or COCO results,
overlay images with the boxes drawn. Bad input rows become error records, never exceptions."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
_BOM = b"\xef\xbb\xbf"


@dataclass
class Request:
    line: int  # 1-based line of the JSONL file (or position in the folder listing)
    image: str | None
    query: object
    temperature: float | None = None
    error: str | None = None  # set when the row itself is unusable (not JSON, fields missing)
    task: str | None = None  # None: the CLI's --task
    exemplar: str | list | None = None  # visual prompt: exemplar image path(s)
    exemplar_box: object = None  # visual prompt: x1,y1,x2,y2 on the image
    box_format: str | None = None  # normalized_1000 (default) | normalized_1 | pixel

    def pair(self) -> tuple:
        """(image, query) or (image, query, options) for Engine.locate_stream."""
        opts = {k: v for k, v in (("task", self.task), ("exemplar", self.exemplar),
                                  ("exemplar_box", self.exemplar_box), ("box_format", self.box_format))
                if v is not None}
        return (self.image, self.query, opts) if opts else (self.image, self.query)


VISUAL_FIELDS = ("task", "exemplar", "exemplar_box", "box_format")


def read_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[Request]:
    """Rows {"image": path, "query": str or [str, ...], "temperature": optional, "task": optional,
    "exemplar": path or [paths] (optional), "exemplar_box": [x1, y1, x2, y2] (optional), "box_format":
    optional}. Relative image
    and exemplar paths are taken from `image_root` when given, else from the current directory.

    Each line is decoded on its own (UTF-8; a BOM at the start of the file and a CR before the
    newline are dropped), so a line in another encoding is an error row for that line only.
    Blank lines are skipped; line numbers count every line of the file, blank ones included."""
    data = Path(path).read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    out = []
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.append(Request(line_no, None, None, error=f"line is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                                          f"at column {exc.start + 1})"))
            continue
        if not text.strip():
            continue
        out.append(_parse_row(line_no, text, image_root))
    return out


def _parse_row(line_no: int, text: str, image_root) -> Request:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return Request(line_no, None, None, error=f"not JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(row, dict):
        return Request(line_no, None, None, error=f"row is not a JSON object (got {_json_type(row)})")
    visual = any(row.get(k) is not None for k in VISUAL_FIELDS)
    # A query may be left out only where a task or exemplar can stand for it (the engine then
    # checks that the task really needs no phrase).
    missing = [k for k in ("image", "query") if k not in row and not (k == "query" and visual)]
    if missing:
        return Request(line_no, _str_or_none(row.get("image")), row.get("query"), error=f"missing {' and '.join(missing)}")
    image, query, temp = row["image"], row.get("query"), row.get("temperature")
    if not isinstance(image, str) or not image:
        return Request(line_no, None, query, error=f"image must be a non-empty path string (got {_json_type(image)})")
    if image_root is not None and not Path(image).is_absolute():
        image = str(Path(image_root) / image)
    if not (query is None and visual) and (problem := _query_problem(query)) is not None:
        return Request(line_no, image, query, error=problem)
    if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp)
                             or temp < 0):
        return Request(line_no, image, query, error=f"temperature must be a finite number >= 0 (got {temp!r})")
    extra, bad = _visual_fields(row, image_root)
    if bad:
        return Request(line_no, image, query, error=bad)
    return Request(line_no, image, query, None if temp is None else float(temp), **extra)


def _query_problem(query) -> str | None:
    """Why a JSONL `query` value is unusable, or None. (Empty strings are left to the engine,
    which says "query is empty".)"""
    if isinstance(query, str) or (isinstance(query, list) and query and all(isinstance(q, str) for q in query)):
        return None
    return f"query must be a string or a non-empty list of strings (got {_json_type(query)})"


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list holding a non-string" if any(
            not isinstance(v, str) for v in value) else "a list"
    return "an object"


def _str_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _visual_fields(row: dict, image_root) -> tuple[dict, str | None]:
    """The optional task and visual-prompt fields of a JSONL row, or the reason they are unusable
    (the engine checks the values themselves: known task, box inside its range, readable exemplar)."""
    extra = {k: row[k] for k in VISUAL_FIELDS if row.get(k) is not None}
    for key in ("task", "box_format"):
        if key in extra and not isinstance(extra[key], str):
            return {}, f"{key} must be a string"
    if "exemplar" in extra:
        paths = extra["exemplar"] if isinstance(extra["exemplar"], list) else [extra["exemplar"]]
        if not paths or not all(isinstance(p, str) and p for p in paths):
            return {}, "exemplar must be an image path or a list of image paths"
        if image_root is not None:
            paths = [p if Path(p).is_absolute() else str(Path(image_root) / p) for p in paths]
        extra["exemplar"] = paths if isinstance(extra["exemplar"], list) else paths[0]
    box = extra.get("exemplar_box")
    if box is not None and not (isinstance(box, str) or (isinstance(box, list) and len(box) == 4
                                                          and all(isinstance(v, (int, float)) for v in box))):
        return {}, "exemplar_box must be [x1, y1, x2, y2] (numbers) or \"x1,y1,x2,y2\""
    return extra, None


def read_folder(folder: str | Path, query: str) -> list[Request]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [Request(i + 1, str(p), query) for i, p in enumerate(files)]


def result_record(req: Request, result) -> dict:
    """One output row: the request's line, image and query, then the result or its error."""
    record = {"line": req.line, "image": req.image, "query": req.query if result is None else result.query or req.query}
    error = req.error or (result.error if result is not None else "no result")
    if error:
        record["error"] = error
        return record
    d = result.to_dict()
    for key in ("task", "detections", "text", "stop_reason", "steps", "image_size", "image_tokens", "prompt_tokens",
                "exemplars", "empty_frames", "malformed", "timings_ms"):
        record[key] = d[key]
    return record


# The stock decoder gives no confidence; COCO evaluation needs a number to rank by.
COCO_SCORE = 1.0


def coco_results(records: list[dict]) -> list[dict]:
    """Detections in the COCO results format that pycocotools' `COCO.loadRes` reads: a list of
    {image_id, category_id, bbox [x, y, width, height] in pixels, score}. image_id is the file's
    stem when every image's stem is an integer (COCO's own file names, so the ids match the
    ground truth), else 1, 2, ... in input order; category_id numbers the labels (the query when
    a box has none) in order of first appearance, as listed by `coco_dataset`. A point is a
    zero-size box with "kind": "point" and COCO keypoints `[x, y, 2]`. Error rows have no detections (the CLI lists them on stderr)."""
    image_ids, category_ids = _coco_ids(records)
    out = []
    for rec in records:
        if "error" in rec:
            continue
        for det in rec["detections"]:
            item = {"image_id": image_ids[rec["image"]], "category_id": category_ids[_category(rec, det)],
                    "bbox": _xywh(det), "score": COCO_SCORE}
            if det["kind"] != "box":
                item.update(kind=det["kind"], **_keypoints(det))
            out.append(item)
    return out


def coco_dataset(records: list[dict]) -> dict:
    """A dataset-style document: images (id, file_name, width, height), categories (id, name),
    annotations (the results above with id, area, iscrowd and the input line), and the error
    rows apart. Its ids are the ones `coco_results` uses."""
    image_ids, category_ids = _coco_ids(records)
    images, annotations, errors, seen = [], [], [], set()
    for rec in records:
        if "error" in rec:
            errors.append({"line": rec["line"], "image": rec["image"], "error": rec["error"]})
            continue
        if rec["image"] not in seen:
            seen.add(rec["image"])
            w, h = rec["image_size"]
            images.append({"id": image_ids[rec["image"]], "file_name": rec["image"], "width": w, "height": h})
        for det in rec["detections"]:
            bbox = _xywh(det)
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[rec["image"]],
                                "category_id": category_ids[_category(rec, det)], "bbox": bbox,
                                "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0, "score": COCO_SCORE,
                                "kind": det["kind"], "line": rec["line"], **_keypoints(det)})
    categories = [{"id": i, "name": name} for name, i in category_ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories, "errors": errors}


def _coco_ids(records: list[dict]) -> tuple[dict[str, int], dict[str, int]]:
    good = [rec for rec in records if "error" not in rec]
    paths = list(dict.fromkeys(rec["image"] for rec in good))
    stems = [Path(p).stem for p in paths]
    if stems and all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        image_ids = {p: int(s) for p, s in zip(paths, stems)}
    else:
        image_ids = {p: i for i, p in enumerate(paths, 1)}
    category_ids: dict[str, int] = {}
    for rec in good:
        for det in rec["detections"]:
            category_ids.setdefault(_category(rec, det), len(category_ids) + 1)
    return image_ids, category_ids


def _category(rec: dict, det: dict) -> str:
    query = rec["query"] or rec.get("task") or "object"
    return det["label"] or ("</c>".join(query) if isinstance(query, list) else str(query))


def _xywh(det: dict) -> list[float]:
    if det["kind"] == "box":
        x1, y1, x2, y2 = det["box"]
        return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
    x, y = det["box"]
    return [round(x, 2), round(y, 2), 0.0, 0.0]


def _keypoints(det: dict) -> dict:
    """COCO keypoint style for a point: one visible keypoint (v=2) at the point."""
    if det["kind"] != "point":
        return {}
    x, y = det["box"]
    return {"keypoints": [round(x, 2), round(y, 2), 2], "num_keypoints": 1}


_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def draw_overlay(image_path: str, detections: list, out_path: Path) -> None:
    """The image with each box (or point) drawn and labelled."""
    with Image.open(image_path) as img:
        canvas = ImageOps.exif_transpose(img).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 250))
    for i, det in enumerate(detections):
        color = _COLORS[i % len(_COLORS)]
        label = det.label or ""
        if det.kind == "box":
            x1, y1, x2, y2 = det.box
            draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
            anchor = (x1 + width, y1 + width)
        else:
            x, y = det.box
            r = 3 * width
            draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=width)
            anchor = (x + r, y + r)
        if label:
            box = draw.textbbox(anchor, label)
            draw.rectangle(box, fill=color)
            draw.text(anchor, label, fill=(255, 255, 255))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)

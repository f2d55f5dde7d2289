"""Batch inputs and outputs of the CLI: JSONL or folder requests, JSONL or COCO-style results,
overlay images with the boxes drawn. Bad input rows become error records, never exceptions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


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
    optional}. Relative image and exemplar paths are taken from `image_root` when given, else from
    the current directory."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                out.append(Request(line_no, None, None, error=f"not JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(row, dict):
                out.append(Request(line_no, None, None, error="row is not a JSON object"))
                continue
            missing = [k for k in ("image",) if k not in row]
            if missing:
                out.append(Request(line_no, row.get("image"), row.get("query"), error=f"missing {' and '.join(missing)}"))
                continue
            image = row["image"]
            if not isinstance(image, str) or not image:
                out.append(Request(line_no, None, row.get("query"), error="image must be a non-empty path string"))
                continue
            if image_root is not None and not Path(image).is_absolute():
                image = str(Path(image_root) / image)
            temp = row.get("temperature")
            if temp is not None and (not isinstance(temp, (int, float)) or temp < 0):
                out.append(Request(line_no, image, row.get("query"), error="temperature must be a number >= 0"))
                continue
            extra, bad = _visual_fields(row, image_root)
            if bad:
                out.append(Request(line_no, image, row.get("query"), error=bad))
                continue
            out.append(Request(line_no, image, row.get("query"), temp, **extra))
    return out


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


def coco(records: list[dict]) -> dict:
    """COCO-style detections: images, categories (labels, or the query when a box has none),
    annotations with [x, y, width, height] pixel boxes; error rows are listed apart."""
    images, annotations, categories, errors = [], [], {}, []
    image_ids: dict[str, int] = {}
    for rec in records:
        if "error" in rec:
            errors.append({"line": rec["line"], "image": rec["image"], "error": rec["error"]})
            continue
        if rec["image"] not in image_ids:
            image_ids[rec["image"]] = len(images) + 1
            w, h = rec["image_size"]
            images.append({"id": image_ids[rec["image"]], "file_name": rec["image"], "width": w, "height": h})
        for det in rec["detections"]:
            name = det["label"] or str(rec["query"] or rec.get("task") or "object")
            cat = categories.setdefault(name, {"id": len(categories) + 1, "name": name})
            if det["kind"] == "box":
                x1, y1, x2, y2 = det["box"]
                bbox = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
            else:
                x, y = det["box"]
                bbox = [round(x, 2), round(y, 2), 0.0, 0.0]
            ann = {"id": len(annotations) + 1, "image_id": image_ids[rec["image"]], "category_id": cat["id"],
                   "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                   "score": det["score"], "kind": det["kind"], "line": rec["line"]}
            if det["kind"] == "point":  # COCO keypoint style: one visible keypoint (v=2) at the point
                ann.update(keypoints=[round(x, 2), round(y, 2), 2], num_keypoints=1)
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": list(categories.values()), "errors": errors}


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

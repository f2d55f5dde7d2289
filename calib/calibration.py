"""The calibration file: static activation scales per linear, keyed to one checkpoint.

    {"format": 1, "graphrt_version": ..., "date": ..., "checkpoint": {"path", "fingerprint", "method"},
     "statistic": "amax" | "p99.99", "dataset": {...what the calibration saw...},
     "linears": {"llm.layers.0.qkv_proj": {"in": K, "out": N, "amax": a, "percentile": p | null,
                                            "scale": s, "calls": c, "rows": r}, ...}}

`scale` is what the FP8 linear divides its input by (statistic / 448). A file is refused for a
checkpoint whose fingerprint differs: scales of another checkpoint would clip or waste range.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from graphrt.errors import GraphrtError

FORMAT = 1
FINGERPRINT_METHOD = "sha256-sampled-v1"
_CHUNK = 1 << 16
_SAMPLES = 64


class CalibrationError(GraphrtError):
    """A calibration file is missing, unreadable, or made for another checkpoint or model."""


def weight_files(checkpoint_dir: str | Path) -> list[Path]:
    from weights.loader import INDEX_FILE

    root = Path(checkpoint_dir)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{index}: unreadable index ({exc})") from exc
        files = sorted(root / n for n in names)
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files or not all(f.is_file() for f in files):
        raise CalibrationError(f"{root}: no complete set of safetensors weight files to fingerprint")
    return files


def checkpoint_fingerprint(checkpoint_dir: str | Path) -> str:
    """sha256 over each weight file's name, size, safetensors header (every tensor's name, dtype,
    shape, offsets) and 64 KiB read at 64 evenly spaced offsets plus the file's end. Reading all
    7.7 GB of the 3B release would take seconds at every FP8 load; the samples land in the tensor
    data of every shard, so another seed or a fine-tune changes the fingerprint. (An edit of a few
    bytes between samples would not: the method is named in the file.)"""
    h = hashlib.sha256()
    for path in weight_files(checkpoint_dir):
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            head = f.read(8)
            h.update(head)
            if len(head) == 8:
                h.update(f.read(min(int.from_bytes(head, "little"), 100 << 20)))
            for i in range(_SAMPLES + 1):
                f.seek(max(0, min(size - _CHUNK, (size - _CHUNK) * i // _SAMPLES)))
                h.update(f.read(_CHUNK))
    return h.hexdigest()


@dataclass
class Calibration:
    checkpoint_fingerprint: str
    linears: dict[str, dict]
    statistic: str = "amax"
    dataset: dict = field(default_factory=dict)
    checkpoint_path: str = ""
    graphrt_version: str = ""
    date: str = ""

    def scale(self, name: str) -> float:
        if name not in self.linears:
            raise CalibrationError(f"calibration has no scale for linear {name!r}")
        return float(self.linears[name]["scale"])

    def check(self) -> None:
        bad = [n for n, e in self.linears.items()
               if not (isinstance(e.get("scale"), (int, float)) and math.isfinite(e["scale"]) and e["scale"] > 0)]
        if bad:
            raise CalibrationError(f"calibration scales must be positive and finite; bad: {', '.join(bad[:5])}")

    def check_checkpoint(self, checkpoint_dir: str | Path, source: str = "calibration file") -> None:
        found = checkpoint_fingerprint(checkpoint_dir)
        if found != self.checkpoint_fingerprint:
            raise CalibrationError(
                f"{source} was made for another checkpoint (fingerprint {self.checkpoint_fingerprint[:12]}..., "
                f"from {self.checkpoint_path or 'an unnamed path'}); {checkpoint_dir} has {found[:12]}...: "
                f"run `graphrt calibrate --checkpoint {checkpoint_dir}` for it")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "graphrt_version": self.graphrt_version, "date": self.date,
                "checkpoint": {"path": self.checkpoint_path, "fingerprint": self.checkpoint_fingerprint,
                               "method": FINGERPRINT_METHOD},
                "statistic": self.statistic, "dataset": copy.deepcopy(self.dataset),
                "linears": copy.deepcopy(self.linears)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict, source: str = "calibration") -> "Calibration":
        try:
            if d.get("format") != FORMAT:
                raise CalibrationError(f"{source}: unknown calibration format {d.get('format')!r} (expected {FORMAT})")
            ck = d["checkpoint"]
            if ck.get("method") != FINGERPRINT_METHOD:
                raise CalibrationError(f"{source}: checkpoint fingerprint method {ck.get('method')!r} is not "
                                       f"{FINGERPRINT_METHOD}; calibrate again")
            out = cls(ck["fingerprint"], dict(d["linears"]), d.get("statistic", "amax"), d.get("dataset", {}),
                      ck.get("path", ""), d.get("graphrt_version", ""), d.get("date", ""))
        except (KeyError, TypeError, AttributeError) as exc:
            raise CalibrationError(f"{source}: not a graphrt calibration file (missing {exc})") from exc
        out.check()
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"calibration file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: not a readable JSON calibration file ({exc})") from exc
        if not isinstance(data, dict):
            raise CalibrationError(f"{path}: not a graphrt calibration file")
        return cls.from_dict(data, str(path))


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()

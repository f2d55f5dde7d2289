"""Output rows of a long run, appended as they finish, so a stopped run can resume.

On reopening, every complete JSON row of the file counts as done (its `line` is skipped by the
next run); a torn last row (the process died mid-write) is cut off and its line runs again."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[int] = set()
        self.records: list[dict] = []
        if self.path.is_file():
            self._recover()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def _recover(self) -> None:
        data = self.path.read_bytes()
        rows = data.splitlines(keepends=True)
        keep = 0  # bytes of complete rows
        for n, raw in enumerate(rows, start=1):
            try:
                rec = json.loads(raw) if raw.endswith(b"\n") else None
            except json.JSONDecodeError:
                rec = None
            if rec is None:
                if n < len(rows):  # only the last row can be torn; anything else is not our file
                    raise InputError(f"{self.path}: line {n} is not a JSON row; not a graphrt output to resume "
                                     "(give another --out)")
                break
            keep += len(raw)
            if isinstance(rec, dict) and isinstance(rec.get("line"), int):
                self.done.add(rec["line"])
                self.records.append(rec)
        if keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def write(self, record: dict) -> None:
        if record["line"] in self.done:
            return  # a retried task may hand back a row twice: keep the first
        self.done.add(record["line"])
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

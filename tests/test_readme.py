"""Every ```python block of README.md runs as written, against the tiny random checkpoint: the
checkpoint path `/path/to/LocateAnything-3B` is replaced by the tiny checkpoint's, and the images
the snippets name (street.jpg, kitchen.jpg) are generated in the working folder, and the engine
is opened with max_new_tokens=24 (random weights seldom emit the end token, so the default 2048
would make every answer 2048 tokens long and this CPU test take minutes). The boxes come from
random weights and are not checked; the test checks that the documented calls run."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from conftest import random_image
from graphrt import Engine

README = Path(__file__).resolve().parents[1] / "README.md"
CHECKPOINT_PLACEHOLDER = "/path/to/LocateAnything-3B"
IMAGES = {"street.jpg": (96, 64), "kitchen.jpg": (50, 80), "shelf.jpg": (80, 60), "can.png": (20, 30)}
MAX_NEW_TOKENS = 24


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_blocks():
    blocks = python_blocks()
    assert blocks and all(CHECKPOINT_PLACEHOLDER in b for b in blocks if "from_pretrained" in b)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load = Engine.from_pretrained.__func__
    monkeypatch.setattr(Engine, "from_pretrained", classmethod(
        lambda cls, path, options=None, **kw: load(cls, path, options, **{"max_new_tokens": MAX_NEW_TOKENS, **kw})))
    for i, (name, (w, h)) in enumerate(IMAGES.items()):
        random_image(w, h, seed=i).convert("RGB").save(tmp_path / name)
    code = python_blocks()[index].replace(CHECKPOINT_PLACEHOLDER, str(tiny_ckpt))
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")

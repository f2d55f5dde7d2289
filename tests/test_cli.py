"""The graphrt command: JSON output and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from safetensors.torch import load_file, save_file

from conftest import random_image


def cli(*args):
    return subprocess.run([sys.executable, "-m", "graphrt.cli", *args], capture_output=True, text=True, timeout=300)


def test_locate_json(tiny_ckpt, tmp_path):
    img = tmp_path / "a.png"
    random_image(90, 70).save(img)
    out = cli("locate", "--checkpoint", str(tiny_ckpt), "--image", str(img), "--query", "person</c>car", "--json",
              "--max-new-tokens", "12")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["image_size"] == [90, 70] and result["tokens"] and "detections" in result


def test_broken_checkpoint_names_tensors_without_traceback(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"))
    img = tmp_path / "a.png"
    random_image(30, 30).save(img)
    out = cli("locate", "--checkpoint", str(ckpt), "--image", str(img), "--query", "cat")
    assert out.returncode == 2
    assert "language_model.model.layers.1.mlp.up_proj.weight" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_inputs(tiny_ckpt, tmp_path):
    img = tmp_path / "a.png"
    random_image(30, 30).save(img)
    for args, words in [
        (["--image", str(tmp_path / "nope.png"), "--query", "cat"], "image not found"),
        (["--image", str(img), "--query", " "], "query is empty"),
    ]:
        out = cli("locate", "--checkpoint", str(tiny_ckpt), *args)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr
    out = cli("locate", "--checkpoint", str(tmp_path / "empty"), "--image", str(img), "--query", "cat")
    assert out.returncode == 2 and "not found" in out.stderr


def test_synth_checkpoint(tmp_path):
    out = cli("synth-checkpoint", "--preset", "tiny", "--out", str(tmp_path / "t"))
    assert out.returncode == 0 and (tmp_path / "t" / "model.safetensors").is_file()


def test_jsonl_with_broken_rows(tiny_ckpt, tiny_engine, tmp_path):
    """Every good row is answered (with the same tokens as Engine.locate), every bad row is
    reported with its line number, and the summary counts both."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    random_image(90, 70, seed=1).save(a)
    random_image(50, 110, seed=2).save(b)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = [
        json.dumps({"image": "a.png", "query": "cat"}),
        "this is not json",
        json.dumps({"image": "missing.png", "query": "cat"}),
        json.dumps({"image": "a.png", "query": ""}),
        json.dumps({"query": "no image"}),
        json.dumps({"image": "broken.png", "query": "dog"}),
        json.dumps({"image": "b.png", "query": ["person", "car"]}),
        json.dumps({"image": "a.png", "query": "dog"}),
    ]
    (tmp_path / "req.jsonl").write_text("\n".join(rows) + "\n")
    out = cli("locate", "--checkpoint", str(tiny_ckpt), "--jsonl", str(tmp_path / "req.jsonl"),
              "--image-root", str(tmp_path), "--max-new-tokens", "12", "--device", "cpu", "--out", str(tmp_path / "out.jsonl"),
              "--overlay", str(tmp_path / "overlay"))
    assert out.returncode == 0, out.stderr
    records = {r["line"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert sorted(records) == list(range(1, 9))
    assert sorted(k for k, r in records.items() if "error" in r) == [2, 3, 4, 5, 6]
    assert "3 answered, 5 errors (lines 2, 3, 4, 5, 6)" in out.stderr
    for line, (image, query) in {1: (a, "cat"), 7: (b, ["person", "car"]), 8: (a, "dog")}.items():
        want = tiny_engine.locate(image, query, max_new_tokens=12)
        assert records[line]["text"] == want.text
    assert len(list((tmp_path / "overlay").glob("*.png"))) == 3


def test_folder_to_coco(tiny_ckpt, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        random_image(40 + 10 * i, 50, seed=i).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image, not listed")
    out = cli("locate", "--checkpoint", str(tiny_ckpt), "--image", str(folder), "--query", "car",
              "--max-new-tokens", "8", "--format", "coco", "--out", str(tmp_path / "coco.json"))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "coco.json").read_text())
    assert [im["file_name"].rsplit("/", 1)[-1] for im in doc["images"]] == ["0.png", "1.png", "2.png"]
    assert doc["errors"] == [] and set(doc) == {"images", "annotations", "categories", "errors"}


def test_status(tiny_ckpt):
    out = cli("status", "--checkpoint", str(tiny_ckpt), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["device"] == "cpu" and status["graph_runtime"].startswith("off")

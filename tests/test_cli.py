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

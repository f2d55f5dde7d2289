"""The README's main command (the quickstart without arguments) and the camera-loop example run
on a CPU-only machine. Their boxes come from random weights and are not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=None if env is None else {**os.environ, **env})


def test_quickstart_caches_one_sharded_checkpoint_and_draws_no_progress_bar(tmp_path):
    """Two runs without a checkpoint: one cached tiny checkpoint (sharded, with its index) in the
    documented folder, reused by the second run; stderr (not a terminal here) stays free of
    progress-bar fragments."""
    env = {"GRAPHRT_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        out = run("examples/quickstart.py", "--device", "cpu", "--max-new-tokens", "12", env=env)
        assert out.returncode == 0, out.stderr
        assert "RANDOM checkpoint" in out.stdout and "timings ms" in out.stdout
        assert "\r" not in out.stderr and "%|" not in out.stderr and "it/s" not in out.stderr, out.stderr
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("tiny-") and str(cached[0]) in out.stdout
    index = json.loads((cached[0] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (cached[0] / "model.safetensors").exists()


def test_cache_folder_follows_xdg_when_no_override(tmp_path, monkeypatch):
    from weights import cache

    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.tiny_checkpoint_dir().parent == tmp_path / "xdg" / "graphrt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.tiny_checkpoint_dir().parent == tmp_path / "home" / ".cache" / "graphrt"


def test_camera_loop_prints_percentiles():
    out = run("examples/camera_loop.py", "--device", "cpu", "--frames", "3", "--warmup", "1", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert "P50" in out.stdout and "P99" in out.stdout


def test_tiny_checkpoint_is_written_once(tmp_path, monkeypatch):
    from weights import cache, synth

    calls = []
    write = synth.write_preset
    monkeypatch.setattr(synth, "write_preset", lambda *a, **kw: calls.append(a) or write(*a, **kw))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    first, second = cache.cached_tiny_checkpoint(), cache.cached_tiny_checkpoint()
    assert first == second and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left behind

"""The README's main command (the quickstart without arguments) and the camera-loop example run
on a CPU-only machine. Their boxes come from random weights and are not checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_quickstart_without_arguments():
    out = run("examples/quickstart.py", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "RANDOM checkpoint" in out.stdout and "timings ms" in out.stdout


def test_camera_loop_prints_percentiles():
    out = run("examples/camera_loop.py", "--device", "cpu", "--frames", "3", "--warmup", "1", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert "P50" in out.stdout and "P99" in out.stdout

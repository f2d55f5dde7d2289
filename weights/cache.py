"""The built-in tiny random checkpoint of the examples, written once into the user's cache.

Where: `$GRAPHRT_CACHE_DIR` when set, else `$XDG_CACHE_HOME/graphrt`, else `~/.cache/graphrt`;
the checkpoint is the folder `tiny-<graphrt version>-<fingerprint>` in it. The fingerprint hashes
the sources that decide the files' contents (presets, weight spec, writer, config), so a changed
writer gets a new folder instead of a stale one; older folders can be deleted at will.
The weights are random: the examples use this checkpoint to show the pipeline runs, nothing more.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import graphrt
from graphrt import config as _config

from . import presets as _presets, spec as _spec, synth as _synth

CACHE_ENV = "GRAPHRT_CACHE_DIR"
# Small shards, so that the examples go through the sharded loader (index + several files), the
# layout of the real checkpoint.
TINY_SHARD_BYTES = 1 << 19


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "graphrt"


def tiny_checkpoint_dir() -> Path:
    digest = hashlib.sha256()
    for module in (_presets, _spec, _synth, _config):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(str(TINY_SHARD_BYTES).encode())
    return cache_root() / f"tiny-{graphrt.__version__}-{digest.hexdigest()[:10]}"


def cached_tiny_checkpoint() -> Path:
    """The tiny random checkpoint (seed 0, sharded with an index), written on first use. Written
    into a temporary folder beside it and renamed, so a half-written folder is never used and two
    processes starting at once both end with a complete one."""
    target = tiny_checkpoint_dir()
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _synth.write_preset("tiny", work, seed=0, progress=False, max_shard_bytes=TINY_SHARD_BYTES)
        try:
            work.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target

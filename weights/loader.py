"""Fill preallocated model parameters from an official-layout safetensors checkpoint.

Single-file (`model.safetensors`) and sharded (`model.safetensors.index.json`) layouts are read
memory-mapped, one file at a time; tensors are converted to the parameter dtype/device on copy.
Before anything is copied the checkpoint is checked against the weight spec in both directions,
and every missing, unexpected or mis-shaped tensor is named in one error.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from graphrt.config import ModelConfig
from graphrt.errors import CheckpointError

from .spec import IGNORED_SUFFIXES, WeightEntry, weight_spec

INDEX_FILE = "model.safetensors.index.json"
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def checkpoint_tensors(checkpoint_dir: str | Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """name -> (file, shape) for every tensor of the checkpoint, read from the headers only."""
    root = Path(checkpoint_dir)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{index}: unreadable index ({type(exc).__name__}: {exc})") from exc
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names")
        files = sorted({root / f for f in weight_map.values()})
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{root}: no safetensors weights (model.safetensors or {INDEX_FILE})")
    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"{root}: shard {path.name} listed in the index is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensor = f.get_slice(name)
                    if tensor.get_dtype() not in _FLOAT_DTYPES:
                        raise CheckpointError(f"{path}: tensor {name} has dtype {tensor.get_dtype()}; "
                                              "weights must be floating point")
                    out[name] = (path, tuple(tensor.get_shape()))
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types (truncated header, bad JSON, ...)
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    return out


def check_layout(spec: list[WeightEntry], found: dict[str, tuple[Path, tuple[int, ...]]]) -> list[str]:
    """Problems of the checkpoint against the spec, as short phrases (empty when it matches)."""
    by_name = {e.name: e for e in spec}
    missing = [e.name for e in spec if e.required and e.name not in found]
    unexpected = [n for n in found if n not in by_name and not n.endswith(IGNORED_SUFFIXES)]
    wrong = [
        f"{n} {list(found[n][1])} (expected {list(by_name[n].shape)})"
        for n in found
        if n in by_name and tuple(found[n][1]) != by_name[n].shape
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8} more)" if len(names) > 8 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    return problems


def load_weights(model: torch.nn.Module, checkpoint_dir: str | Path, cfg: ModelConfig, progress: bool = True) -> None:
    spec = weight_spec(cfg)
    found = checkpoint_tensors(checkpoint_dir)
    problems = check_layout(spec, found)
    if problems:
        raise CheckpointError(f"{checkpoint_dir} does not match the LocateAnything layout: " + "; ".join(problems))

    params = dict(model.named_parameters())
    _check_coverage(spec, params)
    by_file: dict[Path, list[WeightEntry]] = defaultdict(list)
    for entry in spec:
        if entry.param is not None and entry.name in found:
            by_file[found[entry.name][0]].append(entry)

    bar = tqdm(total=sum(len(v) for v in by_file.values()), desc="loading weights", unit="tensor",
               disable=not progress, leave=False)
    with torch.no_grad():
        for path, entries in sorted(by_file.items()):
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for entry in entries:
                        dst = params[entry.param]
                        if entry.row_offset is not None:
                            dst = dst.narrow(0, entry.row_offset, entry.shape[0])
                        dst.copy_(f.get_tensor(entry.name))
                        bar.update()
            except Exception as exc:  # the file changed or broke since its header was read
                raise CheckpointError(f"{path}: reading tensors failed ({exc})") from exc
    bar.close()


def _check_coverage(spec: list[WeightEntry], params: dict[str, torch.nn.Parameter]) -> None:
    """Every model parameter is filled exactly once by the spec (guards the table itself)."""
    rows: dict[str, int] = defaultdict(int)
    for e in spec:
        if e.param is None:
            continue
        if e.param not in params:
            raise CheckpointError(f"weight spec names unknown parameter {e.param}")
        rows[e.param] += e.shape[0] if e.row_offset is not None else params[e.param].shape[0]
    uncovered = [n for n, p in params.items() if rows.get(n, 0) != p.shape[0]]
    if uncovered:
        raise CheckpointError(f"weight spec does not cover parameters: {', '.join(uncovered[:8])}")

"""Swap a loaded model's bf16 linears for FP8Linear, with the static scales of a calibration file.

Scope (which linears become FP8) is a comma- (or "+"-) separated list: groups `lm` (the Qwen2
decoder's qkv/o/gate_up/down), `vision` (MoonViT blocks), `projector`; an item starting with `-`
removes every linear whose name contains the rest (e.g. `lm,vision,-down_proj`, `lm,-llm.layers.0.`);
at most one mode item: `w8a8` (static activation scales, the default), `w8a8-dynamic` (per-token
scales at run time), `w8a16` (weight-only FP8: bf16 activations), `w8a16-int8` (weight-only
int8, per-channel: the same bytes, ~10x less weight error variance than e4m3), e.g. `lm+w8a16`.
Never FP8: token embeddings / LM head (not graphrt Linears; the tied head is read by F.linear),
the patch embedding (a conv) and the norms.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from graphrt.layers import Linear

from .calibration import Calibration, CalibrationError
from .fp8_linear import FP8Linear

GROUPS = {"lm": "llm.layers.", "vision": "vision.blocks.", "projector": "projector."}
# Measured 2026-11-24 (docs/notes.md, "FP8 vision linears without extra passes"): vision in FP8 now
# takes 19 ms off a B=32 call (its producers write e4m3), but on the random 3B it moves the window
# top-1 agreement with bf16 from 90% to 43-55%: opt-in (`lm,vision`) until a real checkpoint is measured.
DEFAULT_SCOPE = "lm"


@dataclass
class FP8Info:
    """What was quantized; kept on the model as `model.fp8_info`."""
    calibration: str
    scope: str
    linears: list[str] = field(default_factory=list)
    kept_bf16: list[str] = field(default_factory=list)
    fp8_weight_bytes: int = 0
    bf16_base: nn.Module | None = None  # the unquantized model when this one shares its other weights

    device: str = "cpu"

    def summary(self) -> dict:
        from .fp8_linear import gemm_mode
        from .quantize import quantizer_name

        act, fmt = mode(self.scope)
        name = {"static": "W8A8 static scales", "dynamic": "W8A8 per-token scales",
                "none": "W8A16 weight-only"}[act] + f", {fmt} weights"
        return {"calibration": self.calibration, "scope": self.scope, "mode": name, "fp8_linears": len(self.linears),
                "bf16_linears": len(self.kept_bf16), "fp8_weight_mib": round(self.fp8_weight_bytes / 2**20, 1),
                "gemm": gemm_mode(torch.device(self.device).type),
                "activation_quantizer": quantizer_name(torch.device(self.device))}


def linear_modules(model: nn.Module) -> dict[str, Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Linear)}


# scope item -> (FP8Linear.act, weight format)
MODES = {"w8a8": ("static", "e4m3"), "w8a8-dynamic": ("dynamic", "e4m3"), "w8a16": ("none", "e4m3"),
         "w8a16-int8": ("none", "int8")}


def _items(scope: str) -> list[str]:
    # "+" separates items too, so a scope fits in comma-separated option strings (benchmarks/latency.py)
    return [s.strip() for s in scope.replace("+", ",").split(",") if s.strip()]


def mode(scope: str) -> tuple[str, str]:
    """(activation mode, weight format) a scope names: w8a8 (static scales, the default),
    w8a8-dynamic, w8a16 (e4m3 weights only), w8a16-int8 (int8 weights only)."""
    modes = [MODES[i] for i in _items(scope) if i in MODES]
    if len(modes) > 1:
        raise ValueError(f"fp8 scope {scope!r} names more than one mode ({', '.join(MODES)})")
    return modes[0] if modes else MODES["w8a8"]


def act_mode(scope: str) -> str:
    return mode(scope)[0]


def select(names, scope: str) -> list[str]:
    items = [i for i in _items(scope) if i not in MODES]
    if not items:
        raise ValueError(f"fp8 scope {scope!r} names no linears (use {', '.join(GROUPS)})")
    prefixes, drops = [], []
    for item in items:
        if item.startswith("-"):
            drops.append(item[1:])
        elif item in GROUPS:
            prefixes.append(GROUPS[item])
        else:
            raise ValueError(f"unknown fp8 scope item {item!r}: use {', '.join(GROUPS)}, -SUBSTRING or a mode "
                             f"({', '.join(MODES)})")
    return [n for n in names if any(n.startswith(p) for p in prefixes) and not any(d in n for d in drops)]


def missing_scales_message(source: str, scope: str, missing: list[str]) -> str:
    """Which groups of the scope the calibration file has no scales for (e.g. a file from before the
    vision linears were recorded, used with a scope naming `vision`), and what to do about it."""
    parts = []
    for group, prefix in GROUPS.items():
        names = [n for n in missing if n.startswith(prefix)]
        if names:
            parts.append(f"group '{group}' ({len(names)} linears, e.g. {names[0]})")
    other = [n for n in missing if not any(n.startswith(p) for p in GROUPS.values())]
    if other:
        parts.append(f"{len(other)} other linears (e.g. {other[0]})")
    return (f"{source} has no input scales for {'; '.join(parts)} that fp8 scope {scope!r} makes FP8: "
            f"calibrate again (`graphrt calibrate`, which records every linear) or leave those groups "
            f"out of the scope")


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def shared_copy(model: nn.Module) -> nn.Module:
    """A structural copy of the model whose parameters and buffers are the original tensors."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    info = getattr(model, "fp8_info", None)
    if info is not None:  # shared too: it holds the bf16 base, which must not be deep-copied
        memo[id(info)] = info
    return copy.deepcopy(model, memo)


@torch.no_grad()
def quantize_model(model: nn.Module, calibration: Calibration | str | Path, scope: str = DEFAULT_SCOPE,
                   inplace: bool = False, checkpoint_dir: str | Path | None = None) -> nn.Module:
    """The model with the linears of `scope` replaced by FP8Linear. inplace=False keeps `model`
    untouched and returns a copy sharing every other tensor (for A/B runs on one set of weights);
    inplace=True frees the bf16 weights of the replaced linears. `checkpoint_dir`, when given, must
    be the checkpoint the calibration was made for."""
    source = str(calibration) if not isinstance(calibration, Calibration) else "calibration"
    calib = calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)
    if checkpoint_dir is not None:
        calib.check_checkpoint(checkpoint_dir, source)
    if getattr(model, "fp8_info", None) is not None:
        raise CalibrationError("this model is already FP8; quantize its bf16 base instead")
    device = next(model.parameters()).device
    if device.type == "cuda" and next(model.parameters()).dtype not in (torch.bfloat16,):
        raise CalibrationError("FP8 linears on CUDA need a bfloat16 model (dtype=bfloat16)")
    linears = linear_modules(model)
    chosen = select(linears, scope)
    act, fmt = mode(scope)
    missing = [n for n in chosen if n not in calib.linears]
    mismatched = [n for n in chosen if n in calib.linears and
                  (calib.linears[n].get("in"), calib.linears[n].get("out")) != (linears[n].weight.shape[1],
                                                                               linears[n].weight.shape[0])]
    if missing and not mismatched:
        raise CalibrationError(missing_scales_message(source, scope, missing))
    if missing or mismatched:
        raise CalibrationError(f"{source} does not fit this model: "
                               + (f"no scales for {', '.join(missing[:3])}" if missing else "")
                               + (f"{'; ' if missing else ''}other shapes for {', '.join(mismatched[:3])}"
                                  if mismatched else ""))
    target = model if inplace else shared_copy(model)
    info = FP8Info(source, scope, kept_bf16=[n for n in linears if n not in chosen],
                   bf16_base=None if inplace else model, device=str(device))
    for name in chosen:
        fp8 = FP8Linear.from_linear(linears[name], calib.scale(name), name, act, fmt)
        _set_module(target, name, fp8)
        info.linears.append(name)
        info.fp8_weight_bytes += fp8.weight_fp8.numel()
    target.fp8_info = info
    return target


def bf16_base(model: nn.Module) -> nn.Module | None:
    """The unquantized model behind an FP8 copy (None for a bf16 model or an in-place FP8 one)."""
    info = getattr(model, "fp8_info", None)
    return None if info is None else info.bf16_base


def engine_model(model: nn.Module, checkpoint_dir, fp8: str | None, scope: str) -> nn.Module:
    """The model an engine with these options runs: the bf16 model, or its FP8 version (reused
    when it already is one for the same file and scope, else built as a shared copy)."""
    info = getattr(model, "fp8_info", None)
    if info is not None and fp8 is not None and info.calibration == str(fp8) and info.scope == scope:
        return model
    if info is not None:
        if info.bf16_base is None:
            raise CalibrationError("this engine's linears were quantized to FP8 in place at load; load the "
                                   "checkpoint again for bf16 or another calibration")
        model = info.bf16_base
    if fp8 is None:
        return model
    return quantize_model(model, fp8, scope, inplace=False, checkpoint_dir=checkpoint_dir)

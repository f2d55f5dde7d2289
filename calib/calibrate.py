"""Run the unquantized model over (image, query) pairs and record every linear's input range.

The engine's eager path runs vision, prefill and a fixed number of MTP steps per pair, so the
scales cover all three kinds of input each linear sees (image patches, prompt tokens, step
windows). Per call, a pre-hook records max|x| (and, with a percentile, that percentile of |x|)
as device tensors; the maxima over calls are read back once at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .apply import linear_modules
from .calibration import Calibration, checkpoint_fingerprint, now_iso
from .quantize import FP8_MAX

_QUANTILE_LIMIT = 1 << 24  # torch.quantile's input limit; larger inputs are subsampled with a stride


class RangeObserver:
    """Forward pre-hooks on every graphrt Linear of a model: running max of max|x| (and of a
    percentile of |x|) over calls, as device tensors."""

    def __init__(self, model, percentile: float | None = None):
        if percentile is not None and not 0 < percentile <= 100:
            raise ValueError("percentile must be in (0, 100]")
        self.percentile = percentile
        self.shapes, self.amax, self.pmax, self.calls, self.rows = {}, {}, {}, {}, {}
        self.handles = []
        for name, mod in linear_modules(model).items():
            self.shapes[name] = (mod.weight.shape[1], mod.weight.shape[0])
            self.calls[name] = self.rows[name] = 0
            self.handles.append(mod.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name):
        def hook(_module, args):
            x = args[0].detach()
            a = x.abs().amax().float()
            self.amax[name] = a if name not in self.amax else torch.maximum(self.amax[name], a)
            if self.percentile is not None:
                flat = x.reshape(-1)
                if flat.numel() > _QUANTILE_LIMIT:
                    flat = flat[:: -(-flat.numel() // _QUANTILE_LIMIT)]
                p = torch.quantile(flat.abs().float(), self.percentile / 100.0)
                self.pmax[name] = p if name not in self.pmax else torch.maximum(self.pmax[name], p)
            self.calls[name] += 1
            self.rows[name] += x.numel() // x.shape[-1]
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def linears(self) -> dict[str, dict]:
        seen = [n for n in self.shapes if n in self.amax]
        amax = torch.stack([self.amax[n] for n in seen]).tolist() if seen else []
        pmax = torch.stack([self.pmax[n] for n in seen]).tolist() if self.percentile is not None and seen else []
        out = {}
        for i, name in enumerate(seen):
            stat = pmax[i] if pmax else amax[i]
            stat = stat if stat > 0 else 1.0  # an all-zero input: any scale is exact
            k, n = self.shapes[name]
            out[name] = {"in": k, "out": n, "amax": amax[i], "percentile": pmax[i] if pmax else None,
                         "scale": stat / FP8_MAX, "calls": self.calls[name], "rows": self.rows[name]}
        return out


def calibrate(engine, pairs: list[tuple], steps: int = 2, batch: int = 8, percentile: float | None = None,
              progress: bool | None = None, dataset: dict | None = None) -> Calibration:
    """Scales for every linear of `engine.model` (bf16, unquantized) from the given pairs, run
    eagerly in batches with `steps` MTP steps per pair (end tokens ignored)."""
    if getattr(engine.model, "fp8_info", None) is not None:
        raise ValueError("calibrate the bf16 model, not an FP8 one")
    if not pairs:
        raise ValueError("calibration needs at least one (image, query) pair")
    eager = engine.with_options(graphs="off", fixed_steps=steps, progress=False, eager_batch=batch)
    observer = RangeObserver(eager.model, percentile)
    # The fused vision tower runs fc0 inside a GEMM epilogue, past its module hook: observe unfused.
    vision, fused = eager.model.vision, eager.model.vision.fused
    vision.fused = False
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with tqdm(total=len(pairs), unit="pair", desc="calibrate", disable=not show, file=sys.stderr) as bar:
            for start in range(0, len(pairs), batch):
                chunk = pairs[start : start + batch]
                eager.locate_batch(chunk)
                bar.update(len(chunk))
    finally:
        observer.close()
        vision.fused = fused
    linears = observer.linears()
    unseen = [n for n in observer.shapes if n not in linears]
    if unseen:
        raise RuntimeError(f"calibration never ran linears {', '.join(unseen[:3])}")
    import graphrt

    ds = dict(dataset or {})
    ds.update({"pairs": len(pairs), "steps_per_pair": steps, "batch": batch})
    ds.setdefault("items", [[str(im) if isinstance(im, (str, Path)) else "<in-memory image>", str(q)]
                            for im, q in pairs])
    statistic = "amax" if percentile is None else f"p{percentile:g}"
    return Calibration(checkpoint_fingerprint(engine.checkpoint_dir), linears, statistic, ds,
                       str(engine.checkpoint_dir), graphrt.__version__, now_iso())

"""The residual add + RMSNorm of the MTP step folded into the swap-AB GEMMs on either side of it.

A decoder layer on the fused path runs ... o GEMM -> add_rms_norm -> gate/up GEMM ... down GEMM ->
(next layer) add_rms_norm -> qkv GEMM: each norm is a launch on the critical path between two
GEMMs (73 per step). Where both neighbours run the swap-AB kernel (swap_ab_gemm.py), the norm
folds into them:

    producer (o_proj; down_proj, except the last layer's)  epilogue: residual r + round(y) -> the new
        residual, and per (output tile, token) the fp32 sum of squares of it -> ss [N / BLOCK_W, T]
        (a fixed-order tile reduction; with split-K only the program finishing the tile does this)
    consumer (gate/up; the next layer's qkv)  prologue: 1 / rms per token from ss, summed in tile
        order; each residual tile becomes ((r * inv) rounded * w) rounded before the MMA

so the pair computes what add_rms_norm + the plain GEMM compute (residual_rms_norm_row's
roundings), except that the fp32 sum of squares is added in another order (bit-equal where the
sum is exact; otherwise the inverse RMS may differ in its last bit). Every replay gives the same
bits: no atomics on the sums. The first layer's input norm (no delta yet) and the final norm (its
row index) stay the separate kernel.

Measured slower (H100, random 3B, 2026-11-25, docs/notes.md "Norms folded into the step GEMMs"):
the B=1 step 3.227 -> 3.673 ms folded, B=32 6.400 -> 6.882; the layers' GEMM chain 2.50 -> 2.93 ms
at 12 rows. The consumer's in-loop normalization sends each activation tile through registers
into a single-buffered shared tile, so its wgmma waits for completion every K step (the plain
kernel keeps two in flight), which costs more than the norm launches it removes. So the norm
kernel stays the default; the fold is opt-in.

`GRAPHRT_STEP_NORM` (A/B runs): `kernel` (default: the separate norm kernel), `auto` (per step row
count at warm-up: fold where both neighbours of a norm are swap-AB picks and the layers' folded
GEMM chain measures faster than the chain with the norm kernels, timed in CUDA graphs like the GEMM
picks), `fold` (fold wherever both neighbours are swap-AB, whatever that timing says).
"""

from __future__ import annotations

import logging
import os
import time
from typing import NamedTuple

import torch

from ..layers import Linear
from ..timing import graph_call_ms
from .layer_ops import add_rms_norm
from .skinny_gemm import choose, gate_up_silu, linear
from .swap_ab_gemm import SwabConfig, swab_matmul, tma_ok

log = logging.getLogger(__name__)

MODES = ("kernel", "auto", "fold")


class SumSquares(NamedTuple):
    """What a producer leaves instead of a delta: the residual is already summed, and these are its
    rows' partial sums of squares, parts [tiles, T] fp32."""
    parts: torch.Tensor


class FoldPlan(NamedTuple):
    mid: bool  # o_proj -> post-attention norm -> gate/up
    edge: bool  # down_proj -> next layer's input norm -> qkv


NO_FOLD = FoldPlan(False, False)


def mode() -> str:
    m = os.environ.get("GRAPHRT_STEP_NORM", "kernel")
    if m not in MODES:
        raise ValueError(f"GRAPHRT_STEP_NORM must be kernel, auto or fold, not {m!r}")
    return m


def _runnable(cfg: SwabConfig, x: torch.Tensor) -> SwabConfig:
    return SwabConfig(*cfg[:6], False) if cfg[6] and not tma_ok(x) else cfg


def produce(h: torch.Tensor, module, x: torch.Tensor, cfg: SwabConfig | None = None) -> tuple[torch.Tensor, SumSquares]:
    """x + module(h) (the new residual, in the model dtype) and its sums of squares, in one swap-AB GEMM."""
    cfg = cfg or choose(h.shape[0], module.weight, module.bias is not None, False)
    y, ss = swab_matmul(h, module.weight, module.bias, False, _runnable(cfg, h), residual=x)
    return y, SumSquares(ss)


def consume(x: torch.Tensor, ss: SumSquares, norm, module, silu: bool = False,
            cfg: SwabConfig | None = None) -> torch.Tensor:
    """module(rmsnorm(x) * norm.weight) (with silu: silu(gate) * up) in one swap-AB GEMM, x the residual."""
    cfg = cfg or choose(x.shape[0], module.weight, module.bias is not None, silu)
    return swab_matmul(x, module.weight, module.bias, silu, _runnable(cfg, x), norm=(norm.weight, ss.parts, norm.eps))


def normed_linear(x: torch.Tensor, pending, norm, module, silu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual, module(norm(residual))) from the residual x and what is pending on it: None (x is
    the residual), a delta to add (the norm kernel adds it), or a producer's SumSquares (folded)."""
    if isinstance(pending, SumSquares):
        return x, consume(x, pending, norm, module, silu)
    x, h = add_rms_norm(x, pending, norm.weight, norm.eps)
    return x, gate_up_silu(h, module) if silu else linear(h, module)


def residual_linear(h: torch.Tensor, module, x: torch.Tensor, fold: bool) -> tuple[torch.Tensor, object]:
    """(residual, pending) after module(h) is added to the residual x: folded, the new residual and
    its SumSquares; else x and the delta module(h), left to the next norm kernel."""
    if fold:
        return produce(h, module, x)
    return x, linear(h, module)


plans: dict[tuple, FoldPlan] = {}  # (m, shapes, dtype, pdl, gemm mode, norm mode) -> plan
timings: dict[tuple, dict] = {}  # {"kernel": ms, "fold": ms} of the layers' GEMM chain, where measured
plan_seconds = 0.0


def plan(layers, x: torch.Tensor) -> FoldPlan:
    """Which norms of a step of x.shape[0] token rows fold into their GEMMs (see the module doc)."""
    from . import pdl
    from .skinny_gemm import mode as gemm_mode

    how = mode()
    first = layers[0]
    mods = (first.qkv_proj, first.o_proj, first.gate_up_proj, first.down_proj)
    if how == "kernel" or not x.is_cuda or any(type(mod) is not Linear for mod in mods):
        return NO_FOLD
    m = x.shape[0]
    key = (m, tuple(tuple(mod.weight.shape) for mod in mods), x.dtype, pdl.enabled(x, m), gemm_mode(), how)
    if key in plans:
        return plans[key]
    if torch.cuda.is_current_stream_capturing():
        log.warning("norm_fold: step of %d rows first seen inside a capture; norm kernels", m)
        return NO_FOLD
    qkv, o, gu, down = (choose(m, mod.weight, mod.bias is not None, mod is first.gate_up_proj) for mod in mods)
    swab = [isinstance(c, SwabConfig) for c in (qkv, o, gu, down)]
    folded = FoldPlan(swab[1] and swab[2], swab[3] and swab[0] and len(layers) > 1)
    if folded == NO_FOLD:
        plans[key] = folded
        return folded
    global plan_seconds
    t0 = time.perf_counter()
    t = {"kernel": chain_ms(layers, x, NO_FOLD), "fold": chain_ms(layers, x, folded)}
    plan_seconds += time.perf_counter() - t0
    timings[key] = t
    plans[key] = folded if how == "fold" or t["fold"] < t["kernel"] else NO_FOLD  # `fold`: timed for the record only
    log.info("norm_fold M=%d: %s (layer GEMM chain %.1f us with norm kernels, %.1f folded)", m, plans[key],
             t["kernel"] * 1e3, t["fold"] * 1e3)
    return plans[key]


def layer_chain(layer, x: torch.Tensor, pending, attn: torch.Tensor, fold: FoldPlan):
    """A layer's four GEMMs and the norms between them (no attention): what `plan` times."""
    x, _ = normed_linear(x, pending, layer.input_layernorm, layer.qkv_proj)
    x, pending = residual_linear(attn, layer.o_proj, x, fold.mid)
    x, gu = normed_linear(x, pending, layer.post_attention_layernorm, layer.gate_up_proj, silu=True)
    return residual_linear(gu, layer.down_proj, x, fold.edge)


def chain_ms(layers, x: torch.Tensor, fold: FoldPlan) -> float:
    """Milliseconds of every layer's GEMM chain in one CUDA graph (the real weights: they stream
    from HBM as in the step), from random activations of x's shape."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    m, d = x.shape
    x0 = torch.randn(m, d, device=x.device, generator=gen).to(x.dtype)
    attn = torch.randn(m, layers[0].o_proj.weight.shape[1], device=x.device, generator=gen).to(x.dtype)
    if fold.edge:
        pending = SumSquares(x0.float().square().sum(-1)[None, :].contiguous())
    else:
        pending = torch.randn(m, d, device=x.device, generator=gen).to(x.dtype)
    return graph_call_ms(lambda i: layer_chain(layers[i], x0, pending, attn, fold), len(layers)) * len(layers)

"""PIL's 8-bit bicubic resize in integer tensor arithmetic, on any device, bit-identical to
`Image.resize(size, Image.Resampling.BICUBIC)` for RGB images.

PIL's resampler (libImaging/Resample.c) is a separable convolution: per output column it
computes the bicubic (a = -0.5) weights of its source taps in double precision, normalizes them
to sum 1, rounds them to 22-bit fixed point, and accumulates `pixel * weight` in int32 starting
from half a unit; the result is shifted back and clipped to 0..255. The horizontal pass runs
first and its uint8 result feeds the vertical pass. The weights are computed here with the same
double-precision formulas (Python floats are IEEE doubles); the accumulation runs in int32, as
one Triton kernel per pass on the GPU (two launches per image, so the host's share stays small)
or as tensor ops elsewhere; GPU and CPU give the same bits as PIL.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import torch

from .kernels import triton_runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the tensor-op path is used
    triton = None

_PRECISION_BITS = 32 - 8 - 2
_SUPPORT = 2.0  # bicubic
_A = -0.5


def _bicubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * _A
    return 0.0


@lru_cache(maxsize=64)
def fixed_point_taps(in_size: int, out_size: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(first source index, fixed-point weights) of every output position, as PIL computes them."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    starts, weights = [], []
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, like the C cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = sum_in_order(w)
        if total != 0.0:
            w = [v / total for v in w]
        unit = float(1 << _PRECISION_BITS)
        starts.append(xmin)
        weights.append(tuple(int(-0.5 + v * unit) if v < 0 else int(0.5 + v * unit) for v in w))
    return tuple(starts), tuple(weights)


def sum_in_order(values: list[float]) -> float:
    """Plain left-to-right double sum, as the C loop does (Python 3.12's sum() compensates
    rounding for floats, which could move a weight by an ulp)."""
    total = 0.0
    for v in values:
        total += v
    return total


_TAP_CACHE: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
_TAP_LOCK = threading.Lock()


def _tap_tensors(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[taps, out] source indices and int32 weights (short rows padded with weight 0)."""
    key = (in_size, out_size, str(device))
    with _TAP_LOCK:  # the engine preprocesses on several threads
        if key not in _TAP_CACHE:
            if len(_TAP_CACHE) >= 64:  # bounded: a stream of odd sizes must not grow it forever
                _TAP_CACHE.pop(next(iter(_TAP_CACHE)))
            starts, weights = fixed_point_taps(in_size, out_size)
            taps = max(len(w) for w in weights)
            index = [[min(s + t, in_size - 1) for s in starts] for t in range(taps)]
            weight = [[w[t] if t < len(w) else 0 for w in weights] for t in range(taps)]
            _TAP_CACHE[key] = (torch.tensor(index, dtype=torch.long).to(device),
                               torch.tensor(weight, dtype=torch.int32).to(device))
        return _TAP_CACHE[key]


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and triton_runs_on(x)


if triton is not None:

    @triton.jit
    def _resize_pass_kernel(src_ptr, dst_ptr, index_ptr, weight_ptr, taps, in_len, out_len, inner,
                            BLOCK: tl.constexpr, PRECISION: tl.constexpr):
        # The image viewed as [outer, length, inner]; this pass resamples `length`. Program
        # (o, blk) computes BLOCK consecutive outputs of outer row o, each the int32 sum of its
        # taps, exactly as PIL accumulates them.
        o = tl.program_id(0).to(tl.int64)
        e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = e < out_len * inner
        pos = e // inner
        ch = e % inner
        acc = tl.full((BLOCK,), 1 << (PRECISION - 1), tl.int32)
        for t in range(taps):
            idx = tl.load(index_ptr + t * out_len + pos, mask=mask, other=0)
            w = tl.load(weight_ptr + t * out_len + pos, mask=mask, other=0)
            px = tl.load(src_ptr + o * in_len * inner + idx * inner + ch, mask=mask, other=0)
            acc += px.to(tl.int32) * w
        out = tl.minimum(tl.maximum(acc >> PRECISION, 0), 255)
        tl.store(dst_ptr + o * out_len * inner + e, out.to(tl.uint8), mask=mask)


def _pass_triton(x: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    index, weight = _tap_tensors(x.shape[dim], out_size, x.device)
    x = x.contiguous()
    h, w, c = x.shape
    outer, in_len, inner = (h, w, c) if dim == 1 else (1, h, w * c)
    out = torch.empty((h, out_size, c) if dim == 1 else (out_size, w, c), dtype=torch.uint8, device=x.device)
    block = 1024
    grid = (outer, triton.cdiv(out_size * inner, block))
    _resize_pass_kernel[grid](x, out, index, weight, index.shape[0], in_len, out_size, inner, BLOCK=block,
                              PRECISION=_PRECISION_BITS, num_warps=4)
    return out


def _pass(x: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """One separable pass of uint8 `x` [H, W, C] along `dim` (1: horizontal, 0: vertical): one
    Triton launch on the GPU, or int32 tensor ops (one gather-multiply-add per tap) elsewhere."""
    if _use_triton(x):
        return _pass_triton(x, dim, out_size)
    index, weight = _tap_tensors(x.shape[dim], out_size, x.device)
    shape = [1, 1, 1]
    shape[dim] = out_size
    acc = torch.full([out_size if d == dim else s for d, s in enumerate(x.shape)], 1 << (_PRECISION_BITS - 1),
                     dtype=torch.int32, device=x.device)
    src = x.to(torch.int32)
    for t in range(index.shape[0]):
        acc += torch.index_select(src, dim, index[t]) * weight[t].view(shape)
    return (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_bicubic(rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, C] -> uint8 [height, width, C] for size = (width, height), equal to PIL's
    bicubic resize of the same image. Passes whose side does not change are skipped, as in PIL."""
    width, height = size
    if rgb.dtype != torch.uint8 or rgb.dim() != 3:
        raise ValueError(f"resize_bicubic takes uint8 [H, W, C]; got {rgb.dtype} {tuple(rgb.shape)}")
    if width < 1 or height < 1 or math.prod(rgb.shape) == 0:
        raise ValueError(f"cannot resize {tuple(rgb.shape)} to {size}")
    out = rgb
    if width != rgb.shape[1]:
        out = _pass(out, 1, width)
    if height != rgb.shape[0]:
        out = _pass(out, 0, height)
    return out if out is not rgb else rgb.clone()

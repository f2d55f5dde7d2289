"""PIL's 8-bit bicubic resize in integer tensor arithmetic, on any device, bit-identical to
`Image.resize(size, Image.Resampling.BICUBIC)` (no box, no reducing_gap: Pillow's defaults) for
RGB images, shrinking or growing either side.

PIL's resampler (libImaging/Resample.c) is a separable convolution: per output column it
computes the bicubic (a = -0.5) weights of its source taps in double precision, with the support
widened by the scale when a side shrinks (support 2 * in/out, weights evaluated at distance *
out/in: the antialiasing filter), normalizes them to sum 1, rounds them to 22-bit fixed point,
and accumulates `pixel * weight` in int32 starting from half a unit; the result is shifted back
and clipped to 0..255. The first pass's uint8 result feeds the second, so the order of the two
passes changes the bits: Pillow up to 12 always runs the horizontal pass first; Pillow 13
(python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by more than
twice as many pixels as the width does (`vertical_first`, keyed to the installed Pillow).
The weights are computed here with the same double-precision formulas (numpy float64, IEEE like
the C doubles; the normalizing sum runs left to right as the C loop does); the accumulation runs
in int32, as one Triton kernel per pass on the GPU (two launches per image, so the host's share
stays small; a batch of equal-size images shares them) or as tensor ops elsewhere; GPU and CPU
give the same bits as PIL.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
import PIL
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


def _pillow_major(version: str) -> int:
    head = version.split(".")[0]
    return int(head) if head.isdigit() else 0


# Pillow 13 chooses the pass order by size (see vertical_first); earlier versions never do.
PILLOW_ORDERS_PASSES = _pillow_major(PIL.__version__) >= 13


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int], by_size: bool | None = None) -> bool:
    """Whether Pillow runs the vertical pass first for (width, height) in_size -> out_size:
    with both passes needed, the height shrinks and loses more than twice the columns the width
    loses (a width that grows always qualifies). `by_size`: the rule of Pillow >= 13 (default:
    the installed Pillow's); False is the fixed horizontal-then-vertical order of Pillow <= 12."""
    (w, h), (ow, oh) = in_size, out_size
    if not (PILLOW_ORDERS_PASSES if by_size is None else by_size) or ow == w or oh == h:
        return False
    return oh < h and (h - oh) > 2 * (w - ow)


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def fixed_point_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first source index [out], fixed-point weights [out, taps]) of every output position, as
    PIL's precompute_coeffs + normalize_coeffs_8bpc compute them (short rows padded with 0)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    taps = math.ceil(support) * 2 + 1  # PIL's ksize: room for every row
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # astype(int64) truncates toward zero, like the C cast (the arguments are > -1 here)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    x = np.arange(taps, dtype=np.int64)[None, :]
    live = x < xmax[:, None]
    ss = 1.0 / filterscale
    w = np.where(live, _bicubic(((x + xmin[:, None]) - center[:, None] + 0.5) * ss), 0.0)
    total = np.cumsum(w, axis=1)[:, -1]  # sequential, as the C loop sums (np.sum would pair up)
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    unit = float(1 << _PRECISION_BITS)
    fixed = np.where(w < 0, (-0.5 + w * unit), (0.5 + w * unit)).astype(np.int64)  # C: (int) truncates
    fixed = np.where(live, fixed, 0).astype(np.int32)
    last = int(xmax.max())  # drop all-zero tail columns (fewer loads per output)
    return xmin, fixed[:, :last]


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
            index = np.minimum(starts[None, :] + np.arange(weights.shape[1])[:, None], in_size - 1)
            _TAP_CACHE[key] = (torch.from_numpy(index).to(device),
                               torch.from_numpy(np.ascontiguousarray(weights.T)).to(device))
        return _TAP_CACHE[key]


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and triton_runs_on(x)


if triton is not None:

    @triton.jit
    def _resize_pass_kernel(src_ptr, dst_ptr, index_ptr, weight_ptr, taps, in_len, out_len, inner,
                            BLOCK: tl.constexpr, PRECISION: tl.constexpr, C: tl.constexpr, SRC_C: tl.constexpr):
        # The image viewed as [outer, length, inner]; this pass resamples `length`. Program
        # (o, blk) computes BLOCK consecutive outputs of outer row o, each the int32 sum of its
        # taps, exactly as PIL accumulates them. The source may hold SRC_C channels per pixel
        # where the output holds C (PIL's RGBX memory read as RGB: the pad byte is never loaded).
        o = tl.program_id(0).to(tl.int64)
        e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = e < out_len * inner
        pos = e // inner
        q = e % inner
        src_q = (q // C) * SRC_C + q % C
        src_inner = (inner // C) * SRC_C
        acc = tl.full((BLOCK,), 1 << (PRECISION - 1), tl.int32)
        for t in range(taps):
            idx = tl.load(index_ptr + t * out_len + pos, mask=mask, other=0)
            w = tl.load(weight_ptr + t * out_len + pos, mask=mask, other=0)
            px = tl.load(src_ptr + o * in_len * src_inner + idx * src_inner + src_q, mask=mask, other=0)
            acc += px.to(tl.int32) * w
        out = tl.minimum(tl.maximum(acc >> PRECISION, 0), 255)
        tl.store(dst_ptr + o * out_len * inner + e, out.to(tl.uint8), mask=mask)


def _pass_triton(x: torch.Tensor, dim: int, out_size: int, channels: int) -> torch.Tensor:
    """`x` [B, H, W, C]: a batch of equal-size images is one launch (the batch folds into the
    kernel's outer rows; each image's arithmetic is the single image's). The output keeps the
    first `channels` of x's C."""
    index, weight = _tap_tensors(x.shape[dim], out_size, x.device)
    x = x.contiguous()
    b, h, w, src_c = x.shape
    outer, in_len, inner = (b * h, w, channels) if dim == 2 else (b, h, w * channels)
    shape = [b, h, w, channels]
    shape[dim] = out_size
    out = torch.empty(shape, dtype=torch.uint8, device=x.device)
    block = 1024
    grid = (outer, triton.cdiv(out_size * inner, block))
    _resize_pass_kernel[grid](x, out, index, weight, index.shape[0], in_len, out_size, inner, BLOCK=block,
                              PRECISION=_PRECISION_BITS, C=channels, SRC_C=src_c, num_warps=4)
    return out


def _pass(x: torch.Tensor, dim: int, out_size: int, channels: int | None = None) -> torch.Tensor:
    """One separable pass of uint8 `x` [B, H, W, C] along `dim` (2: horizontal, 1: vertical),
    keeping the first `channels` (default all): one Triton launch on the GPU, or int32 tensor
    ops (one gather-multiply-add per tap) elsewhere."""
    channels = channels or x.shape[-1]
    if _use_triton(x):
        return _pass_triton(x, dim, out_size, channels)
    x = x[..., :channels]
    index, weight = _tap_tensors(x.shape[dim], out_size, x.device)
    shape = [1] * x.dim()
    shape[dim] = out_size
    acc = torch.full([out_size if d == dim else s for d, s in enumerate(x.shape)], 1 << (_PRECISION_BITS - 1),
                     dtype=torch.int32, device=x.device)
    src = x.to(torch.int32)
    for t in range(index.shape[0]):
        acc += torch.index_select(src, dim, index[t]) * weight[t].view(shape)
    return (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_bicubic(rgb: torch.Tensor, size: tuple[int, int], by_size: bool | None = None,
                   channels: int | None = None) -> torch.Tensor:
    """uint8 [H, W, C] -> uint8 [height, width, C] for size = (width, height), equal to PIL's
    bicubic resize of the same image. A batch of equal-size images, [B, H, W, C], resizes in the
    same launches as one image, each image exactly as alone. Passes whose side does not change
    are skipped, as in PIL; the pass order is Pillow's (`vertical_first`; `by_size` as there).
    `channels`: keep only the first ones (RGB of RGBX), read by the first pass itself."""
    width, height = size
    if rgb.dtype != torch.uint8 or rgb.dim() not in (3, 4):
        raise ValueError(f"resize_bicubic takes uint8 [H, W, C] or [B, H, W, C]; got {rgb.dtype} {tuple(rgb.shape)}")
    if width < 1 or height < 1 or math.prod(rgb.shape) == 0:
        raise ValueError(f"cannot resize {tuple(rgb.shape)} to {size}")
    batch = rgb if rgb.dim() == 4 else rgb.unsqueeze(0)
    passes = [(2, width), (1, height)]
    if vertical_first((batch.shape[2], batch.shape[1]), (width, height), by_size):
        passes.reverse()
    channels = channels or batch.shape[-1]
    out = batch
    for dim, length in passes:
        if length != out.shape[dim]:
            out = _pass(out, dim, length, channels)
    if out is batch:
        out = batch[..., :channels].clone(memory_format=torch.contiguous_format)
    return out if rgb.dim() == 4 else out[0]

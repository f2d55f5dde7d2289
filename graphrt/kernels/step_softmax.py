"""torch.softmax over the step's logits rows, with torch's own bits, on many CTAs per row.

The step's end takes a softmax of 6 rows per request over the whole vocabulary (152,681 bf16
values). torch runs it as `cunn_SoftMaxForward` (aten/src/ATen/native/cuda/SoftMax.cu, the
path for rows too long for its shared-memory variant): ONE block of 1024 threads per row,
which leaves most of the H100 idle (~120 us for 6 rows). The output bits of that kernel depend
on one order-dependent value only, the float sum of exp(x - max); the max is exact in any order
and every output is then exp(x - max) / sum, rounded once to the output dtype. So this module
computes the same sum by the same tree on many CTAs per row:

- thread t of torch's block (t < 1024) adds, in this order (ilpReduce): when the row does not
  start on a 16-byte boundary (shift s = elements before it; the vocab is odd, so row r of a
  contiguous tensor has s = (r*V) % 8), element t - s if t >= s; then, from index 1024 - s (0
  when aligned), rounds of 8-wide vectors: vector t of each round, its 8 values left to right;
  then the scalar tail (< 8*1024 values) at tail + t, tail + t + 1024, ...;
- the 1024 thread sums are reduced like cuda_utils::BlockReduce: within each warp of 32 by
  shuffle-down halving (lane l += lane l + 16, then + 8, 4, 2, 1), then the 32 warp sums by the
  same halving;
- exp is libdevice's expf (what nvcc's std::exp(float) is without fast-math), the division is
  IEEE round-to-nearest (nvcc's default -prec-div=true), the cast round-to-nearest-even.

Kernels (grid rows x CTAS; in _sum_part CTA c plays torch's threads [c*T, (c+1)*T)):
  _max_part  the max of a CTA's slice of the row -> part_max [rows, CTAS]
  _sum_part  the row max from part_max; torch's per-thread sums -> thread_sum [rows, 1024]
  _total     (grid rows) the block-reduce tree over thread_sum -> the row's sum
  _write     (grid rows x V/4096) its 4096 values' outputs.

This is an emulation of one torch build's kernel, so it is checked, not trusted: `StepSoftmax`
compares its output with torch.softmax bit for bit on crafted rows when it is built (before any
graph capture) and falls back to torch.softmax, with a warning, when a single bit differs (a
different torch version, a different device). GRAPHRT_STEP_SOFTMAX=torch forces torch's (A/B).
"""

from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import env_choice, pdl
from .pdl_ops import pdl_enter

log = logging.getLogger("graphrt")

THREADS = 1024  # torch's block for rows of >= 1024 values (SoftMaxForward_getBlockSize)
WRITE_CHUNK = 4096  # values per CTA of the output pass
# Above this many rows torch's one-CTA-per-row kernel runs (the bits are the same either way). 192 =
# B=32's window rows: alone 146 vs 267 us on the H100; one step at B=32 6.298 vs 6.361 ms with
# torch's softmax (interleaved A/B, docs/notes.md "The merged tree after the sixth pass").
MAX_ROWS = 192
SMEM_BYTES = 48 * 1024  # sharedMemPerBlock: rows shorter than this (in bytes, less the warp slots) take another kernel


@triton.jit
def _exp(x, INTERP: tl.constexpr):
    """libdevice's expf; numpy's under the CPU interpreter (which runs no libdevice)."""
    if INTERP:
        return tl.math.exp(x)
    else:
        return libdevice.exp(x)


@triton.jit
def _div(x, y, INTERP: tl.constexpr):
    """IEEE round-to-nearest division."""
    if INTERP:
        return tl.math.div_rn(x, y)
    else:
        return libdevice.div_rn(x, y)


@triton.jit
def _cast(y, dtype: tl.constexpr, INTERP: tl.constexpr):
    """fp32 -> the output dtype, round to nearest even (the interpreter's bf16 store truncates, so
    there the rounding is done on the bits first)."""
    if INTERP and dtype == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = bits.to(tl.float32, bitcast=True)
    return y.to(dtype)


@triton.jit
def _cols8(x):
    """The 8 columns of a [T, 8] tile, in column order, as [T] vectors (register moves only)."""
    ev, od = tl.split(tl.reshape(x, (x.shape[0], 4, 2)))  # columns 0 2 4 6 | 1 3 5 7
    e0, e1 = tl.split(tl.reshape(ev, (x.shape[0], 2, 2)))  # 0 4 | 2 6
    o0, o1 = tl.split(tl.reshape(od, (x.shape[0], 2, 2)))  # 1 5 | 3 7
    c0, c4 = tl.split(e0)
    c2, c6 = tl.split(e1)
    c1, c5 = tl.split(o0)
    c3, c7 = tl.split(o1)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _halve(x, N: tl.constexpr):
    """[W, N] -> [W, N/2]: lane l + lane l + N/2 (one step of a shuffle-down warp reduction)."""
    lo, hi = tl.split(tl.permute(tl.reshape(x, (x.shape[0], 2, N // 2)), (0, 2, 1)))
    return lo + hi


@triton.jit
def _warp_tree(x):
    """[W, 32] -> [W]: each row reduced as a warp's shuffle-down sum leaves it in lane 0."""
    x = _halve(x, 32)
    x = _halve(x, 16)
    x = _halve(x, 8)
    x = _halve(x, 4)
    lo, hi = tl.split(x)
    return lo + hi


@triton.jit
def _max_part(x_ptr, part_ptr, V, CHUNK: tl.constexpr, BLOCK: tl.constexpr, CTAS: tl.constexpr, PDL: tl.constexpr):
    """The max of elements [c*CHUNK, (c+1)*CHUNK) of a row (exact in any order)."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    base = x_ptr + row.to(tl.int64) * V
    m = tl.full((BLOCK,), -3.4028234663852886e38, tl.float32)
    for k in tl.static_range(0, CHUNK, BLOCK):
        idx = c * CHUNK + k + tl.arange(0, BLOCK)
        m = tl.maximum(m, tl.load(base + idx, mask=idx < V, other=-float("inf")).to(tl.float32))
    tl.store(part_ptr + row * CTAS + c, tl.max(m, axis=0))


@triton.jit
def _sum_part(x_ptr, part_ptr, sum_ptr, V, SHIFT0, T: tl.constexpr, CTAS: tl.constexpr, NT: tl.constexpr,
              REVERSED: tl.constexpr, INTERP: tl.constexpr, PDL: tl.constexpr):
    """torch's per-thread sums of exp(x - max) for threads [c*T, (c+1)*T) of a row (see the module doc)."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    base = x_ptr + row.to(tl.int64) * V
    mx = tl.max(tl.load(part_ptr + row * CTAS + tl.arange(0, CTAS)), axis=0)
    t = c * T + tl.arange(0, T)
    shift = ((row.to(tl.int64) * V + SHIFT0) % 8).to(tl.int32)  # elements before the row's first 16-byte boundary
    acc = tl.zeros((T,), tl.float32)
    # an unaligned row: thread t >= shift first takes element t - shift, then the aligned rest starts at NT - shift
    first = t - shift
    lead = first >= tl.where(shift > 0, 0, NT)  # no leading element when the row is aligned
    v = tl.load(base + first, mask=lead, other=0.0).to(tl.float32)
    acc = tl.where(lead, acc + _exp(v - mx, INTERP), acc)
    start = tl.where(shift > 0, NT - shift, 0)
    size = V - start
    n_vec = size // (8 * NT)  # full rounds of 8-wide vectors over the block
    k = tl.arange(0, 8)
    vec_base = base + tl.multiple_of(start, 8)
    for i in range(n_vec):  # torch's vector loop: 8 values left to right per thread
        x = tl.load(vec_base + ((i * NT + t) * 8)[:, None] + k[None, :]).to(tl.float32)
        c0, c1, c2, c3, c4, c5, c6, c7 = _cols8(x)
        if REVERSED:  # a wrong order on purpose (tests: the self-check must refuse it)
            c0, c1, c2, c3, c4, c5, c6, c7 = c7, c6, c5, c4, c3, c2, c1, c0
        acc = acc + _exp(c0 - mx, INTERP)
        acc = acc + _exp(c1 - mx, INTERP)
        acc = acc + _exp(c2 - mx, INTERP)
        acc = acc + _exp(c3 - mx, INTERP)
        acc = acc + _exp(c4 - mx, INTERP)
        acc = acc + _exp(c5 - mx, INTERP)
        acc = acc + _exp(c6 - mx, INTERP)
        acc = acc + _exp(c7 - mx, INTERP)
    tail = start + n_vec * 8 * NT
    for q in tl.static_range(8):  # torch's scalar tail (< 8 * NT values), strided by the block
        idx = tail + q * NT + t
        ok = idx < V
        v = tl.load(base + idx, mask=ok, other=0.0).to(tl.float32)
        acc = tl.where(ok, acc + _exp(v - mx, INTERP), acc)
    tl.store(sum_ptr + row * NT + t, acc)


@triton.jit
def _total(sum_ptr, total_ptr, NT: tl.constexpr, PDL: tl.constexpr):
    """A row's sum from torch's 1024 thread sums by its block-reduce tree (one CTA per row)."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    w = tl.arange(0, NT // 32)
    lane = tl.arange(0, 32)
    sums = tl.load(sum_ptr + row * NT + w[:, None] * 32 + lane[None, :])
    warp = _warp_tree(sums)  # [32]: lane 0 of each warp
    total = tl.sum(_warp_tree(tl.reshape(warp, (1, NT // 32))), axis=0)  # warp 0 over the warp sums (1 value)
    tl.store(total_ptr + row, total)


@triton.jit
def _write(x_ptr, part_ptr, total_ptr, y_ptr, V, CHUNK: tl.constexpr, BLOCK: tl.constexpr, CTAS: tl.constexpr,
           INTERP: tl.constexpr, PDL: tl.constexpr):
    """exp(x - max) / sum for elements [c*CHUNK, (c+1)*CHUNK) of a row."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    base = x_ptr + row.to(tl.int64) * V
    out = y_ptr + row.to(tl.int64) * V
    mx = tl.max(tl.load(part_ptr + row * CTAS + tl.arange(0, CTAS)), axis=0)
    total = tl.load(total_ptr + row)
    for k in tl.static_range(0, CHUNK, BLOCK):
        idx = c * CHUNK + k + tl.arange(0, BLOCK)
        ok = idx < V
        v = tl.load(base + idx, mask=ok, other=0.0).to(tl.float32)
        tl.store(out + idx, _cast(_div(_exp(v - mx, INTERP), total, INTERP), y_ptr.dtype.element_ty, INTERP), mask=ok)


def end_launch(x: torch.Tensor, rows: int) -> dict:
    """Launch keywords of the step's end kernels (this softmax, step_topk's, step_tail's) on `rows`
    logits rows: PDL where graphrt/kernels/pdl.py's rule allows it (at most AUTO_MAX_ROWS rows under
    `auto`: the B=1 step's 6), so each launches while the kernel before it ends and waits for it
    before its first read. GRAPHRT_STEP_END_PDL=off (A/B): plain launches (the kernels before)."""
    if env_choice("GRAPHRT_STEP_END_PDL", ("auto", "off")) == "off":
        return {"PDL": False}
    return pdl.launch(x, rows)


def supported(x: torch.Tensor) -> bool:
    """Rows that torch sends to cunn_SoftMaxForward: bf16/fp16 on CUDA, contiguous, too long for
    the shared-memory kernel (rows of any alignment: each row's shift is taken as torch takes it)."""
    v = x.shape[-1]
    max_smem_elems = (SMEM_BYTES - THREADS // 32 * 4) // x.element_size()
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.is_contiguous() and v >= max_smem_elems


def triton_softmax(x: torch.Tensor, ctas: int | None = None, reversed_order: bool = False,
                   internals: dict | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """softmax over the last dim of a contiguous bf16/fp16 tensor (see `supported`), torch's bits.
    out_dtype float32: torch._softmax(x, -1, half_to_float=True)'s bits (same sum, no final rounding).
    `internals` (tests) receives the row maxima, torch's per-thread sums and the row sums."""
    v = x.shape[-1]
    rows = x.numel() // v
    if ctas is None:
        ctas = 16 if rows <= 16 else 8
    assert x.is_contiguous() and v >= THREADS and x.data_ptr() % x.element_size() == 0
    per = THREADS // ctas
    block = 1024
    chunk = triton.cdiv(triton.cdiv(v, ctas), block) * block
    part = torch.empty(rows, ctas, dtype=torch.float32, device=x.device)
    sums = torch.empty(rows, THREADS, dtype=torch.float32, device=x.device)
    totals = torch.empty(rows, dtype=torch.float32, device=x.device)
    y = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    shift0 = x.data_ptr() % 16 // x.element_size()
    # enable_reflect_ftz=False: libdevice's expf / division keep denormals, as nvcc builds torch's
    opts = {} if interp else {"enable_reflect_ftz": False}
    launch = end_launch(x, rows)
    _max_part[(rows, ctas)](x, part, v, CHUNK=chunk, BLOCK=block, CTAS=ctas, num_warps=4, **opts, **launch)
    _sum_part[(rows, ctas)](x, part, sums, v, shift0, T=per, CTAS=ctas, NT=THREADS, REVERSED=reversed_order,
                            INTERP=interp, num_warps=max(1, per // 32), **opts, **launch)
    _total[(rows,)](sums, totals, NT=THREADS, num_warps=4, **launch)
    # the output pass is exp + IEEE division per value: many small CTAs
    _write[(rows, triton.cdiv(v, WRITE_CHUNK))](x, part, totals, y, v, CHUNK=WRITE_CHUNK, BLOCK=block, CTAS=ctas,
                                                INTERP=interp, num_warps=4, **opts, **launch)
    if internals is not None:
        internals.update(max=part.amax(1), thread_sums=sums, totals=totals)
    return y


def check_rows(rows: int, v: int, dtype: torch.dtype, device, seed: int = 0) -> torch.Tensor:
    """Crafted logits [rows, v]: normal rows at several scales, rows with many ties at the max,
    huge and tiny magnitudes, and masked entries at -inf and at the dtype's min (as top-k/top-p
    and the repetition penalty leave them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, v, generator=g)
    scale = torch.tensor([1.0, 4.0, 16.0, 0.05, 60.0, 1.0, 8.0, 1.0])
    x = x * scale[torch.arange(rows) % len(scale)][:, None]
    info = torch.finfo(dtype)
    for r in range(rows):
        kind = r % 8
        if kind == 5:  # many ties at the max
            x[r, torch.randint(0, v, (500,), generator=g)] = x[r].max() + 1
        elif kind == 6:  # masked tails
            x[r, torch.randint(0, v, (v // 2,), generator=g)] = float("-inf")
            x[r, torch.randint(0, v, (v // 4,), generator=g)] = info.min
        elif kind == 7:  # a few values near the dtype's range, the rest far below
            x[r] = x[r] * 3 - 200
            x[r, torch.randint(0, v, (8,), generator=g)] = info.max / 2 if dtype == torch.float16 else 1e30
    return x.to(dtype).to(device)


class StepSoftmax:
    """torch.softmax(x, -1) for the step's logits: the Triton emulation where it has been checked
    bit-equal to torch on this device, dtype and width, torch's otherwise. Build it before graph
    capture (the check synchronizes)."""

    def __init__(self, device, dtype: torch.dtype, vocab: int):
        how = env_choice("GRAPHRT_STEP_SOFTMAX", ("fused", "torch"))
        self.vocab = vocab
        self.reason = ""
        if how == "torch":
            self.reason = "GRAPHRT_STEP_SOFTMAX=torch"
        else:
            probe = torch.empty(1, vocab, dtype=dtype, device=device)
            if not supported(probe):
                self.reason = f"{dtype} rows of {vocab} do not take torch's cunn_SoftMaxForward path"
            else:
                self.reason = self_check(device, dtype, vocab)
        self.fused = not self.reason
        if not self.fused and how == "fused":
            log.warning("step softmax: torch.softmax (%s)", self.reason)

    def describe(self) -> str:
        return "triton (bit-equal to torch, checked)" if self.fused else f"torch ({self.reason})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.shape[-1] == self.vocab and supported(x) and x.numel() // x.shape[-1] <= MAX_ROWS:
            return triton_softmax(x)
        return torch.softmax(x, dim=-1)


def self_check(device, dtype: torch.dtype, vocab: int, rows: int = 48, kernel=triton_softmax) -> str:
    """'' when `kernel` matches torch bit for bit on crafted rows, else a reason naming the first
    mismatch. Two comparisons at several row counts (both CTA splits, every row shift):
    - `dtype` rows against torch.softmax (what the step uses);
    - fp16 rows with fp32 outputs against torch._softmax(x, -1, half_to_float=True): the same
      kernel (8-wide loads of 16-bit values, float sum) without the final rounding, so that a sum
      one bit off shows in the outputs (after a bf16 rounding it mostly does not)."""
    for n, seed in ((rows, 0), (9, 1), (1, 2)):
        for src, out in ((dtype, None), (torch.float16, torch.float32)):
            x = check_rows(n, vocab, src, device, seed)
            if out is None:
                ref, got = torch.softmax(x, dim=-1), kernel(x)
            else:
                ref, got = torch._softmax(x, -1, True), kernel(x, out_dtype=out)
            bits = torch.int32 if ref.dtype == torch.float32 else torch.int16
            bad = (got.view(bits) != ref.view(bits)).nonzero()
            if bad.numel():
                r, c = bad[0].tolist()
                return (f"self-check: {bad.shape[0]} of {x.numel()} values ({src} -> {ref.dtype}) differ from "
                        f"torch.softmax (first at row {r}, col {c}: {got[r, c].item()!r} vs {ref[r, c].item()!r})")
    return ""

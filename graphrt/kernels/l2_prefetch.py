"""L2 prefetch of the next GEMMs' weights from inside the B=1 step's kernel chain.

At B=1 the step's layer is a chain of PDL kernels: norm -> QKV GEMM -> rope_write -> attention
split -> merge -> O GEMM -> norm -> gate/up GEMM -> down GEMM. While rope_write, the attention
and the norms run, nothing reads weights and HBM sits idle. Here the attention's kernels issue
`cp.async.bulk.prefetch.L2.global` (a hint: nothing waits for it, no value changes) for the bytes
the next GEMMs read first, after their own `gdc_wait()` (so it never competes with the GEMM
before it, the loss of the pre-wait prefetch in skinny_gemm.py), from their own programs (no side
stream: the loss of the side-stream prefetch kernel, docs/notes.md, issue 12 second pass), spread
round-robin over every program of the grid (256 at B=1): one SM's bulk prefetches drain at only
~0.3 TB/s, and a kernel that issued 8 MB from one program was measured to hold the chain ~30 us.

    o        the split kernel prefetches O's weight (whole: one wave of the split-K swap-AB GEMM
             reads it all)
    o-gu<n>  and the first n BLOCK_K column blocks of the gate and up rows of the gate/up GEMM's
             first wave (program pid_w reads rows [pid_w*BLOCK_W, +BLOCK_W) of gate and of up, K
             ascending; one program per SM), also from the split kernel
    o-mgu<n> the same, the gate/up part from the merge kernel (later, closer to its use)

GRAPHRT_STEP_L2PF (A/B override, read when the kernels are launched, i.e. at capture): off (default;
docs/notes.md "L2 weight prefetch in the attention gap" has the numbers) or one of the modes above.
Only steps of at most pdl.AUTO_MAX_ROWS token rows (B=1, where every step GEMM is the swap-AB
kernel) prefetch; larger steps run cuBLAS GEMMs whose tile order is not ours.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from . import env_choice, pdl

MODES = ("off", "o", "o-gu1", "o-gu4", "o-mgu1", "o-mgu4")
SPAN_ROWS = 4  # whole-weight prefetches in spans of 4 rows (16 KB at K = 2048): 2 per program at B=1
MAX_REGIONS = 3


def mode() -> str:
    return env_choice("GRAPHRT_STEP_L2PF", MODES)


@triton.jit
def prefetch_spans(base, n_spans, stride, span_bytes, pid, n_prog, THREADS: tl.constexpr):
    """Spans i in [0, n_spans): `span_bytes` bytes at base + i * stride (elements) into L2, one bulk
    prefetch per thread and span, dealt round-robin over the grid's n_prog programs first (span i
    goes to program i % n_prog), so every SM issues a small share. Addresses and sizes must be
    16-byte aligned (the host checks)."""
    for i0 in range(pid, n_spans, n_prog * THREADS):
        i = i0 + n_prog * tl.arange(0, THREADS)
        live = (i < n_spans).to(tl.int32)
        ptrs = base + tl.where(i < n_spans, i, 0).to(tl.int64) * stride
        sizes = tl.zeros((THREADS,), tl.int32) + span_bytes
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.s32 p, $3, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; }\n\tmov.u32 $0, 0;",
            "=r,l,r,r", [ptrs, sizes, live], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_regions(p0, n0, s0, b0, p1, n1, s1, b1, p2, n2, s2, b2, pid, n_prog,
                     REGIONS: tl.constexpr, THREADS: tl.constexpr):
    """Up to three regions of spans (prefetch_spans' arguments each), in order."""
    if REGIONS > 0:
        prefetch_spans(p0, n0, s0, b0, pid, n_prog, THREADS)
    if REGIONS > 1:
        prefetch_spans(p1, n1, s1, b1, pid, n_prog, THREADS)
    if REGIONS > 2:
        prefetch_spans(p2, n2, s2, b2, pid, n_prog, THREADS)


def whole(weight: torch.Tensor) -> tuple:
    """A contiguous weight [N, K] as spans of SPAN_ROWS rows (per row where N does not divide)."""
    n, k = weight.shape
    rows = SPAN_ROWS if n % SPAN_ROWS == 0 else 1
    return (weight, n // rows, rows * k, rows * k * weight.element_size())


def gate_up_head(weight: torch.Tensor, m: int, blocks: int) -> list[tuple]:
    """The first `blocks` BLOCK_K column blocks of the gate and up rows the gate/up GEMM's first
    wave reads, or nothing where that GEMM is not a split-free swap-AB kernel (its order unknown)."""
    from .skinny_gemm import _sm_count, choose
    from .swap_ab_gemm import SwabConfig

    cfg = choose(m, weight, False, True)
    if not isinstance(cfg, SwabConfig) or cfg[3] != 1:
        return []
    block_w, _, block_k = cfg[:3]
    n_w, k = weight.shape
    half = n_w // 2
    rows = min(half, _sm_count(weight.device) * block_w)
    span = min(k, blocks * block_k) * weight.element_size()
    return [(weight, rows, k, span), (weight[half:], rows, k, span)]


def aligned(regions: list[tuple]) -> bool:
    return all(w.is_contiguous() and w.data_ptr() % 16 == 0 and (s * w.element_size()) % 16 == 0 and b % 16 == 0
               for w, _, s, b in regions)


def on(x: torch.Tensor) -> bool:
    """Whether a step of x's token rows prefetches at all (a CUDA step of <= AUTO_MAX_ROWS rows)."""
    return (mode() != "off" and x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1"
            and x.shape[0] <= pdl.AUTO_MAX_ROWS)


def attention_gap(layer, x: torch.Tensor) -> tuple[list[tuple], list[tuple]]:
    """What this layer's attention kernels prefetch: (split kernel's regions, merge kernel's)."""
    m = mode()
    if not on(x):
        return [], []
    split, merge = [whole(layer.o_proj.weight)], []
    if "gu" in m:
        head = gate_up_head(layer.gate_up_proj.weight, x.shape[0], int(m.split("gu")[1]))
        if m.startswith("o-mgu"):
            merge = head
        else:
            split += head
    return (split, merge) if aligned(split + merge) else ([], [])


def launch_args(regions: list[tuple], like: torch.Tensor) -> dict:
    """The kernel arguments of `prefetch_regions` for a launch (unused slots point at `like`)."""
    assert len(regions) <= MAX_REGIONS
    out = {"REGIONS": len(regions)}
    for i in range(MAX_REGIONS):
        w, n, s, b = regions[i] if i < len(regions) else (like, 0, 0, 16)
        out.update({f"pf{i}": w, f"pf{i}_n": n, f"pf{i}_s": s, f"pf{i}_b": b})
    return out


# The attention is called by capture's step plans (which know nothing of the layer's weights): the
# layer hands its regions over for the duration of its attention call.
_gap: list[tuple[list[tuple], list[tuple]]] = []


@contextlib.contextmanager
def during_attention(regions: tuple[list[tuple], list[tuple]]):
    _gap.append(regions)
    try:
        yield
    finally:
        _gap.pop()


def current() -> tuple[list[tuple], list[tuple]]:
    return _gap[-1] if _gap else ([], [])

"""Weight prefetch into L2 on a side stream, while the step's latency-bound kernels run.

Inside one decoder layer of the MTP step, HBM sits mostly idle between the QKV GEMM and the O GEMM:
rope + cache write, the attention split and merge, and a norm take ~11 us at B=1 and read only a
few hundred KB. A side-stream kernel reads the weights the layer needs next in that window: the O
projection (8.4 MB on the 3B) and the first rows of the gate and up halves of the gate/up
projection (the rows the skinny GEMM's first programs read), with the L2 "evict last" policy, so
the O GEMM and the start of the gate/up GEMM find them in L2. It only reads (one float per
program goes to a sink), so results cannot change; the side stream joins the main one at the end
of the layer, as graph capture requires.

`GRAPHRT_STEP_PREFETCH`: `mlp` (default: O + gate/up rows), `o` (O only), `off`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MLP_BYTES = 16 << 20  # gate/up bytes prefetched per layer (half gate rows, half up rows)
MAX_ROWS = 384  # decode steps only; prefill streams its weights at full rate anyway


@triton.jit
def _touch(p, n, pid, stride, acc, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    for base in range(pid * BLOCK * UNROLL, n, stride):
        for u in tl.static_range(UNROLL):  # independent loads in flight before any add waits
            idx = base + u * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(p + idx, mask=idx < n, other=0.0, eviction_policy="evict_last").to(tl.float32)
    return acc


@triton.jit
def _prefetch_kernel(a_ptr, a_n, b_ptr, b_n, c_ptr, c_n, sink_ptr, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    pid = tl.program_id(0)
    stride = tl.num_programs(0) * BLOCK * UNROLL
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    acc = _touch(a_ptr, a_n, pid, stride, acc, BLOCK, UNROLL)
    acc = _touch(b_ptr, b_n, pid, stride, acc, BLOCK, UNROLL)
    acc = _touch(c_ptr, c_n, pid, stride, acc, BLOCK, UNROLL)
    tl.store(sink_ptr + pid, tl.sum(acc, axis=0))


def mode() -> str:
    m = os.environ.get("GRAPHRT_STEP_PREFETCH", "mlp")
    if m not in ("mlp", "o", "off"):
        raise ValueError(f"GRAPHRT_STEP_PREFETCH must be mlp, o or off, not {m!r}")
    return m


class WeightPrefetch:
    """One side stream and a sink per model; `start` forks after the QKV GEMM, `join` at layer end."""

    programs = 132

    def __init__(self, device):
        self.stream = torch.cuda.Stream(device=device)
        self.sink = torch.empty(self.programs, dtype=torch.float32, device=device)
        self.mlp, self.forked = True, False

    def start(self, o_proj, gate_up_proj) -> None:
        o_w, gu_w = getattr(o_proj, "weight", None), getattr(gate_up_proj, "weight", None)
        self.forked = isinstance(o_w, torch.Tensor) and isinstance(gu_w, torch.Tensor) and o_w.is_contiguous() \
            and gu_w.is_contiguous()
        if not self.forked:  # modules without a plain weight (other precisions): nothing to prefetch
            return
        self.stream.wait_stream(torch.cuda.current_stream())
        half = gu_w.shape[0] // 2
        rows = min(half, MLP_BYTES // 2 // (gu_w.shape[1] * gu_w.element_size())) if self.mlp else 0
        gate, up = gu_w[:rows], gu_w[half : half + rows]
        with torch.cuda.stream(self.stream):
            _prefetch_kernel[(self.programs,)](o_w, o_w.numel(), gate, gate.numel(), up, up.numel(), self.sink,
                                               BLOCK=1024, UNROLL=4, num_warps=4)

    def join(self) -> None:
        if self.forked:
            torch.cuda.current_stream().wait_stream(self.stream)
            self.forked = False


def for_step(owner, x: torch.Tensor) -> WeightPrefetch | None:
    """The prefetcher of `owner` (a model) for this forward, or None (prefill sizes, CPU, off)."""
    how = mode()
    if how == "off" or not x.is_cuda or x.shape[0] > MAX_ROWS:
        return None
    pf = getattr(owner, "_weight_prefetch", None)
    if pf is None:
        if torch.cuda.is_current_stream_capturing():  # made during the warm-up, never inside a capture
            return None
        pf = owner._weight_prefetch = WeightPrefetch(x.device)
    pf.mlp = how == "mlp"
    return pf

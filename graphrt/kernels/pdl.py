"""Programmatic dependent launch (PDL, Hopper+) for the fused layer kernels.

A kernel launched with PDL may start while the kernel before it in the stream is still running:
its programs launch once every program of the previous kernel has called
`gdc_launch_dependents()` (our kernels call it first thing), run their prologue, and block in
`gdc_wait()` until the previous grid has completed and its writes are visible. Everything a
kernel does before `gdc_wait()` must read only what no earlier kernel writes (weights, addresses,
constants); every read or write of activations, the KV cache, counters or workspaces comes after
it. Completion is transitive (a kernel completes only after its own wait returned), so the
stream's order holds for every pair of kernels, PDL or not.

What it buys in the MTP step (dozens of 2-10 us kernels per layer): each kernel's launch,
ramp-up and, for the skinny GEMMs, an L2 prefetch of its weights overlap the previous kernel's
tail. Torch/cuBLAS kernels in the stream simply end a chain (they launch as usual).

Measured (H100, random 3B, benchmarks/step_kernels.py, 2026-11-24): the B=1 step 3.60 -> 3.51 ms
with PDL, but B=8 4.63 -> 4.91 and B=32 6.86 -> 6.98 ms (there the GEMMs are cuBLAS, which end
every chain, and the early-launched programs only wait). So `auto` turns it on only for launches
of at most `AUTO_MAX_ROWS` token rows (the B=1 step), where it was measured faster.

`GRAPHRT_PDL=auto|on|off` (A/B runs): auto = as above, on CUDA devices of compute capability >= 9
when Triton provides the grid-dependency ops; `on` = every launch of these kernels; off everywhere
else (the CPU interpreter has no PDL). Read at kernel launch, so a graph captured under one setting
keeps it.
"""

from __future__ import annotations

import functools
import os

import torch

from . import env_choice


def mode() -> str:
    return env_choice("GRAPHRT_PDL", ("auto", "on", "off"))


@functools.cache
def _supported(index: int) -> bool:
    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


AUTO_MAX_ROWS = 12  # one step row (12 query tokens): the only size measured faster with PDL


def enabled(x: torch.Tensor, rows: int) -> bool:
    """Whether a kernel working on x (`rows` token rows) launches with PDL."""
    if not x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    m = mode()
    if m == "off" or (m == "auto" and rows > AUTO_MAX_ROWS):
        return False
    ok = _supported(x.device.index if x.device.index is not None else torch.cuda.current_device())
    if m == "on" and not ok:
        raise RuntimeError("GRAPHRT_PDL=on needs a compute-capability-9+ GPU and triton's gdc ops")
    return ok


def launch(x: torch.Tensor, rows: int | None = None) -> dict:
    """Keyword arguments of a Triton launch: the PDL constexpr and, when on, `launch_pdl`.
    rows: the launch's token rows (default x.shape[0])."""
    return {"PDL": True, "launch_pdl": True} if enabled(x, x.shape[0] if rows is None else rows) else {"PDL": False}

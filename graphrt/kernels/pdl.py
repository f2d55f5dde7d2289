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

`GRAPHRT_PDL=auto|on|off` (A/B runs): auto = on for CUDA devices of compute capability >= 9 when
Triton provides the grid-dependency ops; off everywhere else (the CPU interpreter has no PDL).
Read at kernel launch, so a graph captured under one setting keeps it.
"""

from __future__ import annotations

import functools
import os

import torch


def mode() -> str:
    m = os.environ.get("GRAPHRT_PDL", "auto")
    if m not in ("auto", "on", "off"):
        raise ValueError(f"GRAPHRT_PDL must be auto, on or off, not {m!r}")
    return m


@functools.lru_cache(maxsize=None)
def _supported(index: int) -> bool:
    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(x: torch.Tensor) -> bool:
    """Whether kernels working on x launch with PDL."""
    if not x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    m = mode()
    if m == "off":
        return False
    ok = _supported(x.device.index if x.device.index is not None else torch.cuda.current_device())
    if m == "on" and not ok:
        raise RuntimeError("GRAPHRT_PDL=on needs a compute-capability-9+ GPU and triton's gdc ops")
    return ok


def launch(x: torch.Tensor) -> dict:
    """Keyword arguments of a Triton launch: the PDL constexpr and, when on, `launch_pdl`."""
    return {"PDL": True, "launch_pdl": True} if enabled(x) else {"PDL": False}

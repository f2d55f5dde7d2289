"""Fused Triton kernels of the GPU path: residual add + RMSNorm, RoPE + KV-cache write, SiLU*mul,
and the MTP step attention. The eager path keeps plain torch (the CPU reference); the graph path
picks one of two kernel sets at load:

    "fused"  these kernels inside the captured graphs (CUDA, fp16/bf16, triton importable)
    "torch"  the plain-torch layer ops and the varlen attention calls of capture
"""

from __future__ import annotations

import logging
import os

import torch

from ..errors import OptionError

log = logging.getLogger(__name__)

KERNEL_SETS = ("auto", "fused", "torch")


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """An A/B switch read from the environment: `name`'s value, choices[0] when unset; any other
    value raises OptionError (a ValueError) naming the variable and what it may be."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        allowed = f"{', '.join(choices[:-1])} or {choices[-1]}"
        raise OptionError(f"{name} must be {allowed}, not {value!r}")
    return value


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def triton_runs_on(x: torch.Tensor) -> bool:
    """Whether Triton kernels can run on this tensor: a CUDA tensor, or any tensor under Triton's
    CPU interpreter (TRITON_INTERPRET=1, which the CPU tests set)."""
    return triton_available() and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def select_kernels(name: str, device: torch.device | str, dtype: torch.dtype, strict: bool = False) -> tuple[str, str]:
    """-> (kernel set, reason). auto = fused where it can run (CUDA, fp16/bf16, triton), else torch;
    an explicit "fused" that cannot run raises, as does auto on a CUDA device under strict."""
    if name not in KERNEL_SETS:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_SETS)}, not {name!r}")
    if name == "torch":
        return "torch", "asked for"
    device = torch.device(device)
    why = None
    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and name == "fused"  # CPU tests of the kernels
    if device.type != "cuda" and not interpreted:
        why = "fused kernels need CUDA (or TRITON_INTERPRET=1 for CPU tests)"
    elif device.type == "cuda" and dtype not in (torch.float16, torch.bfloat16):
        why = f"fused kernels need fp16 or bf16, not {dtype}"
    elif not triton_available():
        why = "triton is not importable"
    if why is None:
        return "fused", "asked for" if name == "fused" else "auto"
    if name == "fused" or (strict and device.type == "cuda"):
        raise RuntimeError(f"kernels={name!r} cannot run: {why}")
    (log.warning if device.type == "cuda" else log.info)("fused kernels unavailable (%s); using torch kernels", why)
    return "torch", why

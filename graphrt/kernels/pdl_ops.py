"""Device-side pieces of programmatic dependent launch (see pdl.py): the grid-dependency ops and
an L2 prefetch of weight rows that a kernel may issue before its `gdc_wait()`."""

from __future__ import annotations

import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # older triton: pdl.enabled() is False, so no kernel reaches these
    gdc_launch_dependents = gdc_wait = None

__all__ = ["gdc_launch_dependents", "gdc_wait", "pdl_enter", "prefetch_l2"]


@triton.jit
def prefetch_l2(ptrs, nbytes):
    """Hint: bring nbytes from each address of `ptrs` into L2 (one bulk prefetch per address;
    addresses and sizes 16-byte aligned; sm_90+). Nothing waits for it and nothing is returned."""
    sizes = tl.zeros(ptrs.shape, tl.int32) + nbytes
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;", "=r,l,r",
                              [ptrs, sizes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """The start of a kernel that reads what the kernel before it wrote, on a PDL launch: let the
    next kernel launch now, then wait until the previous one completed (pdl.py's rule: nothing
    before the wait). A plain launch (PDL False) does nothing here."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()

"""Offline compile of the swap-AB kernel at the B=1 picks (qkv, o, gate/up, down) for every
GRAPHRT_STEP_EARLY_W form, with triton 3.6 (no GPU): where the weight loads / L2 prefetches sit
against griddepcontrol.wait in the PTX, shared memory; writes .ptx and .cubin (for cuobjdump -sass).

    PYTHONPATH=/work/tri36:$PWD python benchmarks/device_calls/wfetch_ptx.py /tmp/out
"""
import sys, re, subprocess, os
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from graphrt.kernels.swap_ab_gemm import _swab_kernel

def compile_(silu, tma, bw, bt, bk, split, warps, stages, pre, pf=0, pdl=True):
    sig = {"w_ptr": "*bf16", "x_ptr": "*bf16",
           "w_desc": f"tensordesc<bf16[{bw},{bk}]>" if tma else "*bf16",
           "x_desc": f"tensordesc<bf16[{bt},{bk}]>" if tma else "*bf16",
           "b_ptr": "*bf16", "y_ptr": "*bf16", "part_ptr": "*fp32", "lock_ptr": "*i32",
           "M": "i32", "N": "i32", "K": "i32", "up_off": "i32", "stride_x": "i32", "stride_y": "i32"}
    cx = dict(HAS_BIAS=False, SILU=silu, SPLIT_K=split, TMA=tma, BLOCK_W=bw, BLOCK_T=bt, BLOCK_K=bk, PDL=pdl,
              PRE=pre, PF=pf, PF_CHUNKS=max(1, 32 * warps // bw))
    for k, v in cx.items():
        sig[k] = "constexpr"
    div = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 4, 5, 6, 7, 9, 10, 11, 12, 13)}  # as at run time (K=2048...)
    if not tma:
        div.update({(2,): [["tt.divisibility", 16]], (3,): [["tt.divisibility", 16]]})
    k = triton.compile(ASTSource(fn=_swab_kernel, signature=sig, constexprs=cx, attrs=div),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    return k

def report(name, k):
    ptx = k.asm["ptx"].splitlines()
    wait = [i for i, l in enumerate(ptx) if "griddepcontrol.wait" in l]
    loads = [i for i, l in enumerate(ptx) if re.search(r"ld\.global|cp\.async\.(cg|ca)|cp\.async\.bulk\.tensor|cp\.async\.bulk\.prefetch", l)]
    before = [ptx[i].strip()[:70] for i in loads if wait and i < wait[0]]
    spill = k.metadata.shared if hasattr(k.metadata, "shared") else None
    sass = k.asm.get("sass", "") if hasattr(k, "asm") else ""
    print(f"{name}: smem {k.metadata.shared} B, regs {k.n_regs if hasattr(k,'n_regs') else '?'}, spills {getattr(k,'n_spills','?')}, "
          f"wait at ptx line {wait}, loads before wait {len(before)}: {sorted(set(b.split()[0] for b in before))}")
    return ptx

cfgs = {"qkv": (False, False, 64, 16, 64, 3, 4, 16), "o": (False, False, 64, 16, 64, 4, 4, 16),
        "gu": (True, True, 64, 16, 128, 1, 4, 5), "down": (False, True, 64, 16, 128, 4, 4, 6)}
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wfetch"
for name, c in cfgs.items():
    for pre, pf in ((0, 0), (1, 0), (2, 0), (4, 0), (0, 2), (0, 4)):
        k = compile_(*c, pre, pf)
        ptx = report(f"{name} pre={pre} pf={pf}", k)
        open(f"{out}/{name}_pre{pre}_pf{pf}.ptx", "w").write("\n".join(ptx))
        try:
            open(f"{out}/{name}_pre{pre}_pf{pf}.cubin", "wb").write(k.asm["cubin"])
        except Exception as e:
            print(e)

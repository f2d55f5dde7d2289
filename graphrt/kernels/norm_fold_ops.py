"""Device-side pieces of the residual add + RMSNorm folded into the swap-AB step GEMMs (host side
and the why: norm_fold.py). Both halves round where `layer_ops.residual_rms_norm_row` rounds, so a
folded pair computes what add_rms_norm + the plain GEMM compute, up to the order of the fp32 sum
of squares (here: per output tile, then tiles in index order; deterministic)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def norm_fold_residual(delta, res_ptr, ss_ptr, rn, rt, live, live_t, stride, M, pid_w):
    """Producer epilogue. delta [BLOCK_W, BLOCK_T] (y^T, already in the model dtype): returns the new
    residual res + delta rounded to the model dtype (as torch's bf16 add) and stores this tile's
    per-token sum of squares of it (fp32) at ss[pid_w, token]."""
    r = tl.load(res_ptr + rt[None, :] * stride + rn[:, None], mask=live, other=0.0)
    s = (r.to(tl.float32) + delta.to(tl.float32)).to(delta.dtype)
    sf = tl.where(live, s.to(tl.float32), 0.0)
    tl.store(ss_ptr + pid_w * M + rt, tl.sum(sf * sf, axis=0), mask=live_t)
    return s


@triton.jit
def norm_fold_inv_rms(ss_ptr, tiles, rt, live_t, M, K, eps, BLOCK_T: tl.constexpr):
    """Consumer prologue: 1 / rms of each token row rt from the producer's `tiles` partial sums,
    added in tile order (the same bits in every program and every replay)."""
    ss = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for j in range(0, tiles):
        ss += tl.load(ss_ptr + j * M + rt, mask=live_t, other=0.0)
    return 1.0 / tl.sqrt(ss / K + eps)


@triton.jit
def norm_fold_weight(nw_ptr, k0, K, BLOCK_K: tl.constexpr):
    """The norm weight of columns k0 .. k0 + BLOCK_K in fp32 (zeros past K)."""
    kk = k0 + tl.arange(0, BLOCK_K)
    return tl.load(nw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)


@triton.jit
def norm_fold_rows(x, inv, w):
    """Consumer: a residual tile x [BLOCK_T, BLOCK_K] -> rmsnorm(x) * w (w: its columns' norm weight,
    fp32) in the model dtype, rounded after the scaling and after the weight, as
    residual_rms_norm_row rounds."""
    normed = (x.to(tl.float32) * inv[:, None]).to(x.dtype)
    return (w[None, :] * normed.to(tl.float32)).to(x.dtype)

"""Attention of the three stages as key ranges for a varlen kernel: no [B, H, Q, K] mask.

Fixed layouts per bucket (each row owns a fixed slice of the packed axis), so cu_seqlens stay
the same across replays and only `seqused_k` and the write slots change:

- vision: image i owns patches [i*P, (i+1)*P); full attention over its first n_i patches;
- prefill: segment b owns queries [b*T, (b+1)*T), tokens right-aligned; causal (bottom-right)
  over the slots [0, n_b) of its cache row (any row: cu_k holds row*S per segment, and with
  seqused_k the kernel reads only cu_k[b], so the starts need not be increasing). A segment may
  continue a cached prefix: its tokens sit at slots n_b - m .. n_b - 1;
- MTP step: row b owns 2*6 queries: 6 accepted slots (right-aligned, k real) then the 6-slot
  window. Accepted queries are causal over [0, c+k). The window must see [0, c+k-1) and its own
  6 keys, but not slot c+k-1. So its K/V is written one slot to the left, over that slot, making
  the key set contiguous: [0, c+k+5). The accepted token's K/V is then written back. Three small
  scatters and two varlen calls per layer ("shifted window").

The alternative kept for comparison (`StepRangesLSE`, window_plan="lse"): the window's K/V stays
at its own slots; the window attends [0, c+k-1) and its 6 keys in two non-causal calls, and the
two results are merged by their log-sum-exp. No write-back, one more kernel and the merge.

With the fused kernel set (`kernels="fused"`) the step needs neither: `StepKernelRanges` writes
every token's K/V at its own slot and graphrt/kernels/step_attention.py applies the window rule
in-kernel from each row's c and k.

Pad queries write to the row's dead slot (the last one), which no range ever reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .varlen import VarlenKernel


@dataclass
class VisionRanges:
    kernel: VarlenKernel
    patches: int  # P, per image slot
    cu: torch.Tensor  # [B+1] int32 = arange * P
    seqused: torch.Tensor  # [B] int32 real patches per image
    # The fused vision tower reads this to run its own slot kernel over these ranges (graphrt/vision.py).
    layout = "slots"

    def __call__(self, q, k, v, geo=None):
        return self.kernel(q, k, v, self.cu, self.cu, self.patches, self.patches, self.seqused, False)


@dataclass
class PrefillRanges:
    kernel: VarlenKernel
    length: int  # T, query slots per row
    slots: int  # S, cache slots per row
    positions: torch.Tensor  # [B*T]
    rows: torch.Tensor  # [B*T] cache row of each query slot
    write_slots: torch.Tensor  # [B*T] cache slot (dead slot for pads)
    cu_q: torch.Tensor  # [B+1] int32 = arange * T
    cu_k: torch.Tensor  # [B+1] int32 = cache row * S per segment (last entry unread)
    seqused: torch.Tensor  # [B] int32 keys per segment: cached prefix + its tokens (+ its window)
    # A merged first round (window = 6): the last 6 query slots of each segment are its MTP window
    # (the last prompt token again, 5 MASK), their K/V the segment's last 6 keys; the window sees
    # every key but the last prompt token's (used - 7). The torch kernel set needs the window's
    # ranges for two calls merged by log-sum-exp (cu_w = arange * 6, cu_k_w = row*S + used - 6).
    window: int = 0
    cu_w: torch.Tensor | None = None
    cu_k_w: torch.Tensor | None = None
    seqused_prefix: torch.Tensor | None = None  # used - 7
    window_len: torch.Tensor | None = None  # 6

    def __call__(self, layer, q, k, v, cache, plan=None):
        cache.write(layer, self.rows, self.write_slots, k, v)
        kf, vf = _flat(cache.k[layer], cache.rows), _flat(cache.v[layer], cache.rows)
        out = self.kernel(q, kf, vf, self.cu_q, self.cu_k, self.length, self.slots, self.seqused, True)
        return self._window_lse(self.kernel, q, kf, vf, out) if self.window else out

    def _window_lse(self, kernel, q, kf, vf, out):
        """The window rows' attention (their causal outputs replaced) from two non-causal calls,
        every key before the last prompt token and the window's own keys, merged by their
        log-sum-exp (as StepRangesLSE)."""
        w, t = self.window, self.length
        rows = q.view(-1, t, *q.shape[1:])[:, t - w :]
        qw = rows.reshape(-1, *q.shape[1:])
        o1, l1 = kernel(qw, kf, vf, self.cu_w, self.cu_k, w, self.slots, self.seqused_prefix, False, return_lse=True)
        o2, l2 = kernel(qw, kf, vf, self.cu_w, self.cu_k_w, w, w, self.window_len, False, return_lse=True)
        l1, l2 = l1.t()[..., None], l2.t()[..., None]
        top = torch.maximum(l1, l2)
        w1, w2 = torch.exp(l1 - top), torch.exp(l2 - top)
        ow = ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(q.dtype)
        out.view(-1, t, *out.shape[1:])[:, t - w :] = ow.view(-1, w, *ow.shape[1:])
        return out

    def fused(self, layer, qkv, cos, sin, cache, num_heads, num_kv_heads):
        """Fused path: one kernel ropes q/k and writes K/V into the cache, then the attention call
        (graphrt/kernels/prefill_attention.py's kernel where it runs: faster than FA2 here)."""
        # lazy: triton is optional (fused kernel set only)
        from graphrt.kernels.layer_ops import rope_write
        from graphrt.kernels.prefill_attention import kernel_for

        q = rope_write(qkv, cos, sin, self.rows, self.write_slots, cache.k[layer], cache.v[layer],
                       num_heads, num_kv_heads)
        kf, vf = _flat(cache.k[layer], cache.rows), _flat(cache.v[layer], cache.rows)
        kernel = kernel_for(q, self.kernel)
        if self.window and kernel is not self.kernel:  # the Triton kernel applies the window rule itself
            out = kernel(q, kf, vf, self.cu_q, self.cu_k, self.length, self.slots, self.seqused, True,
                         window=self.window)
        else:
            out = kernel(q, kf, vf, self.cu_q, self.cu_k, self.length, self.slots, self.seqused, True)
            if self.window:
                out = self._window_lse(kernel, q, kf, vf, out)
        return out.reshape(qkv.shape[0], -1)


@dataclass
class StepRanges:
    kernel: VarlenKernel
    block: int  # 6: accepted slots = window slots
    slots: int  # S
    positions: torch.Tensor  # [B*2*block]
    acc_rows: torch.Tensor  # [B*block]
    acc_slots: torch.Tensor  # [B*block] (dead slot for pads)
    win_rows: torch.Tensor  # [B*block]
    win_slots: torch.Tensor  # [B*block] = c+k-1 .. c+k+4 (shifted one to the left)
    last_rows: torch.Tensor  # [B]
    last_slots: torch.Tensor  # [B] = c+k-1, the last accepted token
    cu_q: torch.Tensor  # [B+1] int32 = arange * block
    cu_k: torch.Tensor  # [B+1] int32 = arange * S
    seqused_acc: torch.Tensor  # [B] int32 = c+k
    seqused_win: torch.Tensor  # [B] int32 = c+k+5

    def __call__(self, layer, q, k, v, cache, plan=None):
        b, a = self.seqused_acc.shape[0], self.block
        oa, (qw, kf, vf), (ka, va) = _accepted_then_window(self, layer, q, k, v, cache)
        ow = self.kernel(qw, kf, vf, self.cu_q, self.cu_k, a, self.slots, self.seqused_win, False)
        last = slice(a - 1, None, a)  # each row's last accepted slot
        cache.write(layer, self.last_rows, self.last_slots, ka[last], va[last])
        return _join(oa, ow, b, a, q.shape)


@dataclass
class StepRangesLSE:
    kernel: VarlenKernel
    block: int
    slots: int
    positions: torch.Tensor  # [B*2*block]
    acc_rows: torch.Tensor
    acc_slots: torch.Tensor
    win_rows: torch.Tensor
    win_slots: torch.Tensor  # [B*block] = c+k .. c+k+5 (the window's own slots)
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    cu_k_window: torch.Tensor  # [B+1] int32 = row*S + c+k: each row's window keys
    seqused_acc: torch.Tensor  # c+k
    seqused_prefix: torch.Tensor  # c+k-1: every key before the window but the last accepted one
    seqused_window: torch.Tensor  # 6

    def __call__(self, layer, q, k, v, cache, plan=None):
        b, a = self.seqused_acc.shape[0], self.block
        oa, (qw, kf, vf), (ka, va) = _accepted_then_window(self, layer, q, k, v, cache)
        o1, l1 = self.kernel(qw, kf, vf, self.cu_q, self.cu_k, a, self.slots, self.seqused_prefix, False,
                             return_lse=True)
        o2, l2 = self.kernel(qw, kf, vf, self.cu_q, self.cu_k_window, a, a, self.seqused_window, False,
                             return_lse=True)
        l1, l2 = l1.t()[..., None], l2.t()[..., None]  # [B*block, H, 1]
        top = torch.maximum(l1, l2)
        w1, w2 = torch.exp(l1 - top), torch.exp(l2 - top)
        ow = ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(q.dtype)
        return _join(oa, ow, b, a, q.shape)


@dataclass
class StepKernelRanges:
    """The step on the fused kernels: this step's K/V at the tokens' own slots (accepted tokens at
    c.., pads at the dead slot, the window at c+k..c+k+5), then graphrt.kernels.step_attention,
    which applies the window rule from each row's c and k. No shift, no write-back."""
    positions: torch.Tensor | None  # [B*2*block]; None when the step prologue kernel made cos/sin
    write_rows: torch.Tensor  # [B*2*block]
    write_slots: torch.Tensor  # [B*2*block]
    cache_len: torch.Tensor  # [B] c
    pending_count: torch.Tensor  # [B] k
    attention: object  # graphrt.kernels.step_attention.StepAttention for this B

    def fused(self, layer, qkv, cos, sin, cache, num_heads, num_kv_heads):
        from graphrt.kernels.layer_ops import rope_write  # lazy: triton is optional (fused kernel set only)

        if self.attention.rope == "attention":  # RoPE and the cache write inside the split kernel
            out = self.attention.with_rope(qkv, cos, sin, self.write_rows, self.write_slots, cache.k[layer],
                                           cache.v[layer], self.cache_len, self.pending_count)
            return out.view(qkv.shape[0], -1)
        q = rope_write(qkv, cos, sin, self.write_rows, self.write_slots, cache.k[layer], cache.v[layer],
                       num_heads, num_kv_heads)
        out = self.attention(q, cache.k[layer], cache.v[layer], self.cache_len, self.pending_count)
        return out.view(qkv.shape[0], -1)


def _accepted_then_window(plan, layer, q, k, v, cache):
    """What both step plans share: write the accepted tokens' K/V and attend them causally, then
    write the window's K/V at `plan.win_slots`. Returns the accepted outputs, the window queries
    with the flat K/V views of the rows, and the accepted K/V."""
    b, a = plan.seqused_acc.shape[0], plan.block
    (qa, qw), (ka, kw), (va, vw) = (_halves(t, b, a) for t in (q, k, v))
    kf, vf = _flat(cache.k[layer], b), _flat(cache.v[layer], b)
    cache.write(layer, plan.acc_rows, plan.acc_slots, ka, va)
    oa = plan.kernel(qa, kf, vf, plan.cu_q, plan.cu_k, a, plan.slots, plan.seqused_acc, True)
    cache.write(layer, plan.win_rows, plan.win_slots, kw, vw)
    return oa, (qw, kf, vf), (ka, va)


def _halves(t: torch.Tensor, b: int, a: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed step tokens [b*2a, H, D] -> (accepted [b*a, H, D], window [b*a, H, D]), each contiguous."""
    rows = t.view(b, 2 * a, *t.shape[1:])
    return rows[:, :a].reshape(-1, *t.shape[1:]), rows[:, a:].reshape(-1, *t.shape[1:])


def _join(accepted: torch.Tensor, window: torch.Tensor, b: int, a: int, shape) -> torch.Tensor:
    """Inverse of _halves."""
    return torch.cat([accepted.view(b, a, *accepted.shape[1:]), window.view(b, a, *window.shape[1:])], 1).reshape(shape)


def _flat(cache_layer: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows_all, S, H, D] -> [rows*S, H, D] view of the first `rows` rows."""
    return cache_layer[:rows].view(-1, *cache_layer.shape[2:])

"""The fused MTP step's inputs in one kernel: what capture/pipeline.py's step builds with ~20
small torch kernels (wheres, cats and adds on slots and positions, the embedding gather,
RotaryEmbedding's mul/cat/cos/sin/casts) before the first layer.

Per step token t of row r (2W tokens a row: W accepted slots, right-aligned, then the W-slot window):
    accepted j (k real ones at the right): slot c + j - (W - k) and that position; pads: slot `dead`,
                                           position 0; id pending[r, j]
    window j:                              slot c + k + j, position c + k - 1 + j; id pending[r, W-1]
                                           for j = 0, else the mask id
    -> embeds[t] = embedding[id], cos/sin[t] = table[position], write_slots[t] = slot
The cos/sin tables are RotaryEmbedding's output for positions 0..S-1, computed once with the same
torch ops the per-step call runs (element-wise ops: one position's values do not depend on the
batch they are computed in), so the gathered rows are those ops' bits. GRAPHRT_STEP_PROLOGUE=torch
(A/B) keeps the torch ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import env_choice, pdl
from .pdl_ops import pdl_enter


def mode() -> str:
    return env_choice("GRAPHRT_STEP_PROLOGUE", ("kernel", "torch"))


@triton.jit
def _step_prologue_kernel(pend_ptr, count_ptr, clen_ptr, mask_ptr, emb_ptr, cos_tab_ptr, sin_tab_ptr,
                          embeds_ptr, cos_ptr, sin_ptr, slots_ptr, dead, pend_stride, mask_stride, hidden,
                          W: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    t = tl.program_id(0)
    r = t // (2 * W)
    i = t % (2 * W)
    j = i % W
    c = tl.load(clen_ptr + r).to(tl.int64)
    k = tl.load(count_ptr + r).to(tl.int64)
    accepted = i < W
    first_real = W - k
    real = j >= first_real
    w0 = c + k
    slot = tl.where(accepted, tl.where(real, c + j - first_real, dead), w0 + j)
    pos = tl.where(accepted, tl.where(real, slot, 0), w0 - 1 + j)
    from_pend = accepted | (j == 0)
    pend_id = tl.load(pend_ptr + r * pend_stride + tl.where(accepted, j, W - 1), mask=from_pend, other=0)
    mask_id = tl.load(mask_ptr + r * mask_stride + tl.maximum(j - 1, 0), mask=~from_pend, other=0)
    tid = tl.where(from_pend, pend_id, mask_id).to(tl.int64)
    tl.store(slots_ptr + t, slot)
    d = tl.arange(0, D)
    tl.store(cos_ptr + t * D + d, tl.load(cos_tab_ptr + pos * D + d))
    tl.store(sin_ptr + t * D + d, tl.load(sin_tab_ptr + pos * D + d))
    for h0 in range(0, hidden, BLOCK):
        h = h0 + tl.arange(0, BLOCK)
        live = h < hidden
        tl.store(embeds_ptr + t * hidden + h, tl.load(emb_ptr + tid * hidden + h, mask=live), mask=live)


class StepPrologue:
    """The step's inputs for one model: the cos/sin tables (positions [0, slots)) made once at load."""

    def __init__(self, rotary, embedding: torch.Tensor, slots: int, dead: int):
        self.embedding, self.dead = embedding, dead
        positions = torch.arange(slots, device=embedding.device)
        self.cos_table, self.sin_table = (t.contiguous() for t in rotary(positions, embedding.dtype))

    def __call__(self, pending: torch.Tensor, pending_count: torch.Tensor, cache_len: torch.Tensor,
                 mask_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """pending [B, W], pending_count/cache_len [B], mask_ids [B, W-1] (row views of the step
        state) -> embeds [B*2W, hidden], cos/sin [B*2W, D], write_slots [B*2W] (long)."""
        b, w = pending.shape
        assert mask_ids.shape == (b, w - 1) and pending.stride(1) == 1 and mask_ids.stride(1) == 1
        t, hidden, d = b * 2 * w, self.embedding.shape[1], self.cos_table.shape[1]
        dev, dt = self.embedding.device, self.embedding.dtype
        embeds = torch.empty((t, hidden), dtype=dt, device=dev)
        cos = torch.empty((t, d), dtype=dt, device=dev)
        sin = torch.empty((t, d), dtype=dt, device=dev)
        slots = torch.empty((t,), dtype=torch.long, device=dev)
        block = min(4096, triton.next_power_of_2(hidden))
        _step_prologue_kernel[(t,)](
            pending, pending_count, cache_len, mask_ids, self.embedding, self.cos_table, self.sin_table,
            embeds, cos, sin, slots, self.dead, pending.stride(0), mask_ids.stride(0), hidden,
            W=w, D=d, BLOCK=block, num_warps=4, **pdl.launch(embeds))
        return embeds, cos, sin, slots

"""What one LM forward attends to, as a few index tensors instead of a [B, H, Q, K] mask.

Tokens of all rows are packed along one axis. Each packed segment belongs to one KV-cache row;
each token has a cache slot (its key index) and a RoPE position. The key set of every query is
one rule for all stages:

    query i sees key j  <=>  j <= hi[i]  and  j != blocked[i]

- prefill / accepted tokens: hi = own slot, blocked = -1 (plain causal);
- MTP window (6 slots starting at slot W0): hi = W0 + 5, blocked = W0 - 1. The window sees every
  earlier key except the last accepted token (which its first slot repeats at the same position)
  and sees all six window keys, bidirectionally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionPlan:
    token_rows: torch.Tensor  # [T] cache row of each packed token (where its K/V is written)
    token_slots: torch.Tensor  # [T] cache slot (= key index) of each packed token
    positions: torch.Tensor  # [T] RoPE position
    q_hi: torch.Tensor  # [T] last visible key index
    q_blocked: torch.Tensor  # [T] one invisible key index below q_hi, or -1
    segments: list[tuple[int, int, int, int]]  # host copy for eager: (cache row, q_start, q_end, kv_len)

    @property
    def num_tokens(self) -> int:
        return int(self.token_rows.shape[0])


class PlanBuilder:
    """Accumulates packed segments on the host, then emits one AttentionPlan on the device."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.slots: list[int] = []
        self.positions: list[int] = []
        self.hi: list[int] = []
        self.blocked: list[int] = []
        self.segments: list[tuple[int, int, int, int]] = []

    def add_causal(self, row: int, first_slot: int, count: int) -> None:
        """`count` tokens at slots first_slot.. (position = slot), causal over the row's cache."""
        if count <= 0:
            return
        start = len(self.rows)
        for slot in range(first_slot, first_slot + count):
            self._token(row, slot, slot, slot, -1)
        self._close(row, start, first_slot + count)

    def add_step(self, row: int, cached: int, accepted: int, window: int) -> None:
        """One MTP step of a row: `accepted` causal tokens after `cached` keys, then the window.

        Window slot 0 repeats the last accepted token at that token's position; the other slots
        sit at the following positions (slot - 1), so RoPE sees [p, p+1, ..., p+window-1].
        """
        start = len(self.rows)
        for slot in range(cached, cached + accepted):
            self._token(row, slot, slot, slot, -1)
        w0 = cached + accepted
        for slot in range(w0, w0 + window):
            self._token(row, slot, slot - 1, w0 + window - 1, w0 - 1)
        self._close(row, start, w0 + window)

    def build(self, device: torch.device | str) -> AttentionPlan:
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
        return AttentionPlan(
            token_rows=as_long(self.rows),
            token_slots=as_long(self.slots),
            positions=as_long(self.positions),
            q_hi=as_long(self.hi),
            q_blocked=as_long(self.blocked),
            segments=list(self.segments),
        )

    def _token(self, row: int, slot: int, position: int, hi: int, blocked: int) -> None:
        self.rows.append(row)
        self.slots.append(slot)
        self.positions.append(position)
        self.hi.append(hi)
        self.blocked.append(blocked)

    def _close(self, row: int, start: int, kv_len: int) -> None:
        self.segments.append((row, start, len(self.rows), kv_len))


def dense_mask(q_hi: torch.Tensor, q_blocked: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Boolean [Q, kv_len] mask of the rule above (True = visible). The reference for every backend."""
    keys = torch.arange(kv_len, device=q_hi.device)
    return (keys[None, :] <= q_hi[:, None]) & (keys[None, :] != q_blocked[:, None])

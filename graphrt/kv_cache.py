"""Static KV cache: allocated once as [layers, rows, slots, kv_heads, head_dim], written in place."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layers: int, rows: int, slots: int, kv_heads: int, head_dim: int, dtype, device):
        shape = (layers, rows, slots, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def slots(self) -> int:
        return self.k.shape[2]

    def write(self, layer: int, rows: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k/v [T, kv_heads, head_dim] go to (rows[t], slots[t])."""
        self.k[layer].index_put_((rows, slots), k)
        self.v[layer].index_put_((rows, slots), v)

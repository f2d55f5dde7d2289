"""The memory plan: graph buckets and KV cache derived from one budget (EngineOptions.memory_gb).

    total = weights + KV cache + static buffers + graph pool + overhead  <=  memory_gb

- weights: measured on the loaded model (parameters and buffers);
- KV cache: exact (rows x slots x layers x K and V x KV heads x head dim x dtype bytes); rows =
  the largest batch, slots = the largest prompt + max_new_tokens + a step of overshoot;
- static buffers: the pipeline's inputs (sized by the largest vision and prefill replay), the
  per-row state, and the per-grid input tables kept for the last few image sizes (counted at the
  largest image), from the same sizes the pipeline allocates;
- graph pool: an estimate. Graphs share one pool and replay one at a time, so the pool holds
  about the activations of the largest replay: per patch (vision), per prompt token (prefill) or
  per step row (step: the window's activations and its fp32 vocabulary rows), times a margin
  for the allocator's rounding and fragmentation (POOL_MARGIN);
- overhead: the CUDA context, library workspaces and compiled kernels (OVERHEAD_GIB).

Without buckets given, the plan takes the richest configuration that fits, in this order: the
largest batch first (decode throughput), then the largest replay budgets. With buckets given, it
only checks them. What does not fit raises an OptionError that names memory_gb and the parts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from graphrt.errors import OptionError

from .buckets import Buckets
from .inputs import GRIDS_KEPT

log = logging.getLogger(__name__)

GIB = 2**30
# The allocator's block rounding and the fragmentation of one shared pool. Measured once (H100,
# random 3B, 2026-11-24): a 3.0 GiB pool where the activations above estimate 2.1 GiB (x1.43).
POOL_MARGIN = 1.5
OVERHEAD_GIB = 1.0  # CUDA context (~0.5 GiB on an H100), cuBLAS/Triton workspaces, the image stage
BATCHES = (32, 16, 8, 4, 2, 1)  # largest batch tried, richest first
# (vision patches, prefill tokens) per replay tried, richest first; the last is one largest image
BUDGETS = ((32 * 4144, 32 * 1280), (65_536, 20_480), (2, 2), (1, 1))


@dataclass(frozen=True)
class MemoryPlan:
    memory_gb: float | None
    buckets: Buckets
    weights: int
    kv_cache: int
    buffers: int
    graph_pool: int  # estimated
    overhead: int
    slots: int  # KV slots per row
    derived: bool  # the buckets were derived here (else given and checked)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.graph_pool + self.overhead

    def fits(self) -> bool:
        return self.memory_gb is None or self.total <= self.memory_gb * GIB

    def parts(self) -> str:
        return ", ".join(f"{name} {getattr(self, name) / GIB:.2f}" for name in
                         ("weights", "kv_cache", "graph_pool", "buffers", "overhead")) + " GiB"

    def describe(self) -> dict:
        b = self.buckets
        return {"memory_gb": self.memory_gb, "planned_gib": round(self.total / GIB, 2),
                **{f"{name}_gib": round(getattr(self, name) / GIB, 2)
                   for name in ("weights", "kv_cache", "graph_pool", "buffers", "overhead")},
                "graph_pool": "estimated (the measured pool is graph_pool_mib)",
                "buckets": "derived from memory_gb" if self.derived else "given (EngineOptions.buckets), checked",
                "kv_rows": b.max_batch, "kv_slots_per_row": self.slots, "vision_budget": b.vision_budget,
                "prefill_budget": b.prefill_budget, "vision_keys": [list(k) for k in b.vision_keys()],
                "prefill_keys": [list(k) for k in b.prefill_keys()], "batch_sizes": list(b.batch_sizes)}


def model_weights_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def plan_for_model(model, memory_gb: float | None, buckets: Buckets | None = None) -> MemoryPlan:
    """The plan of a loaded model (its weights measured); on a GPU smaller than memory_gb, the
    GPU's memory is the budget (a warning says so)."""
    if memory_gb is not None and model.device.type == "cuda":
        gpu = torch.cuda.get_device_properties(model.device).total_memory / GIB
        if memory_gb > gpu:
            log.warning("memory_gb=%g exceeds this GPU's %.1f GiB; planning for the GPU", memory_gb, gpu)
            memory_gb = gpu
    return plan_memory(model.cfg, model.dtype.itemsize, model_weights_bytes(model), memory_gb, buckets)


def estimate(cfg, dtype_bytes: int, weights: int, buckets: Buckets, memory_gb: float | None,
             derived: bool = False) -> MemoryPlan:
    """The plan's parts for these buckets (cfg: graphrt.config.ModelConfig)."""
    t, v = cfg.text, cfg.vision
    block = t.block_size
    slots = buckets.cache_slots(block)
    rows = buckets.max_batch
    kv = t.num_hidden_layers * rows * slots * 2 * t.num_key_value_heads * t.head_dim * dtype_bytes
    vcap, pcap = buckets.vision_capacity, buckets.prefill_capacity
    pix = 3 * v.patch_size ** 2
    # vision inputs per patch: uint8 pixels, position rows, fp32 cos/sin, merge index; vision_out
    # (2 x vcap/4 rows); prefill inputs per token (5 int64/bool tensors); per-row state (seen
    # tokens over the vocabulary, output tokens) and the prompt-id seeds
    buffers = (vcap * (pix + v.hidden_size * dtype_bytes + 2 * (v.head_dim // 2) * 4 + 8)
               + 2 * (vcap // 4) * t.hidden_size * dtype_bytes + pcap * 33
               + rows * (t.vocab_size + 1) * 2 + rows * (buckets.max_new_tokens + 2 * block) * 8
               + rows * (buckets.max_prefill + 1) * 8 + buckets.max_patches * pix
               # per-grid input tables (capture/inputs.py), GRIDS_KEPT grids of the largest image:
               # int32 patch-order index, position rows, fp32 RoPE cos/sin
               + GRIDS_KEPT * buckets.max_patches * (4 * pix + v.hidden_size * dtype_bytes + 4 * v.head_dim))
    pool = int(POOL_MARGIN * max(vcap * vision_bytes_per_patch(cfg, dtype_bytes),
                                 pcap * lm_bytes_per_token(cfg, dtype_bytes),
                                 rows * 2 * block * lm_bytes_per_token(cfg, dtype_bytes)
                                 + rows * block * t.vocab_size * 12))
    return MemoryPlan(memory_gb, buckets, weights, kv, int(buffers), pool, int(OVERHEAD_GIB * GIB), slots, derived)


def vision_bytes_per_patch(cfg, dtype_bytes: int) -> int:
    """Live activations of one patch in the widest moment of a vision layer: residual, normed
    input, q/k/v, attention output, the MLP's hidden (in and out of the activation), plus the
    float pixels and RoPE rows of the stage's input."""
    v = cfg.vision
    return dtype_bytes * (6 * v.hidden_size + 3 * v.intermediate_size) + 4 * 3 * v.patch_size ** 2 + 4 * v.head_dim


def lm_bytes_per_token(cfg, dtype_bytes: int) -> int:
    """The same for one token of a decoder layer (gate, up and their product in the MLP)."""
    t = cfg.text
    qkv = (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim
    return dtype_bytes * (6 * t.hidden_size + 3 * t.intermediate_size + qkv)


def plan_memory(cfg, dtype_bytes: int, weights: int, memory_gb: float | None,
                buckets: Buckets | None = None) -> MemoryPlan:
    """Buckets given: check them against memory_gb. Else derive them: the richest configuration
    (largest batch, then largest replay budgets) whose estimate fits. Raises OptionError naming
    memory_gb when nothing fits."""
    if buckets is not None:
        plan = estimate(cfg, dtype_bytes, weights, buckets, memory_gb)
        if not plan.fits():
            raise OptionError(f"memory_gb={memory_gb:g}: the given buckets need {plan.total / GIB:.2f} GiB "
                              f"({plan.parts()}); raise memory_gb, or give smaller buckets (batch sizes, "
                              f"vision_budget, prefill_budget, max_new_tokens)")
        return plan
    base = Buckets()
    smallest = None
    for batch in BATCHES:
        sizes = tuple(b for b in base.batch_sizes if b <= batch)
        for vision, prefill in BUDGETS:
            if (vision, prefill) == (2, 2) or (vision, prefill) == (1, 1):  # multiples of the largest sizes
                vision, prefill = vision * base.max_patches, prefill * base.max_prefill
            vision, prefill = max(vision, sizes[0] * base.max_patches), max(prefill, sizes[0] * base.max_prefill)
            candidate = dataclasses.replace(base, batch_sizes=sizes, vision_budget=vision, prefill_budget=prefill)
            plan = estimate(cfg, dtype_bytes, weights, candidate, memory_gb, derived=True)
            if plan.fits():
                return plan
            smallest = plan
    raise OptionError(f"memory_gb={memory_gb:g} is too small: even batch 1 with one largest image per replay "
                      f"needs {smallest.total / GIB:.2f} GiB ({smallest.parts()}); raise memory_gb (at least "
                      f"{smallest.total / GIB:.1f}), or give EngineOptions.buckets with a smaller max_new_tokens "
                      f"or largest image size")

"""Engine.status(): what an engine runs with, as one JSON-ready dict (the CLI's `status`, the service)."""

from __future__ import annotations

import dataclasses

import torch


def engine_status(model, checkpoint_dir, backend, memory_plan, options) -> dict:
    """Checkpoint, device, dtype, parameters, the backend's own status, memory plan, generation
    defaults, FP8, and on a GPU its name and memory (MiB)."""
    out = {
        "checkpoint": str(checkpoint_dir),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        **backend.status(),
        **({"memory_plan": memory_plan.describe()} if memory_plan is not None else {}),
        "generation": dataclasses.asdict(options.generation),
        "share_prefix": options.share_prefix,
        "fp8": model.fp8_info.summary() if getattr(model, "fp8_info", None) else "off (bf16 linears)",
    }
    vision = getattr(model, "vision", None)
    if vision is not None and hasattr(vision, "attention_status"):
        out["vision_attention"] = vision.attention_status()
    if model.device.type == "cuda":
        mib = 2**20
        out["gpu"] = torch.cuda.get_device_name(model.device)
        out["gpu_memory_allocated_mib"] = round(torch.cuda.memory_allocated(model.device) / mib, 1)
        out["gpu_memory_reserved_mib"] = round(torch.cuda.memory_reserved(model.device) / mib, 1)
        out["gpu_memory_total_mib"] = round(torch.cuda.get_device_properties(model.device).total_memory / mib, 1)
    return out

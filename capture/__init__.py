"""CUDA-graph runtime: buckets, static buffers, captured vision / prefill / MTP-step stages."""

from .buckets import Buckets
from .runtime import GraphRuntime

__all__ = ["Buckets", "GraphRuntime"]

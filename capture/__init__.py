"""CUDA-graph runtime: buckets, per-row state, static buffers, captured vision / prefill / MTP-step
stages, and the graph backend the engine runs them through."""

from .backend import GraphBackend
from .buckets import Buckets
from .runtime import GraphRuntime

__all__ = ["Buckets", "GraphBackend", "GraphRuntime"]

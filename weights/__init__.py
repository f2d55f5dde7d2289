"""Checkpoint layout: the declarative weight spec, the safetensors loader, the random-checkpoint writer."""

from .loader import load_weights
from .spec import WeightEntry, weight_spec

__all__ = ["WeightEntry", "weight_spec", "load_weights"]

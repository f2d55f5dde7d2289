"""graphrt: a CUDA-graph-captured, static-shape runtime for NVIDIA LocateAnything-3B.

Data flow: image -> processor -> vision (MoonViT + projector) -> prefill (Qwen2) -> MTP steps -> boxes.
"""

from .boxes import Detection
from .config import ModelConfig
from .engine import Engine, EngineOptions, LocateResult
from .errors import CheckpointError, GraphrtError, InputError, OptionError
from .generate import GenerationConfig
from .generation import Generation, GenerationState
from .sampler import SamplingConfig

__all__ = [
    "CheckpointError", "Detection", "Engine", "EngineOptions", "Generation", "GenerationConfig", "GenerationState", "GraphrtError", "InputError",
    "LocateResult", "ModelConfig", "OptionError", "SamplingConfig",
]
__version__ = "0.1.0"

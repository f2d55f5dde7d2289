"""graphrt: a CUDA-graph-captured, static-shape runtime for NVIDIA LocateAnything-3B.

Data flow: image -> processor -> vision (MoonViT + projector) -> prefill (Qwen2) -> MTP steps -> boxes.

Layers: graphrt's core modules (config, processor, model, decode, ...) are imported by `capture/`,
`weights/` and `calib/`; `graphrt.engine` is built on all of them. So the facade loads the engine
on first use of its names (PEP 562): importing any core module never pulls in the layers above it.
"""

from .boxes import Detection
from .config import ModelConfig
from .decode import GenerationConfig
from .errors import CheckpointError, GraphrtError, InputError, OptionError
from .generation import Generation, GenerationState
from .request import LocateResult
from .sampler import SamplingConfig

_ENGINE_NAMES = ("Engine", "EngineOptions")

__all__ = [
    "CheckpointError", "Detection", "Engine", "EngineOptions", "Generation", "GenerationConfig", "GenerationState", "GraphrtError", "InputError",
    "LocateResult", "ModelConfig", "OptionError", "SamplingConfig",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _ENGINE_NAMES:
        from . import engine  # the top layer (see the module docstring)

        return getattr(engine, name)
    raise AttributeError(f"module 'graphrt' has no attribute {name!r}")

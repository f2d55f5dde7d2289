"""Typed view of a LocateAnything checkpoint's `config.json` and `preprocessor_config.json`.

Every special-token id is read from the checkpoint; none is hard-coded, because test checkpoints
use a small vocabulary with ids of their own.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError


@dataclass(frozen=True)
class VisionConfig:
    """MoonViT encoder."""

    hidden_size: int = 1152
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    intermediate_size: int = 4304
    patch_size: int = 14
    merge_kernel_size: tuple[int, int] = (2, 2)
    init_pos_emb_height: int = 64
    init_pos_emb_width: int = 64
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def merged_dim(self) -> int:
        return self.hidden_size * self.merge_kernel_size[0] * self.merge_kernel_size[1]


@dataclass(frozen=True)
class TextConfig:
    """Qwen2 language model, plus the MTP window size (`block_size`)."""

    vocab_size: int = 152681
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    block_size: int = 6
    causal_attn: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class TokenIds:
    """Special tokens of the grounding grammar. Coordinates are `coord_start + value`, value 0..1000."""

    image: int
    box_start: int
    box_end: int
    ref_start: int
    ref_end: int
    coord_start: int
    coord_end: int
    none: int
    null: int
    switch: int
    im_end: int
    text_mask: int

    def is_coord(self, token: int) -> bool:
        return self.coord_start <= token <= self.coord_end


@dataclass(frozen=True)
class PreprocessorConfig:
    """Image rules of the official image processor (`preprocessor_config.json`)."""

    patch_size: int = 14
    merge_kernel_size: tuple[int, int] = (2, 2)
    in_token_limit: int = 25600
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "preprocessor_config.json") -> "PreprocessorConfig":
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        out = _pick(cls, raw, source, positive_floats=False)
        if any(v <= 0 for v in out.image_std):
            raise CheckpointError(f"{source}: image_std must be positive, found {list(out.image_std)}")
        return out

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, vision: "VisionConfig | None" = None) -> "PreprocessorConfig":
        """The checkpoint's `preprocessor_config.json` (the defaults when it has none), checked
        against the vision config it must agree with."""
        path = Path(checkpoint_dir) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        out = cls.from_dict(_read_json(path), str(path))
        if vision is not None and (out.patch_size, out.merge_kernel_size) != (vision.patch_size,
                                                                               vision.merge_kernel_size):
            raise CheckpointError(f"{path}: patch_size {out.patch_size} / merge_kernel_size "
                                  f"{list(out.merge_kernel_size)} differ from config.json's vision_config "
                                  f"({vision.patch_size} / {list(vision.merge_kernel_size)})")
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            image_processor_type="LocateAnythingImageProcessor",
            processor_class="LocateAnythingProcessor",
            merge_kernel_size=list(self.merge_kernel_size),
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
        )
        return out


# Top-level keys and text_config keys that hold token ids, with the TokenIds field they fill.
_TOP_LEVEL_TOKEN_KEYS = {
    "image_token_index": "image",
    "box_start_token_id": "box_start",
    "box_end_token_id": "box_end",
    "ref_start_token_id": "ref_start",
    "ref_end_token_id": "ref_end",
    "coord_start_token_id": "coord_start",
    "coord_end_token_id": "coord_end",
    "none_token_id": "none",
}
_TEXT_TOKEN_KEYS = {
    "null_token_id": "null",
    "switch_token_id": "switch",
    "eos_token_id": "im_end",
    "text_mask_token_id": "text_mask",
}


@dataclass(frozen=True)
class ModelConfig:
    """The whole checkpoint config, as graphrt uses it."""

    vision: VisionConfig
    text: TextConfig
    tokens: TokenIds
    torch_dtype: str = "bfloat16"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        problems = _not_locateanything(raw)
        if problems:
            raise CheckpointError(f"{source} is not a LocateAnything config: " + "; ".join(problems))
        vraw, traw = raw["vision_config"], raw["text_config"]
        missing = [k for k in _TOP_LEVEL_TOKEN_KEYS if k not in raw]
        missing += [f"text_config.{k}" for k in _TEXT_TOKEN_KEYS if k not in traw]
        if missing:
            raise CheckpointError(f"{source} lacks token ids: {', '.join(missing)}")
        eos = traw["eos_token_id"]
        if isinstance(eos, list):
            if not eos:
                raise CheckpointError(f"{source}: text_config.eos_token_id is an empty list")
            eos = eos[0]
        ids = {field_: _token_id(raw[key], key, source) for key, field_ in _TOP_LEVEL_TOKEN_KEYS.items()}
        ids.update({field_: _token_id(eos if key == "eos_token_id" else traw[key], f"text_config.{key}", source)
                    for key, field_ in _TEXT_TOKEN_KEYS.items()})
        tokens = TokenIds(**ids)
        if tokens.coord_end - tokens.coord_start != 1000:
            raise CheckpointError(f"{source}: coordinate tokens must span 1001 ids (<0>..<1000>)")

        vision = _pick(VisionConfig, vraw, f"{source}: vision_config")
        text = _pick(TextConfig, traw, f"{source}: text_config")
        if vision.hidden_size % vision.num_attention_heads or vision.head_dim % 4:
            raise CheckpointError(f"{source}: MoonViT hidden size {vision.hidden_size} over "
                                  f"{vision.num_attention_heads} heads must give a head dim divisible by 4 (2D RoPE)")
        if text.hidden_size % text.num_attention_heads:
            raise CheckpointError(f"{source}: text hidden_size must be a multiple of num_attention_heads")
        if text.num_attention_heads % text.num_key_value_heads:
            raise CheckpointError(f"{source}: query heads must be a multiple of KV heads")
        if text.vocab_size <= max(ids.values()):
            raise CheckpointError(f"{source}: a token id exceeds vocab_size {text.vocab_size}")
        dtype = raw.get("torch_dtype") or traw.get("torch_dtype") or "bfloat16"
        if not isinstance(dtype, str):
            raise CheckpointError(f"{source}: torch_dtype must be a string, found {dtype!r}")
        return cls(vision=vision, text=text, tokens=tokens, torch_dtype=dtype, extra=raw)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path) -> "ModelConfig":
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{checkpoint_dir}: no config.json (is this a LocateAnything checkpoint directory?)")
        return cls.from_dict(_read_json(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Official `config.json` layout (what `synth-checkpoint` writes)."""
        t, v, ids = self.text, self.vision, self.tokens
        return {
            "architectures": ["LocateAnythingForConditionalGeneration"],
            "model_type": "locateanything",
            "torch_dtype": self.torch_dtype,
            "image_token_index": ids.image,
            "box_start_token_id": ids.box_start,
            "box_end_token_id": ids.box_end,
            "ref_start_token_id": ids.ref_start,
            "ref_end_token_id": ids.ref_end,
            "coord_start_token_id": ids.coord_start,
            "coord_end_token_id": ids.coord_end,
            "none_token_id": ids.none,
            "eos_token_id": ids.im_end,
            "mlp_connector_layers": 2,
            "vision_config": {
                "model_type": "moonvit",
                "hidden_size": v.hidden_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "intermediate_size": v.intermediate_size,
                "patch_size": v.patch_size,
                "merge_kernel_size": list(v.merge_kernel_size),
                "init_pos_emb_height": v.init_pos_emb_height,
                "init_pos_emb_width": v.init_pos_emb_width,
                "torch_dtype": self.torch_dtype,
            },
            "text_config": {
                "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"],
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "hidden_act": "silu",
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": t.rope_theta,
                "rope_scaling": None,
                "max_position_embeddings": t.max_position_embeddings,
                "tie_word_embeddings": t.tie_word_embeddings,
                "use_sliding_window": False,
                "block_size": t.block_size,
                "causal_attn": t.causal_attn,
                "bos_token_id": ids.im_end,
                "eos_token_id": ids.im_end,
                "null_token_id": ids.null,
                "switch_token_id": ids.switch,
                "text_mask_token_id": ids.text_mask,
                "torch_dtype": self.torch_dtype,
            },
        }


def _not_locateanything(raw: dict[str, Any]) -> list[str]:
    problems = []
    arch = raw.get("architectures") or []
    if raw.get("model_type") != "locateanything" and "LocateAnythingForConditionalGeneration" not in arch:
        problems.append(f"model_type is {raw.get('model_type')!r}, expected 'locateanything'")
    vraw, traw = raw.get("vision_config"), raw.get("text_config")
    if not isinstance(vraw, dict) or vraw.get("model_type", "moonvit") != "moonvit":
        problems.append("vision_config must be a MoonViT config")
    if not isinstance(traw, dict):
        problems.append("text_config is missing")
    elif "Qwen2ForCausalLM" not in (traw.get("architectures") or ["Qwen2ForCausalLM"]):
        problems.append(f"text_config architecture {traw.get('architectures')} is not Qwen2ForCausalLM")
    elif traw.get("use_sliding_window"):
        problems.append("sliding-window attention is not supported")
    return problems


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from exc


def _token_id(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{source}: {key} must be a non-negative integer token id, found {value!r}")
    return value


def _pick(cls, raw: dict[str, Any], source: str, positive_floats: bool = True):
    """Build a dataclass from the keys it knows, each checked against its default's type: integers
    (and, unless told otherwise, floats) must be positive, sequences have the default's length.
    Unknown keys are kept in ModelConfig.extra."""
    kwargs = {}
    for name, f in cls.__dataclass_fields__.items():
        if name not in raw:
            continue
        value, default = raw[name], f.default
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise CheckpointError(f"{source}.{name} must be a list of {len(default)} numbers, found {value!r}")
            kwargs[name] = tuple(_scalar(v, d, f"{source}.{name}", positive_floats) for v, d in zip(value, default))
        else:
            kwargs[name] = _scalar(value, default, f"{source}.{name}", positive_floats)
    return cls(**kwargs)


def _scalar(value: Any, default: Any, where: str, positive_floats: bool):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise CheckpointError(f"{where} must be true or false, found {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{where} must be a positive integer, found {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive_floats and value <= 0):
        kind = "a positive number" if positive_floats else "a finite number"
        raise CheckpointError(f"{where} must be {kind}, found {value!r}")
    return float(value)

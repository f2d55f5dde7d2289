"""Model shapes for random checkpoints: `tiny` (tests, demos), `mid` (real widths, few layers),
`3b` (the full released config, for benchmarks). Token-id layouts follow the real tokenizer:
a byte-level BPE base vocabulary, then added special tokens."""

from __future__ import annotations

from dataclasses import dataclass

from graphrt.config import ModelConfig, TextConfig, TokenIds, VisionConfig


@dataclass(frozen=True)
class TokenLayout:
    """Ids of tokens the tokenizer needs that config.json does not list."""

    base_vocab: int  # ids [0, base_vocab) are BPE vocabulary; the rest are added tokens
    endoftext: int
    im_start: int
    img_start: int
    img_end: int


@dataclass(frozen=True)
class Preset:
    config: ModelConfig
    layout: TokenLayout


# Real release: Qwen2.5 ids, LocateAnything grounding tokens after them.
_REAL_TOKENS = TokenIds(
    image=151665, box_start=151668, box_end=151669, ref_start=151672, ref_end=151673,
    coord_start=151677, coord_end=152677, none=4064, null=152678, switch=152679, im_end=151645, text_mask=151676,
)
_REAL_LAYOUT = TokenLayout(base_vocab=151643, endoftext=151643, im_start=151644, img_start=151666, img_end=151667)

# Tiny: 256 byte tokens + "no", "non", "none" (so `none` is one BPE token, as in the real vocab).
_TINY_TOKENS = TokenIds(
    image=262, box_start=265, box_end=266, ref_start=267, ref_end=268,
    coord_start=270, coord_end=1270, none=258, null=1271, switch=1272, im_end=261, text_mask=269,
)
_TINY_LAYOUT = TokenLayout(base_vocab=259, endoftext=259, im_start=260, img_start=263, img_end=264)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        ModelConfig(
            vision=VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                init_pos_emb_height=16, init_pos_emb_width=16),
            text=TextConfig(vocab_size=1273, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096),
            tokens=_TINY_TOKENS,
            torch_dtype="float32",
        ),
        _TINY_LAYOUT,
    ),
    "mid": Preset(
        ModelConfig(
            vision=VisionConfig(num_hidden_layers=2),
            text=TextConfig(num_hidden_layers=2),
            tokens=_REAL_TOKENS,
        ),
        _REAL_LAYOUT,
    ),
    "3b": Preset(ModelConfig(vision=VisionConfig(), text=TextConfig(), tokens=_REAL_TOKENS), _REAL_LAYOUT),
}

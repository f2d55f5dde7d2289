"""The weight spec: one row per tensor of the official HF checkpoint.

Each row names the checkpoint tensor, the model parameter it fills, its shape, and where it lands
inside that parameter when several checkpoint tensors are packed into one (q/k/v -> qkv_proj,
gate/up -> gate_up_proj). The loader and the random-checkpoint writer both read this table, and
the loader checks it against the checkpoint in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrt.config import ModelConfig


@dataclass(frozen=True)
class WeightEntry:
    name: str  # checkpoint tensor name
    param: str | None  # model parameter it fills (None: may be present, is not read)
    shape: tuple[int, ...]
    row_offset: int | None = None  # packed layouts: first row of this tensor inside the parameter
    required: bool = True
    init: str = "weight"  # how the random writer fills it: weight | norm (about 1) | bias (about 0)


def _entry(name, param, shape, *, offset=None, init="weight", required=True) -> WeightEntry:
    return WeightEntry(name, param, tuple(shape), offset, required, init)


def weight_spec(cfg: ModelConfig) -> list[WeightEntry]:
    v, t = cfg.vision, cfg.text
    rows: list[WeightEntry] = []
    add = rows.append

    # MoonViT
    p, h = v.patch_size, v.hidden_size
    add(_entry("vision_model.patch_embed.proj.weight", "vision.patch_weight", (h, 3, p, p)))
    add(_entry("vision_model.patch_embed.proj.bias", "vision.patch_bias", (h,), init="bias"))
    add(_entry("vision_model.patch_embed.pos_emb.weight", "vision.pos_emb", (v.init_pos_emb_height, v.init_pos_emb_width, h)))
    for i in range(v.num_hidden_layers):
        src, dst = f"vision_model.encoder.blocks.{i}", f"vision.blocks.{i}"
        for norm in ("norm0", "norm1"):
            add(_entry(f"{src}.{norm}.weight", f"{dst}.{norm}.weight", (h,), init="norm"))
            add(_entry(f"{src}.{norm}.bias", f"{dst}.{norm}.bias", (h,), init="bias"))
        for name, out_dim, in_dim in (("wqkv", 3 * h, h), ("wo", h, h), ("mlp.fc0", v.intermediate_size, h),
                                      ("mlp.fc1", h, v.intermediate_size)):
            local = name.split(".")[-1]
            add(_entry(f"{src}.{name}.weight", f"{dst}.{local}.weight", (out_dim, in_dim)))
            add(_entry(f"{src}.{name}.bias", f"{dst}.{local}.bias", (out_dim,), init="bias"))
    add(_entry("vision_model.encoder.final_layernorm.weight", "vision.final_layernorm.weight", (h,), init="norm"))
    add(_entry("vision_model.encoder.final_layernorm.bias", "vision.final_layernorm.bias", (h,), init="bias"))

    # Projector (mlp1 = Sequential(LayerNorm, Linear, GELU, Linear))
    m, d = v.merged_dim, t.hidden_size
    add(_entry("mlp1.0.weight", "projector.norm.weight", (m,), init="norm"))
    add(_entry("mlp1.0.bias", "projector.norm.bias", (m,), init="bias"))
    add(_entry("mlp1.1.weight", "projector.fc1.weight", (d, m)))
    add(_entry("mlp1.1.bias", "projector.fc1.bias", (d,), init="bias"))
    add(_entry("mlp1.3.weight", "projector.fc2.weight", (d, d)))
    add(_entry("mlp1.3.bias", "projector.fc2.bias", (d,), init="bias"))

    # Qwen2
    q, kv, ff = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim, t.intermediate_size
    add(_entry("language_model.model.embed_tokens.weight", "llm.embed_tokens.weight", (t.vocab_size, d)))
    for i in range(t.num_hidden_layers):
        src, dst = f"language_model.model.layers.{i}", f"llm.layers.{i}"
        add(_entry(f"{src}.input_layernorm.weight", f"{dst}.input_layernorm.weight", (d,), init="norm"))
        add(_entry(f"{src}.post_attention_layernorm.weight", f"{dst}.post_attention_layernorm.weight", (d,), init="norm"))
        for name, offset, size in (("q_proj", 0, q), ("k_proj", q, kv), ("v_proj", q + kv, kv)):
            add(_entry(f"{src}.self_attn.{name}.weight", f"{dst}.qkv_proj.weight", (size, d), offset=offset))
            add(_entry(f"{src}.self_attn.{name}.bias", f"{dst}.qkv_proj.bias", (size,), offset=offset, init="bias"))
        add(_entry(f"{src}.self_attn.o_proj.weight", f"{dst}.o_proj.weight", (d, q)))
        add(_entry(f"{src}.mlp.gate_proj.weight", f"{dst}.gate_up_proj.weight", (ff, d), offset=0))
        add(_entry(f"{src}.mlp.up_proj.weight", f"{dst}.gate_up_proj.weight", (ff, d), offset=ff))
        add(_entry(f"{src}.mlp.down_proj.weight", f"{dst}.down_proj.weight", (d, ff)))
    add(_entry("language_model.model.norm.weight", "llm.norm.weight", (d,), init="norm"))
    if t.tie_word_embeddings:
        # Some exports store the tied head too; it equals embed_tokens and is not read.
        add(_entry("language_model.lm_head.weight", None, (t.vocab_size, d), required=False))
    else:
        add(_entry("language_model.lm_head.weight", "llm.lm_head.weight", (t.vocab_size, d)))
    return rows


# Checkpoint tensors that may exist but carry nothing the model needs (recomputed buffers).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

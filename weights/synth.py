"""Write random checkpoints in the official layout: config.json, preprocessor_config.json,
chat_template.json, a byte-level BPE tokenizer holding every special token, and safetensors
weights (sharded with an index when large). Random weights give random tokens: these
checkpoints exist to test and time the runtime, never to judge answers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from graphrt.config import ModelConfig, PreprocessorConfig
from graphrt.prompt import DEFAULT_CHAT_TEMPLATE

from .loader import INDEX_FILE
from .presets import PRESETS, TokenLayout
from .spec import WeightEntry, weight_spec
from .synth_tokenizer import build_bpe

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


DEFAULT_SHARD_BYTES = 2 << 30


def write_preset(name: str, out_dir: str | Path, seed: int = 0, progress: bool = True, device: str = "cpu",
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """One file `model.safetensors` when the weights fit in `max_shard_bytes` (tiny, mid), else
    shards `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json` (3b)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return write_checkpoint(preset.config, preset.layout, out_dir, seed=seed, progress=progress, device=device,
                            max_shard_bytes=max_shard_bytes)


def write_checkpoint(
    cfg: ModelConfig,
    layout: TokenLayout,
    out_dir: str | Path,
    seed: int = 0,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(PreprocessorConfig().to_dict(), indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": DEFAULT_CHAT_TEMPLATE}, indent=2))
    write_tokenizer(cfg, layout, out)
    write_random_weights(cfg, out, seed, max_shard_bytes, progress, device)
    return out


def write_random_weights(cfg: ModelConfig, out: Path, seed: int, max_shard_bytes: int, progress: bool,
                         device: str = "cpu") -> None:
    dtype = _DTYPES[cfg.torch_dtype]
    # The release stores the tied lm_head too (3.83B tensors in the files); so do we, as a copy.
    entries = weight_spec(cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    embed = None
    for entry in tqdm(entries, desc="random weights", unit="tensor", disable=not progress, leave=False):
        if entry.name == "language_model.lm_head.weight" and entry.param is None:
            tensor = embed.clone()
        else:
            tensor = _random_tensor(entry, dtype, gen, device).cpu()
        if entry.name == "language_model.model.embed_tokens.weight":
            embed = tensor
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][entry.name] = tensor
        size += nbytes
    for old in list(out.glob("*.safetensors")) + [out / INDEX_FILE]:
        old.unlink(missing_ok=True)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({name: fname for name in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _random_tensor(entry: WeightEntry, dtype, gen: torch.Generator, device: str) -> torch.Tensor:
    """Fan-in scaled noise: every layer's output is O(1), so attention is sharp and the model's
    answer depends on its context. (A flat 0.02 init made attention near-uniform and the random
    model echo its input, and then a test cannot tell a correct KV cache from a broken one.)"""
    noise = torch.randn(entry.shape, generator=gen, device=device, dtype=torch.float32)
    if entry.init == "norm":
        return (1.0 + 0.1 * noise).to(dtype)
    if entry.init == "bias":
        return (0.1 * noise).to(dtype)
    if entry.name.endswith("embed_tokens.weight"):
        # Below the layers' unit-scale updates, so that (with the tied head) a row's logits are not
        # dominated by its own input token, which made random models echo their input.
        return (0.3 * noise).to(dtype)
    if len(entry.shape) == 1 or entry.name.endswith("pos_emb.weight"):
        return noise.to(dtype)
    fan_in = int(torch.tensor(entry.shape[1:]).prod())
    return (noise / fan_in**0.5).to(dtype)


# ---------------------------------------------------------------- tokenizer

def special_tokens(cfg: ModelConfig, layout: TokenLayout) -> dict[int, str]:
    """Added tokens (id -> text). Names of null/switch/mask are graphrt's own; ids come from the config."""
    ids = cfg.tokens
    table = {
        layout.endoftext: "<|endoftext|>", layout.im_start: "<|im_start|>", ids.im_end: "<|im_end|>",
        ids.image: "<IMG_CONTEXT>", layout.img_start: "<img>", layout.img_end: "</img>",
        ids.box_start: "<box>", ids.box_end: "</box>", ids.ref_start: "<ref>", ids.ref_end: "</ref>",
        ids.text_mask: "<|mask|>", ids.null: "<|null|>", ids.switch: "<|switch|>",
    }
    table.update({ids.coord_start + v: f"<{v}>" for v in range(1001)})
    for i in range(layout.base_vocab, cfg.text.vocab_size):  # unnamed added ids of the real layout
        table.setdefault(i, f"<|extra_{i}|>")
    return table


def write_tokenizer(cfg: ModelConfig, layout: TokenLayout, out: Path) -> None:
    """vocab.json + merges.txt + tokenizer_config.json, the file set the official checkpoint ships.
    The BPE is trained on the prompt's words (weights/synth_tokenizer.py) so prompt lengths are
    close to the real tokenizer's."""
    vocab, merges = build_bpe(layout.base_vocab, cfg.tokens.none)
    added = special_tokens(cfg, layout)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    decoder = {
        str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for i, text in sorted(added.items())
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": cfg.text.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))

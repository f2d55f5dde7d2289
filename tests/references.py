"""Independent references the runtime is checked against: transformers' Qwen2 on the checkpoint's
own tensors, and a plain per-row transcription of the stock MTP decoder (generate_utils.py)."""

from __future__ import annotations

import torch
import transformers
from safetensors.torch import load_file


def hf_qwen2(engine, ckpt):
    t = engine.cfg.text
    config = transformers.Qwen2Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps, rope_theta=t.rope_theta,
        max_position_embeddings=t.max_position_embeddings, tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"
    model = transformers.Qwen2ForCausalLM(config).eval()
    tensors = load_file(str(ckpt / "model.safetensors"))
    state = {k[len("language_model."):]: v for k, v in tensors.items() if k.startswith("language_model.")}
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not [m for m in missing if "rotary" not in m] and not unexpected
    return model


def stock_proposal(probs: torch.Tensor, x0: list[int], ids, mode: str, keep_k: int = 4) -> list[int]:
    """One row, written straight from the stock decoder: empty frame, legal box, ref text, raw x0."""
    p = probs
    if (p[0, ids.box_start] >= 0.7 and p[1, ids.none] > 0.2 and p[2, ids.box_end] > 0.2
            and p[3, ids.null] > 0.1 and p[4, ids.null] > 0.1):
        return [ids.box_start, ids.none, ids.box_end, ids.null, ids.null, ids.null]
    end_mass = p[5, torch.tensor([ids.box_end, ids.null, ids.im_end])].sum()
    if end_mass >= 0.2:
        coords = []
        for slot in range(1, 5):
            vals, cand = torch.topk(p[slot], keep_k)
            valid = [(float(v), int(c)) for v, c in zip(vals, cand) if ids.is_coord(int(c))]
            if not valid:
                coords = None
                break
            best_p, best = valid[0]
            if mode == "hybrid" and best_p < 0.9 and len(valid) > 1:
                if max(c for _, c in valid) - min(c for _, c in valid) > 60:
                    best = 0
            coords.append(best)
        if coords is not None:
            return [ids.box_start] + coords + [ids.box_end]
    if p[0, ids.ref_start] >= 0.6:
        text = []
        for slot in range(1, 6):
            cand = [int(c) for c in torch.topk(p[slot], 5)[1] if not ids.is_coord(int(c))]
            if not cand:
                return list(x0)
            text.append(cand[0])
        return [ids.ref_start] + text
    return list(x0)


def stock_pattern(x: list[int], ids, mode: str) -> tuple[str, list[int]]:
    """The stock handle_pattern on one 6-token proposal: (type, accepted tokens)."""
    if x[0] in (ids.null, ids.im_end):
        return "im_end", [ids.im_end]
    if x[:2] == [ids.box_start, ids.none]:
        return "empty_box", [ids.box_start, ids.none, ids.box_end]
    if x[0] == ids.box_start:
        n = 1
        for t in x[1:5]:
            if not ids.is_coord(t):
                break
            n += 1
        if n == 5 and x[5] == ids.box_end:
            return "coord_box", list(x)
        if n == 3 and x[3] == ids.box_end:
            return "point_box", x[:4]
        return ("coord_box", list(x)) if mode == "fast" else ("error_box", x[:n])
    for i, t in enumerate(x):
        if t == ids.null:
            x = x[:i]
            break
    if len(x) >= 2 and x[-1] == x[-2] == ids.ref_end:
        x = x[:-1]
    return "ref_object", list(x)

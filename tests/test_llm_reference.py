"""Qwen2 against transformers' Qwen2 loaded from the same checkpoint tensors (float32)."""

from __future__ import annotations

import pytest
import torch

from graphrt.attention import PlanBuilder
from graphrt.attention.sdpa import lm_attention

pytest.importorskip("transformers")
from references import hf_qwen2  # noqa: E402


def ours(engine, ids, cache, first_slot):
    plan = PlanBuilder()
    plan.add_causal(0, first_slot, len(ids))
    llm = engine.model.llm
    return llm(llm.embed(torch.tensor(ids)), plan.build("cpu"), cache, lm_attention, torch.arange(len(ids)))


@torch.no_grad()
def test_prompt_and_cached_continuation_match_transformers(tiny_engine, tiny_ckpt):
    ref = hf_qwen2(tiny_engine, tiny_ckpt)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, tiny_engine.cfg.text.vocab_size, (1, 37), generator=gen)
    tail = torch.randint(0, tiny_engine.cfg.text.vocab_size, (1, 5), generator=gen)

    out = ref(prompt, use_cache=True)
    ref_tail = ref(tail, past_key_values=out.past_key_values, use_cache=True).logits[0]

    cache = tiny_engine.model.llm.new_cache(1, 64)
    got = ours(tiny_engine, prompt[0].tolist(), cache, 0)
    got_tail = ours(tiny_engine, tail[0].tolist(), cache, 37)

    torch.testing.assert_close(got, out.logits[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_tail, ref_tail, rtol=1e-4, atol=1e-4)

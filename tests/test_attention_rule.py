"""The MTP step's attention, checked directly: a step through the static cache must equal one
whole-sequence forward of transformers' Qwen2 under the stock window mask
(mask_sdpa_utils.update_causal_mask_for_one_gen_window_2d: causal, then the last 6 queries see
the last 6 keys, and none of them sees key -7, the last accepted token)."""

from __future__ import annotations

import torch

from graphrt.attention import PlanBuilder, dense_mask
from graphrt.attention.sdpa import lm_attention

from references import hf_qwen2


def stock_window_mask(seq_len: int, block: int) -> torch.Tensor:
    m = torch.full((seq_len, seq_len), float("-inf")).triu(1)
    m[-block:, -block:] = 0.0
    m[-block:, -block - 1] = float("-inf")
    return m


@torch.no_grad()
def test_window_logits_equal_dense_whole_sequence_reference(tiny_engine, tiny_ckpt):
    ref = hf_qwen2(tiny_engine, tiny_ckpt)
    llm, ids = tiny_engine.model.llm, tiny_engine.cfg.tokens
    block = tiny_engine.cfg.text.block_size
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 250, (20,), generator=gen).tolist()
    accepted = torch.randint(0, 250, (4,), generator=gen).tolist()

    cache = llm.new_cache(1, 64)
    plan = PlanBuilder()
    plan.add_causal(0, 0, len(prompt))
    llm(llm.embed(torch.tensor(prompt)), plan.build("cpu"), cache, lm_attention)
    # Step: 4 accepted tokens not yet cached, then the window [last accepted, MASK x 5].
    window = [accepted[-1]] + [ids.text_mask] * (block - 1)
    plan = PlanBuilder()
    plan.add_step(0, len(prompt), len(accepted), block)
    step_ids = accepted + window
    got = llm(llm.embed(torch.tensor(step_ids)), plan.build("cpu"), cache, lm_attention,
              torch.arange(len(accepted), len(step_ids)))

    seq = prompt + step_ids
    n = len(prompt) + len(accepted)
    positions = list(range(n)) + list(range(n - 1, n - 1 + block))
    mask = stock_window_mask(len(seq), block)[None, None]
    want = ref(torch.tensor([seq]), attention_mask=mask, position_ids=torch.tensor([positions])).logits[0, -block:]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_plan_rule_is_the_stock_mask():
    """The (hi, blocked) rule of a step reproduces the stock 2D mask row for row."""
    cached, accepted, block = 9, 3, 6
    plan = PlanBuilder()
    plan.add_step(0, cached, accepted, block)
    p = plan.build("cpu")
    ours = dense_mask(p.q_hi, p.q_blocked, cached + accepted + block)
    stock = stock_window_mask(cached + accepted + block, block)[cached:] == 0
    assert torch.equal(ours, stock)
    assert p.positions.tolist() == [9, 10, 11, 11, 12, 13, 14, 15, 16]

"""The logits pipeline against direct per-row computations, and the seeded draws against the
distributions they must follow (fixed seeds, enough draws for tight bounds)."""

from __future__ import annotations

import math

import pytest
import torch

from graphrt.sampler import (SamplingConfig, apply_repetition_penalty, choose, noise_keys, probabilities, top_k_filter,
                             top_p_filter, uniforms)


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[[2.0, -2.0, 1.0, 0.5]]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[[1.0, -4.0, 1.0, 0.5]]]


def test_top_p_keeps_smallest_prefix_and_always_the_first():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    kept = top_p_filter(logits, 0.7) > torch.finfo(torch.float32).min
    assert kept.tolist() == [[[True, True, False, False]]]
    kept = top_p_filter(logits, 0.1) > torch.finfo(torch.float32).min
    assert kept.tolist() == [[[True, False, False, False]]]


def test_top_k():
    logits = torch.tensor([[[1.0, 4.0, 3.0, 2.0]]])
    kept = top_k_filter(logits, 2) > torch.finfo(torch.float32).min
    assert kept.tolist() == [[[False, True, True, False]]]


def draws(probs: torch.Tensor, temps: torch.Tensor, seed: int, steps: int = 1) -> torch.Tensor:
    """[steps, B, S] tokens drawn for each row at steps 0..steps-1 (row i is stream i)."""
    keys = noise_keys(seed, range(probs.shape[0]))
    return torch.stack([choose(probs, temps, uniforms(keys, torch.full_like(keys, s), probs.shape[1]))
                        for s in range(steps)])


def test_per_row_temperature_and_greedy_rows():
    logits = torch.randn(3, 6, 50, generator=torch.Generator().manual_seed(0))
    temps = torch.tensor([0.0, 0.7, 0.0])
    probs = probabilities(logits, None, temps, SamplingConfig())
    torch.testing.assert_close(probs[0], torch.softmax(logits[0], -1))
    torch.testing.assert_close(probs[1], torch.softmax(logits[1] / 0.7, -1))
    x = draws(probs, temps, seed=0, steps=20)
    assert (x[:, 0] == probs[0].argmax(-1)).all() and (x[:, 2] == probs[2].argmax(-1)).all()
    assert len(set(x[:, 1].flatten().tolist())) > 10  # the sampled row is not greedy


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens.flatten(), minlength=vocab).double() / tokens.numel()


def assert_follows(tokens: torch.Tensor, p: torch.Tensor) -> None:
    """Every token's frequency within 5 standard errors of its probability (plus one count)."""
    n, freq = tokens.numel(), frequencies(tokens, p.numel())
    p = p.double()
    bound = 5 * torch.sqrt(p * (1 - p) / n) + 1.0 / n
    worst = ((freq - p).abs() / bound).max().item()
    assert worst <= 1.0, f"frequencies off by {worst:.2f} x the bound"


def test_draws_follow_the_distribution_across_rows_and_steps():
    p = torch.tensor([0.55, 0.25, 0.12, 0.05, 0.03, 0.0])
    probs = p.expand(400, 6, 6).contiguous()  # 400 rows x 6 slots x 10 steps = 24000 draws
    x = draws(probs, torch.ones(400), seed=1, steps=10)
    assert_follows(x, p)
    assert not (x == 5).any()  # zero probability: never drawn
    for slot in range(6):  # each slot and each step on its own follows it too
        assert_follows(x[:, :, slot], p)
    for step in range(0, 10, 3):
        assert_follows(x[step], p)


def test_temperature_changes_the_distribution_as_softmax_says():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).expand(500, 6, 4).contiguous()
    for t in (0.3, 1.0, 2.5):
        temps = torch.full((500,), t)
        probs = probabilities(logits, None, temps, SamplingConfig())
        assert_follows(draws(probs, temps, seed=2, steps=4), torch.softmax(logits[0, 0] / t, -1))


def test_top_k_and_top_p_filtered_tokens_are_never_drawn():
    logits = torch.randn(300, 6, 40, generator=torch.Generator().manual_seed(3))
    temps = torch.full((300,), 2.0)
    for cfg in (SamplingConfig(top_k=3), SamplingConfig(top_p=0.5)):
        probs = probabilities(logits, None, temps, cfg)
        x = draws(probs, temps, seed=4, steps=3)
        assert (probs.expand(3, -1, -1, -1).gather(-1, x[..., None]) > 0).all()


def test_uniforms_are_uniform_and_uncorrelated():
    keys = noise_keys(7, range(2000))
    u = torch.stack([uniforms(keys, torch.full_like(keys, s), 6) for s in range(8)]).double()  # [8, 2000, 6]
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert u.min() >= 0 and u.max() <= 1 - 2.0**-23
    hist = torch.histc(u.float(), bins=20, min=0, max=1) / n  # each bin 1/20
    assert (hist - 0.05).abs().max() < 5 * math.sqrt(0.05 * 0.95 / n)
    z = (u - 0.5) * math.sqrt(12)
    for a, b in ((z[:, :, :-1], z[:, :, 1:]), (z[:-1], z[1:]), (z[:, :-1], z[:, 1:])):  # slots, steps, rows
        corr = (a * b).mean().item()
        assert abs(corr) < 5 / math.sqrt(a.numel()), corr


def test_same_seed_same_stream_other_seed_or_stream_another():
    steps = torch.tensor([0, 3, 3])
    a = uniforms(noise_keys(11, [0, 1, 2]), steps, 6)
    assert torch.equal(a, uniforms(noise_keys(11, [0, 1, 2]), steps, 6))
    assert not torch.isin(a, uniforms(noise_keys(12, [0, 1, 2]), steps, 6)).any()
    assert not torch.isin(a[0], uniforms(noise_keys(11, [5]), steps[:1], 6)).any()
    big = noise_keys(2**40 + 11, [0])  # seeds beyond 32 bits still count
    assert big.item() != noise_keys(11, [0]).item()


def test_inverse_cdf_picks_the_token_whose_interval_holds_the_uniform():
    probs = torch.tensor([[[0.0, 0.25, 0.0, 0.5, 0.25]]])
    temps = torch.ones(1)
    for u, want in ((0.0, 1), (0.2499, 1), (0.2501, 3), (0.7499, 3), (0.7501, 4), (1 - 2.0**-23, 4)):
        assert choose(probs, temps, torch.tensor([[u]])).item() == want, u


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_probabilities_draw_in_float32(dtype):
    logits = torch.randn(200, 6, 30, generator=torch.Generator().manual_seed(5)).to(dtype)
    temps = torch.ones(200)
    probs = probabilities(logits, None, temps, SamplingConfig())
    x = draws(probs, temps, seed=6, steps=2)
    assert (probs.expand(2, -1, -1, -1).gather(-1, x[..., None]) > 0).all()

"""The logits pipeline against direct per-row computations."""

from __future__ import annotations

import torch

from graphrt.sampler import SamplingConfig, apply_repetition_penalty, choose, probabilities, top_k_filter, top_p_filter


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


def test_per_row_temperature_and_greedy_rows():
    logits = torch.randn(3, 6, 50)
    temps = torch.tensor([0.0, 0.7, 0.0])
    probs = probabilities(logits, None, temps, SamplingConfig())
    torch.testing.assert_close(probs[0], torch.softmax(logits[0], -1))
    torch.testing.assert_close(probs[1], torch.softmax(logits[1] / 0.7, -1))
    gen = torch.Generator().manual_seed(0)
    x = choose(probs, temps, gen)
    assert torch.equal(x[0], probs[0].argmax(-1)) and torch.equal(x[2], probs[2].argmax(-1))


def test_sampling_follows_the_distribution():
    probs = torch.tensor([[[0.7, 0.2, 0.1]]]).expand(4000, 1, 3).contiguous()
    x = choose(probs, torch.ones(4000), torch.Generator().manual_seed(1))
    freq = torch.bincount(x.flatten(), minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)

"""The GPU path's A/B switches (graphrt.kernels.env_choice and the readers built on it): unset gives
the default, a listed value comes back, anything else raises naming the variable and the choices."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from graphrt.kernels import env_choice, pdl, skinny_gemm, step_attention, step_tail, step_topk  # noqa: E402

READERS = [("GRAPHRT_PDL", pdl.mode, "auto", "off"),
           ("GRAPHRT_STEP_GEMM", skinny_gemm.mode, "auto", "noswab"),
           ("GRAPHRT_STEP_GEMM_CHAIN", skinny_gemm.chain_mode, "margin", "plain"),
           ("GRAPHRT_STEP_ATTENTION", step_attention.step_attention_mode, "tiles", "split"),
           ("GRAPHRT_STEP_TAIL", step_tail.enabled, True, False),
           ("GRAPHRT_STEP_TOPK", step_topk.enabled, True, False)]


@pytest.mark.parametrize("name, read, default, other", READERS, ids=[r[0] for r in READERS])
def test_switch_default_value_and_refusal(monkeypatch, name, read, default, other):
    monkeypatch.delenv(name, raising=False)
    assert read() == default
    monkeypatch.setenv(name, {False: "torch"}.get(other, other))
    assert read() == other
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(ValueError, match=name):
        read()


def test_env_choice_names_every_choice(monkeypatch):
    monkeypatch.setenv("GRAPHRT_TEST_SWITCH", "x")
    with pytest.raises(ValueError, match=r"GRAPHRT_TEST_SWITCH must be a, b or c, not 'x'"):
        env_choice("GRAPHRT_TEST_SWITCH", ("a", "b", "c"))
    monkeypatch.delenv("GRAPHRT_TEST_SWITCH")
    assert env_choice("GRAPHRT_TEST_SWITCH", ("a", "b", "c")) == "a"

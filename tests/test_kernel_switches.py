"""The GPU path's A/B switches (graphrt.kernels.env_choice and the readers built on it): unset gives
the default, a listed value comes back, anything else raises naming the variable and the choices."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from graphrt.kernels import env_choice, pdl, skinny_gemm, step_attention, step_tail, step_topk  # noqa: E402

READERS = [("GRAPHRT_PDL", pdl.mode, "auto", "off"),
           ("GRAPHRT_STEP_GEMM", skinny_gemm.mode, "auto", "noswab"),
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


def test_refusal_is_graphrt_option_error(monkeypatch):
    from graphrt.errors import OptionError

    monkeypatch.setenv("GRAPHRT_TEST_SWITCH", "x")
    with pytest.raises(OptionError):
        env_choice("GRAPHRT_TEST_SWITCH", ("a", "b"))


def test_vision_attention_kernel_switch_is_read_at_import(monkeypatch):
    import importlib

    import graphrt.kernels.vision_attention as va
    from graphrt.errors import OptionError

    try:
        monkeypatch.setenv("GRAPHRT_VISION_ATTENTION_KERNEL", "bogus")
        with pytest.raises(OptionError, match=r"GRAPHRT_VISION_ATTENTION_KERNEL must be auto, triton or ws"):
            importlib.reload(va)
        monkeypatch.setenv("GRAPHRT_VISION_ATTENTION_KERNEL", "triton")
        assert importlib.reload(va).KERNEL == "triton"
    finally:
        monkeypatch.delenv("GRAPHRT_VISION_ATTENTION_KERNEL")
        assert importlib.reload(va).KERNEL == "auto"

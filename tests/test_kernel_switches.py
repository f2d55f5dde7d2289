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


@pytest.mark.parametrize("name, bad", [("GRAPHRT_FP8_QUANT", "Triton"), ("GRAPHRT_FP8_SKINNY", "on")])
def test_fp8_linear_switches_refuse_a_typo_on_any_device(monkeypatch, name, bad):
    """A typo must not silently pick the other path: FP8Linear reads both switches even on CPU."""
    import torch

    from calib.fp8_linear import FP8Linear
    from graphrt.errors import OptionError

    w = torch.randn(32, 32)
    monkeypatch.delenv(name, raising=False)
    FP8Linear(w, None, 1.0, name="probe")  # the default is accepted
    monkeypatch.setenv(name, bad)
    with pytest.raises(OptionError, match=name):
        FP8Linear(w, None, 1.0, name="probe")


def test_vision_fused_switch(monkeypatch):
    import torch

    from graphrt.config import VisionConfig
    from graphrt.errors import OptionError
    from graphrt.vision import MoonViT

    cfg = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    monkeypatch.delenv("GRAPHRT_VISION_FUSED", raising=False)
    assert MoonViT(cfg, torch.float32, "meta").fused is None  # on where the kernels run
    monkeypatch.setenv("GRAPHRT_VISION_FUSED", "0")
    assert MoonViT(cfg, torch.float32, "meta").fused is False
    monkeypatch.setenv("GRAPHRT_VISION_FUSED", "off")
    with pytest.raises(OptionError, match="GRAPHRT_VISION_FUSED must be 1 or 0"):
        MoonViT(cfg, torch.float32, "meta")


def test_step_prefetch_switch(monkeypatch):
    monkeypatch.delenv("GRAPHRT_STEP_PREFETCH", raising=False)
    assert skinny_gemm.prefetch_default() is False
    monkeypatch.setenv("GRAPHRT_STEP_PREFETCH", "1")
    assert skinny_gemm.prefetch_default() is True
    monkeypatch.setenv("GRAPHRT_STEP_PREFETCH", "yes")  # was read as off before: a typo picked a path
    with pytest.raises(ValueError, match="GRAPHRT_STEP_PREFETCH must be 0 or 1"):
        skinny_gemm.prefetch_default()

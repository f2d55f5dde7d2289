"""When the fused kernels launch with programmatic dependent launch (graphrt/kernels/pdl.py): never
on CPU or under the Triton interpreter, `auto` only for launches of at most one step row (the
only size measured faster), `on`/`off` as asked, a bad GRAPHRT_PDL refused. The PDL kernels
themselves are checked on the GPU (tests/test_pdl_gpu.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")


class FakeCuda:
    """Stands in for a CUDA tensor: pdl.enabled reads only these."""
    is_cuda = True
    device = torch.device("cuda", 0)
    shape = (12, 8)


def test_pdl_policy(monkeypatch):
    from graphrt.kernels import pdl

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(pdl, "_supported", lambda index: True)
    x = FakeCuda()
    monkeypatch.setenv("GRAPHRT_PDL", "auto")
    assert pdl.enabled(x, 12) and not pdl.enabled(x, 13) and not pdl.enabled(x, 96)
    assert pdl.launch(x) == {"PDL": True, "launch_pdl": True}
    assert pdl.launch(x, 96) == {"PDL": False}
    monkeypatch.setenv("GRAPHRT_PDL", "on")
    assert pdl.enabled(x, 384)
    monkeypatch.setenv("GRAPHRT_PDL", "off")
    assert not pdl.enabled(x, 1)
    monkeypatch.setenv("GRAPHRT_PDL", "yes")
    with pytest.raises(ValueError, match="GRAPHRT_PDL"):
        pdl.enabled(x, 1)
    monkeypatch.setenv("GRAPHRT_PDL", "on")
    monkeypatch.setattr(pdl, "_supported", lambda index: False)  # an older GPU or triton
    with pytest.raises(RuntimeError, match="compute-capability"):
        pdl.enabled(x, 1)
    monkeypatch.setenv("GRAPHRT_PDL", "auto")
    assert not pdl.enabled(x, 1)


def test_pdl_never_on_cpu_or_interpreted(monkeypatch):
    from graphrt.kernels import pdl

    monkeypatch.setenv("GRAPHRT_PDL", "on")
    assert pdl.launch(torch.zeros(4, 4)) == {"PDL": False}
    monkeypatch.setattr(pdl, "_supported", lambda index: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.enabled(FakeCuda(), 1)

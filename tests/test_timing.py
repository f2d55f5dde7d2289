"""StageClock: laps in order, per name; on CUDA a lap does not wait for the GPU (the host may fill
the next stage while this one runs) and reading `laps` does."""

from __future__ import annotations

import time

import pytest
import torch

from graphrt.timing import StageClock


def test_cpu_laps_are_wall_time_per_stage():
    clock = StageClock(torch.device("cpu"))
    time.sleep(0.02)
    clock.lap("vision_ms")
    clock.lap("prefill_ms")
    time.sleep(0.01)
    clock.lap("vision_ms")  # a name lapped again keeps its last lap
    laps = clock.laps
    assert list(laps) == ["vision_ms", "prefill_ms"]
    assert 5 <= laps["vision_ms"] < 1000 and 0 <= laps["prefill_ms"] < 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_lap_does_not_wait_for_the_gpu():
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    clock = StageClock(torch.device("cuda"))
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on any recent GPU
    t0 = time.perf_counter()
    clock.lap("busy_ms")
    lap_host_ms = (time.perf_counter() - t0) * 1000
    busy = clock.laps["busy_ms"]  # waits for the GPU
    assert busy > 20, busy
    assert lap_host_ms < busy / 4, (lap_host_ms, busy)


def test_stage_clock_switch_is_checked(monkeypatch):
    from graphrt.errors import OptionError
    from graphrt.timing import stage_clock_syncs

    monkeypatch.setenv("GRAPHRT_STAGE_CLOCK", "sync")
    assert stage_clock_syncs() and StageClock(torch.device("cpu")).sync
    monkeypatch.setattr(StageClock, "synchronize", False)  # a benchmark's per-call choice wins
    assert not StageClock(torch.device("cpu")).sync
    monkeypatch.setattr(StageClock, "synchronize", None)
    monkeypatch.setenv("GRAPHRT_STAGE_CLOCK", "on")  # not a mode: named, not silently "events"
    with pytest.raises(OptionError, match="GRAPHRT_STAGE_CLOCK"):
        StageClock(torch.device("cpu"))
    assert not stage_clock_syncs("events")

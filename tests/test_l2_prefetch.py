"""The L2 weight prefetch of the B=1 step (graphrt/kernels/l2_prefetch.py, GRAPHRT_STEP_L2PF): a
hint that changes no value. On the GPU, two 3B-width decoder layers on the fused path (the real
Qwen2Layer.forward_fused with capture's step ranges, PDL as in the step), eagerly and captured in a
CUDA graph replayed on new inputs, give the same bits with every prefetch mode as with it off
(outputs, residual and both KV caches), and the prefetching launches did carry prefetch regions.
On the CPU: the switch's default, its values and its refusal; the regions it plans."""

from __future__ import annotations

import pytest
import torch

from graphrt.config import TextConfig
from graphrt.kernels import l2_prefetch

W = 6


def test_switch_default_values_and_refusal(monkeypatch):
    monkeypatch.delenv("GRAPHRT_STEP_L2PF", raising=False)
    assert l2_prefetch.mode() == "off"
    for value in l2_prefetch.MODES:
        monkeypatch.setenv("GRAPHRT_STEP_L2PF", value)
        assert l2_prefetch.mode() == value
    monkeypatch.setenv("GRAPHRT_STEP_L2PF", "all")
    with pytest.raises(ValueError, match="GRAPHRT_STEP_L2PF"):
        l2_prefetch.mode()


def test_whole_weight_spans_cover_it_once():
    w = torch.empty(2560, 2048, dtype=torch.bfloat16)
    t, n, stride, nbytes = l2_prefetch.whole(w)
    assert t is w and n * stride == w.numel() and stride * 2 == nbytes  # back to back, every byte once
    odd = torch.empty(101, 64, dtype=torch.bfloat16)  # rows not a multiple of SPAN_ROWS: a span per row
    assert l2_prefetch.whole(odd)[1:] == (101, 64, 128)
    assert l2_prefetch.launch_args([], w)["REGIONS"] == 0


def test_cpu_steps_never_prefetch(monkeypatch):
    """Off the GPU (and above one step row's 12 tokens) nothing is planned, whatever the switch."""
    monkeypatch.setenv("GRAPHRT_STEP_L2PF", "o-gu4")
    x = torch.zeros(12, 8)
    assert not l2_prefetch.on(x)


def _step_inputs(rows, cache_len, count, slots, dev):
    c, k = torch.tensor(cache_len), torch.tensor(count)
    j = torch.arange(W)[None]
    first_real = (W - k)[:, None]
    real = j >= first_real
    acc = torch.where(real, c[:, None] + j - first_real, slots - 1)
    w0 = c + k
    positions = torch.cat([torch.where(real, acc, 0), w0[:, None] - 1 + j], 1).reshape(-1)
    write_slots = torch.cat([acc, w0[:, None] + j], 1).reshape(-1)
    write_rows = torch.arange(rows).repeat_interleave(2 * W)
    return [t.to(dev) for t in (positions, write_rows, write_slots, c, k)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["o", "o-gu4", "o-mgu1"])
def test_prefetch_changes_no_bit_gpu(monkeypatch, mode):
    from capture.ranges import StepKernelRanges
    from graphrt.kernels.step_attention import StepAttention
    from graphrt.kv_cache import KVCache
    from graphrt.llm import Qwen2Layer, RotaryEmbedding

    cfg = TextConfig(num_hidden_layers=2)
    torch.manual_seed(0)
    dtype, dev, slots = torch.bfloat16, "cuda", 2048
    layers = [Qwen2Layer(cfg, dtype, dev) for _ in range(2)]
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.copy_(torch.randn_like(p) * (0.1 if p.dim() == 1 else p.shape[-1] ** -0.5))
            layer.input_layernorm.weight.add_(1)
            layer.post_attention_layernorm.weight.add_(1)
    positions, write_rows, write_slots, c, k = _step_inputs(1, [461], [3], slots, dev)
    cos, sin = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, dev)(positions, dtype)
    att = StepAttention(1, W, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, dev)
    ranges = StepKernelRanges(None, write_rows, write_slots, c, k, att)
    caches = {}
    x_in = torch.empty(2 * W, cfg.hidden_size, dtype=dtype, device=dev)

    def step():
        x, delta = x_in, None
        for i, layer in enumerate(layers):
            x, delta = layer.forward_fused(x, delta, cos, sin, i, cache, ranges)
        return x, delta

    results = {}
    for which in ("off", mode):
        monkeypatch.setenv("GRAPHRT_STEP_L2PF", which)
        cache = caches[which] = KVCache(2, 2, slots, cfg.num_key_value_heads, cfg.head_dim, dtype, dev)
        with torch.no_grad():
            gen = torch.Generator(device=dev).manual_seed(1)
            for layer_cache in (cache.k, cache.v):
                layer_cache.normal_(generator=gen)
            x_in.normal_(generator=gen)
            eager = [t.clone() for t in step()]
            if which != "off":  # the mode does plan regions here (3B widths, 12 rows): O, gate/up's head
                split, merge = l2_prefetch.attention_gap(layers[0], x_in)
                assert len(split) == (3 if mode == "o-gu4" else 1) and len(merge) == (2 if "mgu" in mode else 0)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()  # warm outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = step()
            replays = []
            for r in range(3):
                x_in.normal_(generator=torch.Generator(device=dev).manual_seed(10 + r))
                graph.replay()
                torch.cuda.synchronize()
                replays.append([t.clone() for t in out])
        results[which] = (eager, replays, cache.k[:, :, :slots - 1].clone(), cache.v[:, :, :slots - 1].clone())
    base, got = results["off"], results[mode]
    for a, b in zip(base[0], got[0]):
        assert torch.equal(a, b), "eager step differs"
    for ra, rb in zip(base[1], got[1]):
        for a, b in zip(ra, rb):
            assert torch.equal(a, b), "graph replay differs"
    assert torch.equal(base[2], got[2]) and torch.equal(base[3], got[3]), "KV cache differs"

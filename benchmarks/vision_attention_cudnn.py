"""cuDNN's fused attention for the vision slots vs graphrt's Triton slot kernel, one run (H100, bf16):

1. One layer's attention (16 heads x 72) at 1,680-patch slots (B=1 and B=32, 1,656 real), 10,816
   (10,764 real: 1920x1080) and 26,676 (25,600 real: 2240x2240), CUDA events, interleaved, P50/P90:
   - slot:          vision_kernels.slot_attention on the RoPE-turned qkv (today's default);
   - cudnn:         cuDNN's fused kernel with no mask tensor: rope_2d_pad writes q/k/v with the
                    head padded 72 -> 80 and a mask column (timed alone, with the slice copy of
                    its output, and the RoPE pass beside the in-place one it replaces);
   - cudnn_ragged:  cuDNN's ragged (cumulative-length) kernel on the qkv views, head 72, each slot
                    two sequences (real rows, pad rows);
   - cudnn_exact:   (B=1) cuDNN dense with no mask on exactly the real rows: the bound.
   Agreement: real rows against the slot kernel and (1,680) an fp32 reference; pad keys poisoned
   (huge K/V in pad rows) must leave real rows bit for bit unchanged.
2. Capture: each cuDNN variant in a CUDA graph, replayed after the real lengths change (random,
   and the edges: a full slot, 4 rows), against eager calls and the slot kernel.
3. Packed images (block-diagonal): 432 + 1,656 + 4,144 patches back to back, cudnn_ragged over
   the image bounds vs the slot kernel's packed mode.
4. The whole fused tower (27 layers, random MoonViT weights) as CUDA graphs, attention modes
   interleaved, at the same sizes, with useful TFLOP/s and the output difference vs the slot mode;
   the kernel split (profiler) of the B=1 1,680 tower in its fastest mode.

    python benchmarks/vision_attention_cudnn.py --out vision_attention_cudnn.json
Random inputs and weights: only timings and agreement mean anything here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capture.ranges import VisionRanges  # noqa: E402
from capture.varlen import torch_fa2  # noqa: E402
from graphrt.config import VisionConfig  # noqa: E402
from graphrt.vision import vision_geometry  # noqa: E402
import graphrt.vision_kernels as vk  # noqa: E402
from vision_stage import kernel_split, random_vision, vision_flops  # noqa: E402

HEADS, D = 16, 72
# Slot-kernel tiles tried beside the default inside the B=1 1,680 tower (graph replay; the tile
# sweeps of attention alone at B=1 were host-launch-bound: 0.14 ms per call vs 0.055 ms kernel time).
TOWER_TILES = {"slot_m64": (64, 64, 4, 3), "slot_n32": (128, 32, 4, 4)}
# (batch, slot, real, grid of the real patches, attention rounds, tower rounds)
SIZES = [(1, 1680, 1656, (36, 46), 40, 30), (32, 1680, 1656, (36, 46), 20, 10),
         (1, 10816, 10764, (78, 138), 20, 10), (1, 26676, 25600, (160, 160), 10, 6)]
REPORT: dict = {}


def ragged_bounds(cu: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Bounds for cuDNN's ragged call over slots: each slot is two sequences, its real rows
    [cu[b], cu[b] + used[b]) and its pad rows up to cu[b+1] (real queries see real keys only, pad
    rows stay finite). [2B+1] int32 from device ops."""
    starts = cu[:-1]
    inner = torch.stack((starts, starts + used), 1).flatten()
    return torch.cat((inner, cu[-1:])).to(torch.int32)


def cudnn_ragged_attention(q, k, v, bounds: torch.Tensor, longest: int) -> torch.Tensor:
    """Attention inside each sequence of packed rows [T, H, D] on cuDNN's ragged fused kernel
    (torch's nested-tensor entry point, called directly) -> [T, H, D]."""
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, bounds, bounds, longest, longest, False, 0.0,
                                                   False, False, scale=q.shape[-1] ** -0.5)[0]


def log(*a):
    print(*a, flush=True)


def stats(ts: list[float], flops: float) -> dict:
    p50 = statistics.median(ts)
    return {"p50_ms": round(p50, 4), "p90_ms": round(float(np.percentile(ts, 90)), 4),
            "tflops_useful": round(flops / p50 / 1e9, 1)}


def interleaved(calls: dict, rounds: int) -> dict:
    for fn in calls.values():
        fn()
    torch.cuda.synchronize()
    times = {k: [] for k in calls}
    for r in range(rounds):
        for k in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            calls[k]()
            e.record()
            e.synchronize()
            times[k].append(s.elapsed_time(e))
    return times


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def inputs(b: int, p: int, real: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = b * p
    raw = torch.randn(n, 3, HEADS, D, device="cuda", generator=g).bfloat16()
    ang = torch.rand(n, D // 2, device="cuda", generator=g) * 6.28
    cos, sin = ang.cos(), ang.sin()
    cu = (torch.arange(b + 1, device="cuda") * p).to(torch.int32)
    used = torch.full((b,), real, dtype=torch.int32, device="cuda")
    return raw, cos, sin, cu, used


def real_rows(b: int, p: int, used: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.arange(i * p, i * p + int(used[i]), device="cuda") for i in range(b)])


def fp32_reference(roped: torch.Tensor, real: int) -> torch.Tensor:
    q, k, v = (roped[:real, i].float().transpose(0, 1) for i in range(3))
    w = torch.softmax(q @ k.transpose(1, 2) * D ** -0.5, -1)
    return (w @ v).transpose(0, 1)


def attention_alone(b: int, p: int, real: int, rounds: int, ragged_too: bool = False) -> dict:
    raw, cos, sin, cu, used = inputs(b, p, real)
    n = b * p
    roped = raw.clone()
    vk.rope_2d_(roped, cos, sin)
    scratch = raw.clone()
    padded = vk.rope_2d_pad(raw, cos, sin, used, p)
    bounds = ragged_bounds(cu, used)
    keep = real_rows(b, p, used)
    flops = b * 4 * real * real * HEADS * D
    res = {"work": f"B={b}, slot {p}, {real} real; {flops / 1e12:.4f} TFLOP useful per layer"}
    outs = {"slot": vk.slot_attention(roped, cu, used, p)}
    calls = {"slot": lambda: vk.slot_attention(roped, cu, used, p),
             "rope_inplace": lambda: vk.rope_2d_(scratch, cos, sin),
             "rope_pad": lambda: vk.rope_2d_pad(raw, cos, sin, used, p, out=padded),
             "cudnn": lambda: vk.cudnn_slot_attention(padded, p, D),
             "cudnn+slice_copy": lambda: vk.cudnn_slot_attention(padded, p, D).reshape(n, -1)}
    # the padded layout itself against the torch-ops reference
    res["rope_pad_max_abs_vs_reference"] = float(
        (padded.float() - vk.rope_2d_pad_reference(raw, cos, sin, used, p).float()).abs().max())
    ragged = ragged_too and p <= 1680
    for name, fn in (("cudnn", lambda: vk.cudnn_slot_attention(padded, p, D)),
                     ("cudnn_ragged", lambda: cudnn_ragged_attention(roped[:, 0], roped[:, 1], roped[:, 2],
                                                                         bounds, p)),
                     ("cudnn_ragged_contiguous", None)):
        if name.startswith("cudnn_ragged") and not ragged:
            continue
        try:
            if name == "cudnn_ragged_contiguous":
                qc, kc, vc = (roped[:, i].contiguous() for i in range(3))
                fn = lambda qc=qc, kc=kc, vc=vc: cudnn_ragged_attention(qc, kc, vc, bounds, p)  # noqa: E731
            outs[name] = fn()
            calls[name] = fn
        except Exception as exc:  # noqa: BLE001 - a variant torch refuses is a result too
            res[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            log(name, res[f"{name}_error"])
    try:  # the same padded q/k/v laid out [B, H, P, 80] (contiguous per head), not [B, P, H, 80]
        dp = padded.shape[-1]
        bhsd = [padded[i].view(b, p, HEADS, dp).transpose(1, 2).contiguous() for i in range(3)]
        fn = lambda t=bhsd: torch.ops.aten._scaled_dot_product_cudnn_attention(  # noqa: E731
            t[0], t[1], t[2], None, False, 0.0, False, False, scale=D ** -0.5)[0]
        outs["cudnn_bhsd"] = fn().transpose(1, 2).reshape(n, HEADS, dp)[:, :, :D]
        calls["cudnn_bhsd"] = fn
    except Exception as exc:  # noqa: BLE001
        res["cudnn_bhsd_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    if b == 1:
        try:
            q, k, v = (roped[:real, i].unsqueeze(0).transpose(1, 2) for i in range(3))
            fn = lambda q=q, k=k, v=v: torch.ops.aten._scaled_dot_product_cudnn_attention(  # noqa: E731
                q, k, v, None, False, 0.0, False, False, scale=D ** -0.5)[0]
            exact = fn()
            outs["cudnn_exact"] = torch.cat((exact[0].transpose(0, 1), torch.zeros_like(roped[real:, 0])))
            calls["cudnn_exact"] = fn
        except Exception as exc:  # noqa: BLE001
            res["cudnn_exact_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    torch.cuda.synchronize()
    ref = outs["slot"].float()[keep]
    res["rel_err_vs_slot"] = {k: rel(o.reshape(n, HEADS, D)[keep], ref) for k, o in outs.items() if k != "slot"}
    if p <= 1680:
        f32 = fp32_reference(roped, real)
        res["rel_err_vs_fp32"] = {k: rel(o.reshape(n, HEADS, D)[:real], f32) for k, o in outs.items()}
    # poison the pad rows: real rows must not move by one bit
    if real < p:
        pad_rows = torch.cat([torch.arange(i * p + real, (i + 1) * p, device="cuda") for i in range(b)])
        raw_p, roped_p = raw.clone(), roped.clone()
        for t in (raw_p, roped_p):
            t[pad_rows, 1] *= 50
            t[pad_rows, 2] = 1e4
        poisoned = {"cudnn": lambda: vk.cudnn_slot_attention(vk.rope_2d_pad(raw_p, cos, sin, used, p), p, D),
                    "cudnn_ragged": lambda: cudnn_ragged_attention(roped_p[:, 0], roped_p[:, 1], roped_p[:, 2],
                                                                      bounds, p),
                    "slot": lambda: vk.slot_attention(roped_p, cu, used, p)}
        res["pad_poison_bitwise_equal"] = {}
        for k, fn in poisoned.items():
            if k in outs:
                try:
                    res["pad_poison_bitwise_equal"][k] = bool(torch.equal(fn().reshape(n, HEADS, D)[keep],
                                                                          outs[k].reshape(n, HEADS, D)[keep]))
                except Exception as exc:  # noqa: BLE001
                    res["pad_poison_bitwise_equal"][k] = f"{type(exc).__name__}: {str(exc)[:200]}"
    times = interleaved(calls, rounds)
    res["times"] = {k: stats(v, flops) for k, v in times.items()}
    log(f"attention B={b} slot {p}:", json.dumps(res))
    return res


def capture_check(b: int, p: int, real: int, names=("cudnn",)) -> dict:
    """Capture each cuDNN variant, change the lengths, replay: equal to eager, close to the slot kernel."""
    raw, cos, sin, cu, used = inputs(b, p, real, seed=1)
    roped = raw.clone()
    vk.rope_2d_(roped, cos, sin)
    n = b * p
    variants = {
        "cudnn": lambda: vk.cudnn_slot_attention(vk.rope_2d_pad(raw, cos, sin, used, p), p, D).reshape(n, -1),
        "cudnn_ragged": lambda: cudnn_ragged_attention(roped[:, 0], roped[:, 1], roped[:, 2],
                                                          ragged_bounds(cu, used), p).reshape(n, -1),
    }
    variants = {k: v for k, v in variants.items() if k in names}
    res = {}
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(4, p + 1, (b,), generator=g)
    lengths[0] = p
    if b > 1:
        lengths[1] = 4
    for name, fn in variants.items():
        try:
            used.fill_(real)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn()
            used.copy_(lengths.to(torch.int32))
            graph.replay()
            eager = fn()
            slot = vk.slot_attention(roped, cu, used, p).reshape(n, -1)
            torch.cuda.synchronize()
            keep = real_rows(b, p, used)
            res[name] = {"replay_equals_eager_real_rows": bool(torch.equal(out[keep], eager[keep])),
                         "replay_rel_err_vs_slot": rel(out[keep], slot[keep]),
                         "finite_all_rows": bool(torch.isfinite(out).all()),
                         "lengths": lengths.tolist()[:8]}
        except Exception as exc:  # noqa: BLE001
            res[name] = f"{type(exc).__name__}: {str(exc)[:400]}"
            torch.cuda.synchronize()
    log(f"capture B={b} slot {p}:", json.dumps(res))
    return res


def packed_check(rounds: int = 30) -> dict:
    seqlens = [432, 1656, 4144]
    total = sum(seqlens)
    g = torch.Generator(device="cuda").manual_seed(2)
    qkv = torch.randn(total, 3, HEADS, D, device="cuda", generator=g).bfloat16()
    cu = torch.tensor([0, 432, 432 + 1656, total], dtype=torch.int32, device="cuda")
    used = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    flops = sum(4 * s * s * HEADS * D for s in seqlens)
    calls = {"slot_packed": lambda: vk.slot_attention(qkv, cu, used, max(seqlens), packed=True),
             "cudnn_ragged_packed": lambda: cudnn_ragged_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu,
                                                                      max(seqlens))}
    res = {"work": f"3 images {seqlens} back to back, {flops / 1e12:.4f} TFLOP per layer"}
    try:
        a, b = calls["slot_packed"](), calls["cudnn_ragged_packed"]()
        torch.cuda.synchronize()
        res["rel_err_ragged_vs_slot"] = rel(b, a)
        res["times"] = {k: stats(v, flops) for k, v in interleaved(calls, rounds).items()}
    except Exception as exc:  # noqa: BLE001
        res["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    log("packed:", json.dumps(res))
    return res


def tower(b: int, p: int, real: int, grid: tuple[int, int], rounds: int, modes: list[str], profile: bool) -> dict:
    cfg = VisionConfig()
    m = random_vision(cfg)
    geo1 = vision_geometry([grid], cfg, "cuda")
    n = b * p
    ps = cfg.patch_size
    pixels = torch.randn(n, 3, ps, ps, device="cuda")
    pos = torch.zeros(n, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    cos = torch.zeros(n, cfg.head_dim // 2, device="cuda")
    sin = torch.zeros_like(cos)
    pe = m.position_embedding(grid)
    for i in range(b):
        cos[i * p: i * p + real] = geo1.cos
        sin[i * p: i * p + real] = geo1.sin
        pos[i * p: i * p + real] = pe

    class Geo:
        pass

    geo = Geo()
    geo.cos, geo.sin, geo.merge_index = cos, sin, torch.arange(n, device="cuda")
    cu = (torch.arange(b + 1, device="cuda") * p).to(torch.int32)
    used = torch.full((b,), real, dtype=torch.int32, device="cuda")
    attend = VisionRanges(torch_fa2, p, cu, used)
    outs, graphs, res = {}, {}, {}
    pool = torch.cuda.graph_pool_handle()
    for mode in modes:
        def body(mode=mode):
            m.fused, m.attention = True, mode if mode in ("slot", "cudnn") else "slot"
            keep_tiles = vk.SLOT_ATTENTION_TILES
            vk.SLOT_ATTENTION_TILES = TOWER_TILES.get(mode, keep_tiles)
            try:
                outs[mode] = m(pixels, pos, geo, attend)
            finally:
                vk.SLOT_ATTENTION_TILES = keep_tiles
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                body()
                body()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool), torch.no_grad():
                body()
            graphs[mode] = g
        except Exception as exc:  # noqa: BLE001
            res[f"{mode}_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            log(f"tower {mode} failed: {res[f'{mode}_error']}")
            outs.pop(mode, None)
            torch.cuda.synchronize()
    flops = b * vision_flops(cfg, real)
    for k in graphs:
        graphs[k].replay()
    torch.cuda.synchronize()
    keep = real_rows(b, p, used)
    ref = outs["slot"].view(n, -1).float()[keep]
    res["rel_err_vs_slot"] = {k: rel(o.view(n, -1)[keep], ref) for k, o in outs.items() if k != "slot"}
    times = interleaved({k: g.replay for k, g in graphs.items()}, rounds)
    res["times"] = {k: stats(v, flops) for k, v in times.items()}
    res["work"] = f"B={b}, slot {p}, {real} real ({grid[0]}x{grid[1]}), {flops / 1e12:.2f} TFLOP useful"
    log(f"tower B={b} slot {p}:", json.dumps(res))
    if profile:
        best = min(times, key=lambda k: statistics.median(times[k]))
        for mode in dict.fromkeys((best, "slot")):
            if mode not in ("slot", "cudnn"):
                continue
            m.attention = mode
            res[f"kernel_split_{mode}"] = kernel_split(m, pixels, pos, geo, attend)
            log(f"kernel split {mode}:", json.dumps(res[f"kernel_split_{mode}"]))
    del graphs
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="vision_attention_cudnn.json")
    ap.add_argument("--skip-tower", action="store_true")
    ap.add_argument("--only-b1-tower", action="store_true", help="skip attention alone; the tower at B=1 1,680 only")
    ap.add_argument("--ragged", action="store_true", help="also cuDNN's ragged call (host-bound, not capturable)")
    args = ap.parse_args()
    import triton

    REPORT["env"] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                     "triton": triton.__version__, "cudnn": torch.backends.cudnn.version(),
                     "date": time.strftime("%Y-%m-%d")}
    log(REPORT["env"])
    out = Path(args.out)

    def step(key, fn, *a):
        t = time.perf_counter()
        try:
            REPORT[key] = fn(*a)
        except Exception as exc:  # noqa: BLE001 - keep the other parts
            REPORT[key] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
            log(key, REPORT[key])
            torch.cuda.synchronize()
        log(f"[{key}] {time.perf_counter() - t:.1f} s")
        out.write_text(json.dumps(REPORT, indent=1))

    if args.only_b1_tower:
        b, p, real, grid, _, rounds = SIZES[0]
        step(f"tower_B{b}_slot{p}", tower, b, p, real, grid, 60, ["slot", "cudnn", *TOWER_TILES], True)
        return
    for b, p, real, _, rounds, _ in SIZES:
        step(f"attention_B{b}_slot{p}", attention_alone, b, p, real, rounds, args.ragged)
    step("capture_B32_slot1680", capture_check, 32, 1680, 1656)
    step("capture_B1_slot10816", capture_check, 1, 10816, 10764)
    if args.ragged:
        step("packed", packed_check)
    if not args.skip_tower:
        for b, p, real, grid, _, rounds in SIZES:
            modes = ["slot", "cudnn"] + (list(TOWER_TILES) if b == 1 and p == 1680 else [])
            step(f"tower_B{b}_slot{p}", tower, b, p, real, grid, rounds, modes, b == 1 and p == 1680)
    if args.ragged:  # last: a failed capture leaves torch's RNG capture state unusable for later captures
        step("capture_ragged_B32_slot1680", capture_check, 32, 1680, 1656, ("cudnn_ragged",))


if __name__ == "__main__":
    main()

"""The vision tower's RoPE + attention of one layer, as the graphs run it (H100, bf16, random
inputs; one run, interleaved): the RoPE pass over q and k then the attention kernel (today), vs the
pass over k only and q turned inside the attention kernel (GRAPHRT_VISION_ROPE=q), for the default
kernel choice (auto: Gluon ping-pong at B=1, Triton at B=32) and a few Triton tiles of the q-in-
kernel variant (its q tile comes from registers, not shared memory: more registers in the loop).
640x480 (1,656 real patches in 1,680-row slots), B=1 and B=32; µs per layer (captured, 20 calls a
graph), x27 for the tower, and the output bits compared.

    python benchmarks/vision_rope_fused.py --out benchmarks/results/DATE_vrope_kernels_DEVICE.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_util import captured_us  # noqa: E402
import graphrt.kernels.vision_attention as va  # noqa: E402
import graphrt.vision_kernels as vk  # noqa: E402
from graphrt.config import VisionConfig  # noqa: E402
from graphrt.vision import vision_geometry  # noqa: E402

TRITON_TILES = [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3)]


def layer(b: int, rounds: int) -> dict:
    cfg = VisionConfig()
    slot, real, heads, d = 1680, 1656, cfg.num_attention_heads, cfg.head_dim
    n = b * slot
    g = torch.Generator(device="cuda").manual_seed(b)
    qkv0 = torch.randn(n, 3, heads, d, device="cuda", generator=g).bfloat16()
    one = vision_geometry([(36, 46)], cfg, "cuda")
    cos = torch.zeros(n, d // 2, device="cuda")
    sin = torch.zeros_like(cos)
    for i in range(b):
        cos[i * slot: i * slot + real], sin[i * slot: i * slot + real] = one.cos, one.sin
    cu = (torch.arange(b + 1, device="cuda") * slot).to(torch.int32)
    used = torch.full((b,), real, dtype=torch.int32, device="cuda")
    bufs = {}

    def variant(rope_q: bool, tiles=None, kernel=None):
        qkv = qkv0.clone()
        bufs[len(bufs)] = qkv

        def fn():
            qkv.copy_(qkv0)  # the pass turns in place: start every call from the same unturned qkv
            vk.rope_2d_(qkv, cos, sin, k_only=rope_q)
            return va.vision_attention(qkv, cu, used, slot, tiles=tiles, kernel=kernel,
                                       rope=(cos, sin) if rope_q else None)
        return fn

    variants = {"pass + auto": variant(False), "k pass + q in auto": variant(True)}
    for t in TRITON_TILES:
        variants[f"pass + triton {t}"] = variant(False, t)
        variants[f"k pass + q in triton {t}"] = variant(True, t)
    copy_us = captured_us(lambda: bufs[0].copy_(qkv0))
    outs = {k: f() for k, f in variants.items()}
    res = {"work": f"B={b}, slot {slot}, {real} real, 16 heads x 72; per layer; copy of qkv subtracted "
                   f"({copy_us:.1f} us)"}
    times = {k: [] for k in variants}
    for r in range(rounds):  # interleaved, order reversed every other round
        for k in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            times[k].append(captured_us(variants[k], calls=10, replays=3) - copy_us)
    keep = torch.cat([torch.arange(i * slot, i * slot + real, device="cuda") for i in range(b)])
    for k, v in times.items():
        v.sort()
        res[k] = {"us_layer_p50": round(v[len(v) // 2], 1), "tower_ms_p50": round(v[len(v) // 2] * 27 / 1e3, 3),
                  "min_us": round(v[0], 1), "max_us": round(v[-1], 1),
                  "bit_equal_to_its_pass": bool(torch.equal(outs[k][keep], outs[k.replace("k pass + q in", "pass +")][keep]))}
        print(b, k, res[k], flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="vision_rope_fused.json")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import triton

    report = {"env": {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "triton": triton.__version__, "date": time.strftime("%Y-%m-%d")}}
    for b in (1, 32):
        report[f"B{b}"] = layer(b, args.rounds)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

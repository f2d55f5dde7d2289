"""FP8 vision linears (fp8 scope `vision`): the tower alone, bf16 vs FP8, and FP8's fidelity on the 3B.

    python benchmarks/fp8_vision.py --only tower                      # random real-width tower, no checkpoint
    python benchmarks/fp8_vision.py --preset 3b --write-to /tmp/ck --only accuracy

tower: MoonViT (27 layers, 1152 wide, random weights) as CUDA graphs over B image slots of 1,680
  patches (1,656 real: 640x480), B = 1 and 32, three variants interleaved: bf16 (the fused tower as
  it runs today), FP8 with the producers writing e4m3 (norm -> wqkv / fc0, attention store -> wo,
  GELU pass -> fc1), FP8 with a quantizer pass in front of each linear (before this branch), and FP8
  with fc0 + bias + GELU + fc1's quantization in one Triton FP8 GEMM (calib/fp8_gemm_gelu.py) per tile. Static
  scales: the bf16 unfused tower's own input amax per linear over the same input. P50/P90/P99,
  useful TFLOP/s, rel. L2 of each output against bf16, and the kernel table of the bf16 and FP8
  replays (profiler).
gelu: the GELU + quantize pass alone at the B=32 shape per tile.
accuracy: the random 3B checkpoint, calibration on 64 random 640x480 pairs (all linears, vision
  included), then calib/report.py's accuracy report against bf16 on held-out pairs for scope `lm`
  and `lm,vision`: vision-embedding cosine, K/V cosines, window-logit top-1 / cosine / KL per step,
  answers. Writes the calibration file for latency.py.

Random weights: timings and numerical fidelity only, never task accuracy (calib/report.py).
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

from bench_util import add_checkpoint_args, alternating_ms, capture, checkpoint_dir, result_stem  # noqa: E402
from vision_stage import kernel_table, random_vision, vision_flops  # noqa: E402

from calib import FP8Linear, fp8_gemm_gelu  # noqa: E402
from calib.apply import _set_module, linear_modules, shared_copy  # noqa: E402
from calib.calibrate import RangeObserver  # noqa: E402
from capture.ranges import VisionRanges  # noqa: E402
from capture.varlen import torch_fa2  # noqa: E402
from graphrt.config import VisionConfig  # noqa: E402
from graphrt.vision import vision_geometry  # noqa: E402

QUERIES = ["person", "car", "traffic light", "dog", "bicycle", "the red umbrella", "bus", "cat"]


def log(*a):
    print(*a, flush=True)


def tower_ab(b: int, reps: int, p: int = 1680, real: int = 1656, grid=(36, 46)) -> dict:
    cfg = VisionConfig()
    m = random_vision(cfg)
    geo1 = vision_geometry([grid], cfg, "cuda")
    n = b * p
    pixels = torch.randn(n, 3, cfg.patch_size, cfg.patch_size, device="cuda")
    pos = torch.zeros(n, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    cos = torch.zeros(n, cfg.head_dim // 2, device="cuda")
    sin = torch.zeros_like(cos)
    pe = m.position_embedding(grid)
    for i in range(b):
        cos[i * p: i * p + real], sin[i * p: i * p + real], pos[i * p: i * p + real] = geo1.cos, geo1.sin, pe

    class Geo:
        pass

    geo = Geo()
    geo.cos, geo.sin, geo.merge_index = cos, sin, torch.arange(n, device="cuda")
    attend = VisionRanges(torch_fa2, p, (torch.arange(b + 1, device="cuda") * p).to(torch.int32),
                          torch.full((b,), real, dtype=torch.int32, device="cuda"))
    keep = torch.cat([torch.arange(i * p, i * p + real, device="cuda") for i in range(b)])
    # static scales: the unfused bf16 tower's input amax per linear on this input
    obs = RangeObserver(m)
    with torch.no_grad():
        m.fused = False
        m(pixels, pos, geo, attend)
        m.fused = True
    obs.close()
    fp8 = shared_copy(m)
    for name, lin in linear_modules(fp8).items():
        _set_module(fp8, name, FP8Linear.from_linear(lin, max(obs.amax[name].item(), 1e-6) / 448.0, name))
    # name -> (model, FP8 producers, fc0 in the Triton FP8 GEMM with the GELU epilogue, its tile)
    variants = {"bf16 (fused tower today)": (m, True, False, None),
                "FP8, producers, _scaled_mm + GELU pass": (fp8, True, False, None),
                "FP8, a quantizer pass per linear (before)": (fp8, False, False, None)}
    for tile in GEMM_TILES:
        variants[f"FP8, fc0+GELU Triton GEMM {tile}"] = (fp8, True, True, tile)
    outs, graphs = {}, {}
    for name, (model, producers, epilogue, tile) in variants.items():
        def body(name=name, model=model, producers=producers, epilogue=epilogue, tile=tile):
            model.fp8_producers, model.fp8_fc0_epilogue = producers, epilogue
            if tile is not None:
                fp8_gemm_gelu.TILE = tile
            outs[name] = model(pixels, pos, geo, attend)
        try:
            graphs[name] = capture(body)
        except Exception as exc:  # noqa: BLE001 - a tile that does not compile is a result too
            log(f"variant {name} failed: {type(exc).__name__}: {str(exc)[:300]}")
            outs.pop(name, None)
            torch.cuda.synchronize()
    fp8.fp8_fc0_epilogue = False
    times = alternating_ms(graphs, reps)
    flops = b * vision_flops(cfg, real)
    rows = {k: o.reshape(-1, cfg.hidden_size)[keep].float() for k, o in outs.items()}
    ref = rows["bf16 (fused tower today)"]
    res = {"work": f"B={b}, slots of {p} patches, {real} real ({grid[0]}x{grid[1]}), {flops / 1e12:.2f} TFLOP "
                   f"useful, {reps} interleaved rounds; 27 layers, random weights"}
    for k, v in times.items():
        med = statistics.median(v)
        res[k] = {"p50_ms": round(med, 3), "p90_ms": round(float(np.percentile(v, 90)), 3),
                  "p99_ms": round(float(np.percentile(v, 99)), 3), "tflops": round(flops / med / 1e9, 1),
                  "rel_l2_vs_bf16": round(float((rows[k] - ref).norm() / ref.norm()), 5)}
    a, c = rows["FP8, producers, _scaled_mm + GELU pass"], rows["FP8, a quantizer pass per linear (before)"]
    res["rel_l2_fp8_new_vs_before"] = round(float((a - c).norm() / c.norm()), 6)
    gemm = [k for k in graphs if "Triton GEMM" in k]
    best = min(gemm, key=lambda k: res[k]["p50_ms"]) if gemm else None
    tables = ["bf16 (fused tower today)", "FP8, producers, _scaled_mm + GELU pass"] + ([best] if best else [])
    for k in tables:
        res[f"kernels: {k}"] = kernel_table(graphs[k], cfg, b, n, real)
    log(f"tower B={b}:", json.dumps({k: v for k, v in res.items() if not k.startswith("kernels")}))
    for k in tables:
        log(f"  {k}: by class", json.dumps(res[f"kernels: {k}"]["by_class"]),
            json.dumps([(r["kernel"][:40], r["us"]) for r in res[f"kernels: {k}"]["kernels"][:6]]))
    del graphs, m, fp8
    torch.cuda.empty_cache()
    return res


GEMM_TILES = [(128, 256, 128, 8, 8, 3), (128, 256, 128, 8, 8, 4), (128, 128, 128, 8, 4, 4),
              (256, 128, 128, 8, 8, 3)]
GELU_TILES = [((4096, 64), 8), ((2048, 32), 4), ((8192, 128), 16), ((1024, 16), 4)]


def gelu_tiles(rows: int = 53760, cols: int = 4304) -> dict:
    """gelu_fp8 alone on the B=32 fc0 output, per tile (us per call inside a CUDA graph, GB/s)."""
    from bench_util import captured_us

    import graphrt.vision_kernels as vk

    y = torch.randn(rows, cols, device="cuda").to(torch.bfloat16)
    lin = FP8Linear(torch.randn(64, cols, device="cuda", dtype=torch.bfloat16), None, 6.0 / 448)
    res = {}
    keep = vk.GELU_FP8_TILE, vk.GELU_FP8_WARPS
    for tile, warps in GELU_TILES:
        vk.GELU_FP8_TILE, vk.GELU_FP8_WARPS = tile, warps
        us = captured_us(lambda: vk.gelu_fp8(y, lin), calls=5, replays=7)
        res[f"{tile} {warps} warps"] = {"us": round(us, 1), "gbs": round(rows * cols * 3 / us / 1e3)}
    vk.GELU_FP8_TILE, vk.GELU_FP8_WARPS = keep
    log("gelu_fp8 tiles at", rows, "x", cols, json.dumps(res))
    return res


def images(n: int, seed: int):
    from PIL import Image

    rs = np.random.RandomState(seed)
    return [Image.fromarray((rs.rand(480, 640, 3) * 255).astype(np.uint8)) for _ in range(n)]


def accuracy(args, out_dir: Path, stem: str) -> dict:
    from calib import calibrate
    from calib.report import accuracy_report
    from graphrt import Engine

    ckpt = checkpoint_dir(args, into=args.write_to)
    t = time.perf_counter()
    base = Engine.from_pretrained(ckpt, progress=False, graphs="off", fixed_steps=2)
    cal = [(im, QUERIES[i % len(QUERIES)]) for i, im in enumerate(images(args.calib_pairs, seed=1000))]
    calib = calibrate(base, cal, steps=2, batch=16, progress=False,
                      dataset={"source": "random noise images 640x480, numpy seed 1000, queries cycling"})
    path = calib.save(out_dir / f"{stem}_calib.json")
    log(f"calibrated {len(calib.linears)} linears on {len(cal)} pairs in {time.perf_counter() - t:.1f} s: {path}")
    held = [(im, QUERIES[(i + 3) % len(QUERIES)]) for i, im in enumerate(images(args.held_out, seed=2000))]
    res = {"calibration": str(path), "calib_pairs": len(cal), "held_out": len(held)}
    for scope in args.scopes.split(";"):
        t = time.perf_counter()
        fp8 = base.with_options(fp8=str(path), fp8_scope=scope)
        rep = accuracy_report(base, fp8, held, steps=2, answer_steps=2, batch=8)
        rep.pop("layers", None)
        rep["seconds"] = round(time.perf_counter() - t, 1)
        res[scope] = rep
        st = rep["stages"]
        log(f"scope {scope}: vision cos {st['vision']}, prefill {st['prefill']}, "
            + ", ".join(f"{k}: top1 {v['top1_agreement']:.4f} cos {v['logit_cos_mean']:.5f} KL {v['kl_mean']:.3f}"
                        for k, v in st.items() if k.startswith("step"))
            + f"; answers {rep['answers']['exact']}/{rep['answers']['pairs']}; kinds "
            + json.dumps({k: round(v["mean_cos"], 5) for k, v in rep["layers_by_kind"].items()}))
        del fp8
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(ap)
    ap.add_argument("--only", default="gelu,tower,accuracy", help="comma list: gelu, tower, accuracy")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--reps", type=int, nargs="+", default=[40, 10], help="interleaved rounds per batch size")
    ap.add_argument("--calib-pairs", type=int, default=64)
    ap.add_argument("--held-out", type=int, default=32)
    ap.add_argument("--scopes", default="lm;lm,vision", help="';'-separated fp8 scopes for the accuracy report")
    ap.add_argument("--write-to", help="with --preset: write the checkpoint here (kept for latency.py)")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="fp8-vision")
    args = ap.parse_args()
    out_dir, stem, report = result_stem(args.out_dir, args.tag, args=vars(args))
    import triton

    report["env"] = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__,
                     "triton": triton.__version__, "date": time.strftime("%Y-%m-%d")}
    parts = set(args.only.split(","))

    def save():
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))

    if "gelu" in parts:
        report["gelu_tiles"] = gelu_tiles()
        save()
    if "tower" in parts:
        for b, reps in zip(args.batch, args.reps):
            report[f"tower_B{b}"] = tower_ab(b, reps)
            save()
    if "accuracy" in parts:
        report["accuracy"] = accuracy(args, out_dir, stem)
        save()
    log(f"wrote {out_dir / (stem + '.json')}")


if __name__ == "__main__":
    main()

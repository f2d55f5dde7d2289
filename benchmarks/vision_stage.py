"""Vision stage and preprocessing on the GPU, one run (H100, bf16, random MoonViT weights):

1. GPU resize vs PIL, bit for bit: the pad-up resize over random sizes, and the processor's
   device path vs its PIL path (640x480 and others).
2. Where a 640x480 call's host preprocessing goes: decode (JPEG bytes), RGB convert, PIL resize,
   numpy copy, prompt build (template + tokenization), and the device path's host time.
3. The vision tower (27 layers, 1680-patch slot, 640x480 = 1656 real patches) as CUDA graphs,
   unfused vs fused with the first slot kernel ("slot1") vs fused with the current one ("slot"),
   interleaved A/B, at B=1 and B=32, and one 2240x2240 image (25,600 patches in a 26,676 slot, also
   on exactly its rows with the eager path's SDPA), P50/P90/P99 with TFLOP/s; output differences;
   the kernel table of the fastest variant's graph replay (profiler: kernel, count, µs, TFLOP/s).
   Steps resid1 / resid32 / resid25600: the residual A/B (GRAPHRT_VISION_RESIDUAL kernel vs gemm)
   the same way, a kernel table per variant.
4. Attention with head dim 72: the varlen FA2 call vs padding the head to 80/96/128, the dense
   SDPA backends (cuDNN, flash, efficient), and graphrt's own slot kernel (vision_kernels.
   slot_attention: head split 64 + 16) over a sweep of tiles, last-block-only masking vs every block.
5. (merged into 3.)
6. Prefill at B=1 and B=32 (3B widths, 480-token bucket, fused LM kernels, random weights) as
   graphs, FA2 vs graphrt's Triton prefill attention interleaved; kernel split by class against
   the weight-read and compute floors; the attention call alone over tiles.
7. A mixed batch (320x240, 640x480, 1024x768): slots of the largest vs packed, side by side.

    python benchmarks/vision_stage.py --out results.json
Random weights: only timings and path equivalence mean anything here.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_util import alternating_ms, capture, event_ms  # noqa: E402
from capture.ranges import VisionRanges  # noqa: E402
from capture.varlen import torch_fa2  # noqa: E402
from graphrt.config import PreprocessorConfig, VisionConfig  # noqa: E402
from graphrt.gpu_resize import resize_bicubic  # noqa: E402
from graphrt.processor import ImageProcessor, host_pixels, load_image  # noqa: E402
from graphrt.vision import VISION_RESIDUAL_MODES, MoonViT, vision_geometry  # noqa: E402
import graphrt.vision_kernels as vk  # noqa: E402

REPORT: dict = {}


def log(*a):
    print(*a, flush=True)


def events_ms(fn, reps: int) -> list[float]:
    return [event_ms(fn) for _ in range(reps)]


def host_ms(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def check_resize():
    rs = np.random.RandomState(0)
    proc = ImageProcessor(PreprocessorConfig())
    bad, n = [], 300
    for _ in range(n):
        w, h = (int(v) for v in rs.randint(14, 1300, size=2))
        target = proc.rounded_size(w, h)
        arr = rs.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
        ref = np.asarray(Image.fromarray(arr).resize(target, Image.Resampling.BICUBIC))
        got = resize_bicubic(torch.from_numpy(arr).cuda(), target).cpu().numpy()
        if not np.array_equal(ref, got):
            bad.append((w, h, target))
    host, dev = ImageProcessor(PreprocessorConfig()), ImageProcessor(PreprocessorConfig(), resize_device="cuda")
    proc_bad = []
    for i, size in enumerate([(640, 480), (1024, 768), (1920, 1080), (4000, 3000), (333, 129)]):
        im = Image.fromarray(np.random.RandomState(i).randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8))
        if not torch.equal(host(im).rgb, dev(im).rgb.cpu()):
            proc_bad.append(size)
    import PIL

    REPORT["resize"] = {"pillow": PIL.__version__, "pad_up_sizes": n, "pad_up_mismatches": bad,
                        "processor_sizes_checked": 5, "processor_mismatches": proc_bad}
    log("resize:", REPORT["resize"])


def old_device_path(pil):
    """The processor's device path as it was before this change (for the A/B of the host split)."""
    rgb = ImageOps.exif_transpose(pil)
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8)).cuda()
    return resize_bicubic(t, (644, 504))


def preprocess_split():
    from graphrt.prompt import PromptBuilder, load_tokenizer
    from weights.presets import PRESETS
    from weights.synth import write_tokenizer
    import tempfile

    rs = np.random.RandomState(1)
    arr = rs.randint(0, 256, size=(480, 640, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    pil = Image.fromarray(arr)
    proc = ImageProcessor(PreprocessorConfig())
    dev = ImageProcessor(PreprocessorConfig(), resize_device="cuda")
    tmp = Path(tempfile.mkdtemp())
    write_tokenizer(PRESETS["mid"].config, PRESETS["mid"].layout, tmp)
    prompts = PromptBuilder(load_tokenizer(tmp), PRESETS["mid"].config)
    resized = pil.resize((644, 504), Image.Resampling.BICUBIC)
    dev(pil)
    reps = 30
    for _ in range(2):  # the first pass warms the host (clocks, caches); the second is reported
        split = {
            "decode_jpeg_bytes": host_ms(lambda: load_image(jpeg), reps),
            "load_image_of_pil_rgb (convert)": host_ms(lambda: load_image(pil), reps),
            "pil_bicubic_640x480_to_644x504": host_ms(lambda: pil.resize((644, 504), Image.Resampling.BICUBIC), reps),
            "numpy_copy": host_ms(lambda: np.array(resized, dtype=np.uint8), reps),
            "prompt_build (template + tokenize)": host_ms(lambda: prompts.build("person", 414), reps),
            "processor_pil_path_total": host_ms(lambda: proc(pil), reps),
            "processor_gpu_path_host (no sync)": host_ms(lambda: dev(pil), reps),
            "exif_transpose copy (before)": host_ms(lambda: ImageOps.exif_transpose(pil), reps),
            "getexif orientation check (now)": host_ms(lambda: pil.getexif().get(0x0112), reps),
            "np.array + pageable H2D (before)": host_ms(lambda: torch.from_numpy(np.array(pil, dtype=np.uint8)).cuda(), reps),
            "np.asarray + pageable H2D (now)": host_ms(lambda: host_pixels(pil).cuda(), reps),
            "processor_gpu_path_before (exif copy, np.array, pageable H2D, resize)": host_ms(lambda: old_device_path(pil), reps),
            "processor_gpu_path_now": host_ms(lambda: dev(pil), reps),
        }
    t = torch.from_numpy(arr).cuda()
    split["gpu_resize_device_ms"] = statistics.median(events_ms(lambda: resize_bicubic(t, (644, 504)), 30))
    split["prompt_tokens_640x480"] = len(prompts.build("person", 414).ids)
    REPORT["preprocess_split_ms"] = split
    log("preprocess:", json.dumps(split, indent=1))


def engine_preprocess(reps: int = 15):
    """preprocess_ms as the Engine reports it for one 640x480 call (mid preset: real widths, 2
    layers; eager path: the preprocessing is the same on either path)."""
    import tempfile

    from graphrt import Engine
    from weights.synth import write_preset

    ckpt = write_preset("mid", Path(tempfile.mkdtemp()) / "mid", device="cuda", progress=False)
    engine = Engine.from_pretrained(ckpt, progress=False, fixed_steps=1, graphs="off")
    image = Image.fromarray(np.random.RandomState(3).randint(0, 256, size=(480, 640, 3)).astype(np.uint8))
    times = []
    for _ in range(reps + 3):
        r = engine.locate(image, "person")
        times.append(r.timings_ms["preprocess_ms"])
    REPORT["engine_one_frame"] = {"preprocess_ms_p50": round(statistics.median(times[3:]), 3),
                                  "preprocess_ms_max": round(max(times[3:]), 3), "prompt_tokens": r.prompt_tokens,
                                  "image_tokens": r.image_tokens, "resize_on": str(engine.processor.resize_device)}
    log("engine:", REPORT["engine_one_frame"])


def random_vision(cfg: VisionConfig) -> MoonViT:
    torch.manual_seed(0)
    m = MoonViT(cfg, torch.bfloat16, "cuda")
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p, dtype=torch.float32))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn_like(p, dtype=torch.float32))
            elif name == "pos_emb":
                p.copy_(torch.randn_like(p, dtype=torch.float32))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p, dtype=torch.float32) / math.sqrt(fan_in))
    return m


def vision_flops(cfg: VisionConfig, n: int) -> float:
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * h * (3 * h + h + 2 * i)
    attn = 4 * n * n * h  # QK^T and PV, per image of n patches
    return cfg.num_hidden_layers * (per_token * n + attn) + 2 * n * 3 * cfg.patch_size ** 2 * h


# The residual A/B (GRAPHRT_VISION_RESIDUAL): the fused tower (cuBLAS, default slot kernel) with the
# add in add_layernorm vs inside wo's / fc1's GEMMs (beta = 1, biases deferred to the norms).
RESIDUAL_VARIANTS = [("unfused", False, "varlen", False),
                     ("fused, residual kernel", True, "slot", True, "cublas", "auto", "kernel"),
                     ("fused, residual gemm", True, "slot", True, "cublas", "auto", "gemm")]

# Tower variants of the A/B: (name, fused kernels, attention mode of the slots, one-GEMM patch embedding).
TOWER_VARIANTS = [("unfused", False, "varlen", False), ("fused+slot1 (before)", True, "slot1", False),
                  ("fused+slot, patch linear + add", True, "slot", False), ("fused+slot (now)", True, "slot", True)]


def vision_ab(b: int, p: int, real: int, grid: tuple[int, int], reps: int, profile: bool = True,
              variants=None, exact_sdpa: bool = False):
    """The tower as CUDA graphs, variants interleaved (P50/P90/P99, useful TFLOP/s), on B slots of
    p patches with `real` real ones each. exact_sdpa: also the tower on exactly the real rows with
    the eager path's per-image SDPA (what an eager call of that image runs)."""
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
    merge = torch.arange(n, device="cuda")

    class Geo:
        pass

    geo = Geo()
    geo.cos, geo.sin, geo.merge_index = cos, sin, merge
    cu = (torch.arange(b + 1, device="cuda") * p).to(torch.int32)
    used = torch.full((b,), real, dtype=torch.int32, device="cuda")
    attend = VisionRanges(torch_fa2, p, cu, used)
    outs, graphs = {}, {}
    variants = variants or TOWER_VARIANTS
    # optional 5th / 6th / 7th fields: the GEMM switch (default cuBLAS), the slot attention kernel
    # (default triton), where the residual is added (GRAPHRT_VISION_RESIDUAL; default its default)
    for name, fused, mode, patch, *more in variants:
        more = list(more) + ["cublas", "triton", VISION_RESIDUAL_MODES[0]][len(more):]

        def body(name=name, model=m, fused=fused, mode=mode, patch=patch, gemm=more[0], kernel=more[1],
                 residual=more[2]):
            from graphrt.kernels import vision_attention as slot_kernels

            model.fused, model.attention, model.fused_patch_embed, model.gemm = fused, mode, patch, gemm
            model.residual = residual
            slot_kernels.KERNEL = kernel
            outs[name] = model(pixels, pos, geo, attend)

        try:
            graphs[name] = capture(body)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot be captured is a result too
            log(f"vision variant {name} failed: {type(exc).__name__}: {str(exc)[:300]}")
            outs.pop(name, None)
            torch.cuda.synchronize()
    keep = torch.cat([torch.arange(i * p, i * p + real, device="cuda") for i in range(b)])
    if exact_sdpa and b == 1:  # the eager path's attention on exactly the real rows
        from graphrt.attention.sdpa import vision_attention

        ex = Geo()
        ex.cos, ex.sin, ex.merge_index, ex.seqlens = cos[:real], sin[:real], merge[:real], [real]
        px, pz = pixels[:real].contiguous(), pos[:real].contiguous()

        def exact_body(model=m):
            model.fused, model.fused_patch_embed, model.gemm, model.residual = True, True, "cublas", "kernel"
            outs["exact rows + SDPA (eager's attention)"] = model(px, pz, ex, vision_attention)

        graphs["exact rows + SDPA (eager's attention)"] = capture(exact_body)
    times = alternating_ms(graphs, reps)
    torch.cuda.synchronize()
    # Compare only real patches (rows of pad patches are never used), merge_index is the identity here.
    rows = {k: o.reshape(-1, cfg.hidden_size).float() for k, o in outs.items()}
    rows = {k: (r[keep] if r.shape[0] == n else r) for k, r in rows.items()}
    base_name = "unfused" if "unfused" in rows else variants[0][0]
    a = rows[base_name]
    rel = {k: float((r - a).norm() / a.norm()) for k, r in rows.items() if k != base_name}
    flops = b * vision_flops(cfg, real)
    res = {}
    for k, v in times.items():
        med = statistics.median(v)
        res[k] = {"p50_ms": round(med, 3), "p90_ms": round(float(np.percentile(v, 90)), 3),
                  "p99_ms": round(float(np.percentile(v, 99)), 3), "tflops": round(flops / med / 1e9, 1)}
    res[f"rel_err_vs_{base_name}"] = rel
    res["work"] = (f"B={b}, slot {p} patches, {real} real ({grid[0]}x{grid[1]}), {flops / 1e12:.2f} TFLOP useful, "
                   f"{reps} interleaved rounds")
    REPORT[f"vision_B{b}_{real}"] = res
    log(f"vision B={b} {real}:", json.dumps(res))
    if profile == "all":  # a kernel table per fused variant
        for k in graphs:
            if k in dict((v[0], v) for v in variants) and k != "unfused":
                REPORT[f"kernel_table_B{b}_{real}_{k}"] = kernel_table(graphs[k], cfg, b, n, real)
                log(f"kernel table B={b} {real} {k}:", json.dumps(REPORT[f"kernel_table_B{b}_{real}_{k}"]["by_class"]))
    elif profile:
        best = min((k for k in graphs if k in dict((v[0], v) for v in variants) and k != "unfused"),
                   key=lambda k: statistics.median(times[k]))
        REPORT[f"kernel_table_B{b}_{real}"] = kernel_table(graphs[best], cfg, b, n, real)
        REPORT[f"kernel_table_B{b}_{real}"]["variant"] = best
        log(f"kernel table B={b} {real}:", json.dumps(REPORT[f"kernel_table_B{b}_{real}"], indent=1))
    del graphs, m
    torch.cuda.empty_cache()


def kernel_table(graph, cfg: VisionConfig, b: int, n: int, real: int, replays: int = 3) -> dict:
    """Kernels of a tower graph's replay (profiler): per kernel count, µs per replay, and the
    achieved TFLOP/s of the two matrix classes (GEMMs over all n rows, attention over real rows)."""
    from torch.profiler import ProfilerActivity, profile

    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    gemm_flops = layers * 2 * n * h * (3 * h + h + 2 * i)
    attn_flops = layers * b * 4 * real * real * h
    rows, classes = [], {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t <= 0 or ev.key.startswith("aten::") or ev.key.startswith("cuda"):
            continue
        low = ev.key.lower()
        cls = ("attention" if "attention" in low or "flash" in low or "fmha" in low or "attn" in low else
               "gemm" if any(x in low for x in ("gemm", "sm90", "cutlass", "nvjet", "xmma")) else
               "layernorm" if "layernorm" in low else "rope" if "rope" in low else "other")
        us = t / replays
        classes[cls] = classes.get(cls, 0.0) + us
        rows.append({"kernel": ev.key[:100], "class": cls, "count": ev.count // replays, "us": round(us, 1),
                     "us_per_call": round(us / max(1, ev.count // replays), 2)})
    rows.sort(key=lambda r: -r["us"])
    tf = {"gemm": gemm_flops, "attention": attn_flops}
    by_class = {k: {"ms": round(v / 1e3, 3), **({"tflops": round(tf[k] / v / 1e6, 1)} if k in tf else {})}
                for k, v in sorted(classes.items(), key=lambda kv: -kv[1])}
    return {"by_class": by_class, "total_ms": round(sum(classes.values()) / 1e3, 3), "kernels": rows[:20],
            "note": "graph replay; gemm TFLOP/s over all slot rows, attention over real rows"}


def gemm_shapes(reps: int = 20):
    """The tower's four GEMMs (bf16, bias epilogue) at B=1 and B=32 rows, with the MLP width 4304 vs 4352."""
    res = {}
    for m_rows in (1680, 32 * 1680):
        x = torch.randn(m_rows, 4352, device="cuda").bfloat16()
        for name, k, n in (("qkv", 1152, 3456), ("wo", 1152, 1152), ("fc0_4304", 1152, 4304), ("fc0_4352", 1152, 4352),
                           ("fc1_4304", 4304, 1152), ("fc1_4352", 4352, 1152)):
            w = torch.randn(n, k, device="cuda").bfloat16() / k ** 0.5
            b = torch.zeros(n, device="cuda").bfloat16()
            a = x[:, :k].contiguous()
            F.linear(a, w, b)
            t = statistics.median(events_ms(lambda: F.linear(a, w, b), reps))
            res[f"M{m_rows}_{name}"] = {"ms": round(t, 4), "tflops": round(2 * m_rows * k * n / t / 1e9, 1)}
    REPORT["gemms"] = res
    log("gemms:", json.dumps(res, indent=1))


def attention_variants(b: int, p: int, real: int, reps: int):
    heads, d = 16, 72
    n = b * p
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(n, heads, d, device="cuda", generator=g).bfloat16() for _ in range(3))
    cu = (torch.arange(b + 1, device="cuda") * p).to(torch.int32)
    used = torch.full((b,), real, dtype=torch.int32, device="cuda")
    scale = d ** -0.5
    flops = b * 4 * real * real * heads * d
    res = {}
    ref = torch_fa2(q, k, v, cu, cu, p, p, used, False)

    def record(name, fn, out_fn=None):
        try:
            fn()
            torch.cuda.synchronize()
            t = statistics.median(events_ms(fn, reps))
            entry = {"ms": round(t, 3), "tflops_useful": round(flops / t / 1e9, 1)}
            if out_fn is not None:
                out = out_fn()
                sel = torch.cat([torch.arange(i * p, i * p + real, device="cuda") for i in range(b)])
                entry["rel_err_vs_fa2_72"] = float((out[sel].float() - ref[sel].float()).norm() / ref[sel].float().norm())
            res[name] = entry
        except Exception as exc:  # noqa: BLE001 - a backend that refuses is a result too
            res[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        log(f"  attn B={b} {name}: {res[name]}")

    record("fa2_varlen_hd72 (today)", lambda: torch_fa2(q, k, v, cu, cu, p, p, used, False))
    for pad in (80, 96, 128):
        qp, kp, vp = (F.pad(t, (0, pad - d)) for t in (q, k, v))
        holder = {}
        record(f"fa2_varlen_pad{pad} (kernel only)",
               lambda: holder.__setitem__("o", torch_fa2(qp, kp, vp, cu, cu, p, p, used, False, scale=scale)),
               lambda: holder["o"][..., :d])
        record(f"pad{pad}_copy_cost (3 pads)", lambda: [F.pad(t, (0, pad - d)) for t in (q, k, v)])
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qd, kd, vd = (t.view(b, p, heads, d).transpose(1, 2) for t in (q, k, v))
    mask = torch.zeros(b, 1, 1, p, device="cuda", dtype=torch.bfloat16)
    mask[..., real:] = float("-inf")
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def dense(backend=backend, m=None):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qd, kd, vd, attn_mask=m)

        record(f"sdpa_{backend.name}_dense_no_mask (all {p} keys)", dense)
        holder = {}
        record(f"sdpa_{backend.name}_key_mask",
               lambda backend=backend: holder.__setitem__("o", dense(backend, mask.expand(b, heads, p, p))),
               lambda: holder["o"].transpose(1, 2).reshape(n, heads, d))
    REPORT[f"attention_B{b}"] = res


SLOT_TILES = [(128, 64, 4, 3), (64, 64, 4, 3), (128, 64, 4, 4), (128, 64, 4, 2), (128, 128, 4, 3)]


def slot_attention_sweep(b: int, p: int, real: int, reps: int):
    """graphrt's slot kernel over tiles (last key block masked; one tile also masking every block)
    against torch's FA2 varlen call, and the RoPE pass that precedes both."""
    heads, d = 16, 72
    n = b * p
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(n, 3, heads, d, device="cuda", generator=g).bfloat16()
    cu = (torch.arange(b + 1, device="cuda") * p).to(torch.int32)
    used = torch.full((b,), real, dtype=torch.int32, device="cuda")
    cos = torch.rand(n, d // 2, device="cuda")
    sin = torch.rand(n, d // 2, device="cuda")
    flops = b * 4 * real * real * heads * d
    ref = torch_fa2(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, p, p, used, False).float()
    keep = torch.cat([torch.arange(i * p, i * p + real, device="cuda") for i in range(b)])
    res = {"work": f"B={b}, 16 heads x 72, slot {p}, {real} real keys; {flops / 1e12:.3f} TFLOP useful"}

    def entry(t, out=None):
        e = {"ms": round(t, 4), "tflops_useful": round(flops / t / 1e9, 1)}
        if out is not None:
            e["rel_err_vs_fa2"] = float((out.float()[keep] - ref[keep]).norm() / ref[keep].norm())
        return e

    res["fa2_varlen"] = entry(statistics.median(events_ms(
        lambda: torch_fa2(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, p, p, used, False), reps)))
    work = qkv.clone()
    res["rope_pass (in place)"] = entry(statistics.median(events_ms(lambda: vk.rope_2d_(work, cos, sin), reps)))
    best = (1e9, None)
    for tiles, every in [(t, False) for t in SLOT_TILES] + [(SLOT_TILES[0], True)]:
        name = f"slot {tiles}{' mask every block' if every else ''}"
        try:
            out = vk.slot_attention(qkv, cu, used, p, tiles=tiles, mask_every_block=every)
            torch.cuda.synchronize()
            t = statistics.median(events_ms(lambda: vk.slot_attention(qkv, cu, used, p, tiles=tiles,
                                                                      mask_every_block=every), reps))
            res[name] = entry(t, out)
            if res[name]["rel_err_vs_fa2"] < 2e-2 and t < best[0]:
                best = (t, name)
        except Exception as exc:  # noqa: BLE001 - a tile that does not compile is a result too
            res[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        log(f"  slot B={b} {name}: {res[name]}")
    res["best"] = {"ms": round(best[0], 4), "variant": best[1], "default": list(vk.SLOT_ATTENTION_TILES)}
    REPORT[f"slot_attention_B{b}"] = res
    log(f"slot attention B={b} best:", res["best"], "fa2:", res["fa2_varlen"], "rope pass:", res["rope_pass (in place)"])


def mixed_batch(reps: int = 20):
    """Images of 320x240, 640x480 and 1024x768 in one tower call: slots of the largest (VisionRanges,
    as the graphs lay a batch out today) vs packed back to back (PackedImages), fused tower with the
    slot kernel, both as CUDA graphs, interleaved; and packed vs each image alone."""
    from graphrt.vision import PackedImages

    cfg = VisionConfig()
    m = random_vision(cfg)
    proc = ImageProcessor(PreprocessorConfig())
    ps = cfg.patch_size
    grids = []
    for w, h in ((320, 240), (640, 480), (1024, 768)):
        tw, th = proc.target_size(w, h)
        grids.append((th // ps, tw // ps))
    lens = [h * w for h, w in grids]
    slot = max(lens)
    g = torch.Generator(device="cuda").manual_seed(5)
    real_pixels = [torch.randn(n, 3, ps, ps, device="cuda", generator=g) for n in lens]
    geos = [vision_geometry([gr], cfg, "cuda") for gr in grids]
    pes = [m.position_embedding(gr) for gr in grids]

    class Geo:
        pass

    def layout(starts, total):
        geo = Geo()
        geo.cos = torch.zeros(total, cfg.head_dim // 2, device="cuda")
        geo.sin = torch.zeros_like(geo.cos)
        geo.merge_index = torch.arange(total, device="cuda")
        pixels = torch.zeros(total, 3, ps, ps, device="cuda")
        pos = torch.zeros(total, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
        for s0, n, px, ge, pe in zip(starts, lens, real_pixels, geos, pes):
            geo.cos[s0: s0 + n], geo.sin[s0: s0 + n] = ge.cos, ge.sin
            pixels[s0: s0 + n], pos[s0: s0 + n] = px, pe
        return geo, pixels, pos

    slot_starts = [i * slot for i in range(3)]
    packed_starts = [0, lens[0], lens[0] + lens[1]]
    cases = {
        "slots of the largest (3 x %d rows)" % slot: (layout(slot_starts, 3 * slot), slot_starts, VisionRanges(
            torch_fa2, slot, (torch.arange(4, device="cuda") * slot).to(torch.int32),
            torch.tensor(lens, dtype=torch.int32, device="cuda"))),
        "packed (%d rows)" % sum(lens): (layout(packed_starts, sum(lens)), packed_starts,
                                         PackedImages.of(lens, "cuda")),
    }
    m.fused, m.attention = True, "slot"
    outs, graphs = {}, {}
    for name, ((geo, pixels, pos), starts, attend) in cases.items():
        def body(name=name, geo=geo, pixels=pixels, pos=pos, attend=attend):
            outs[name] = m(pixels, pos, geo, attend)

        graphs[name] = capture(body)
    times = alternating_ms(graphs, reps)
    torch.cuda.synchronize()
    feats = {}
    for name, (_, starts, _) in cases.items():
        rows = outs[name].view(-1, cfg.hidden_size).float()
        feats[name] = torch.cat([rows[s0: s0 + n] for s0, n in zip(starts, lens)])
    alone = []
    with torch.no_grad():
        for n, px, ge, pe in zip(lens, real_pixels, geos, pes):
            one = Geo()
            one.cos, one.sin, one.merge_index = ge.cos, ge.sin, torch.arange(n, device="cuda")  # rows as above
            alone.append(m(px, pe, one, PackedImages.of([n], "cuda")).view(-1, cfg.hidden_size).float())
    alone = torch.cat(alone)
    names = list(cases)
    flops = sum(vision_flops(cfg, n) for n in lens)
    res = {k: {"p50_ms": round(statistics.median(v), 3), "p90_ms": round(float(np.percentile(v, 90)), 3),
               "useful_tflops": round(flops / statistics.median(v) / 1e9, 1)} for k, v in times.items()}
    res["grids"] = grids
    res["rel_err_packed_vs_slots"] = float((feats[names[1]] - feats[names[0]]).norm() / feats[names[0]].norm())
    res["rel_err_packed_vs_each_image_alone"] = float((feats[names[1]] - alone).norm() / alone.norm())
    res["work"] = f"3 images, {lens} patches, fused tower, slot kernel, {flops / 1e12:.2f} TFLOP useful"
    REPORT["mixed_batch"] = res
    log("mixed batch:", json.dumps(res))
    del graphs, m
    torch.cuda.empty_cache()


PREFILL_TILES = [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 3)]


def prefill_stage(t: int = 480, real: int = 451, reps: int = 20):
    """The 3B prefill (random weights, fused LM kernels, the 480-token bucket with 451 real tokens)
    as CUDA graphs at B=1 and B=32: FA2 vs graphrt's Triton prefill attention interleaved, kernel
    split by class, the floors; and the attention kernel alone over tiles."""
    from torch.profiler import ProfilerActivity, profile

    import graphrt.kernels.prefill_attention as pt
    from capture.ranges import PrefillRanges
    from graphrt.config import TextConfig
    from graphrt.llm import Qwen2

    cfg = TextConfig()
    torch.manual_seed(0)
    llm = Qwen2(cfg, torch.bfloat16, "cuda")
    with torch.no_grad():
        for name, prm in llm.named_parameters():
            if prm.dim() == 1:
                prm.fill_(1.0) if "norm" in name else prm.normal_(0, 0.02)
            else:
                prm.normal_(0, 0.02)
    slots, bmax = 1024, 32
    cache = llm.new_cache(bmax, slots)
    h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim
    per_layer_params = h * (h + 2 * kv) + h * h + h * 2 * i + i * h
    res = {}
    for b in (1, 32):
        n = b * t
        emb = (torch.randn(n, h, device="cuda") * 0.5).bfloat16()
        col = torch.arange(t, device="cuda").repeat(b)
        positions = (col - (t - real)).clamp(min=0)
        write = torch.where(col >= t - real, positions, torch.full_like(positions, slots - 1))
        rows = torch.arange(b, device="cuda").repeat_interleave(t)
        cu_q = (torch.arange(b + 1, device="cuda") * t).to(torch.int32)
        cu_k = torch.cat([torch.arange(b, device="cuda") * slots, torch.tensor([bmax * slots], device="cuda")]).to(torch.int32)
        ranges = PrefillRanges(torch_fa2, t, slots, positions, rows, write, cu_q, cu_k,
                               torch.full((b,), real, dtype=torch.int32, device="cuda"))
        idx = torch.arange(b, device="cuda") * t + t - 1
        graphs = {}
        for mode in ("varlen", "triton"):
            pt.MODE = mode

            def body():
                llm(emb, ranges, cache, ranges, logits_index=idx, fused=True)

            graphs[mode] = capture(body)
        times = alternating_ms(graphs, reps if b == 1 else max(4, reps // 3))
        flops = 2 * n * per_layer_params * cfg.num_hidden_layers
        entry = {"work": f"B={b}, {t}-token bucket ({real} real) per row, 36 layers; {flops / 1e12:.2f} TFLOP in the "
                         f"linears over bucket rows", "floor_compute_ms_at_790": round(flops / 790e12 * 1e3, 3),
                 "floor_weights_ms_at_3.35TBps": round(2 * per_layer_params * 36 / 3.35e12 * 1e3, 3)}
        for k, v in times.items():
            entry[f"attention={k}"] = {"p50_ms": round(statistics.median(v), 3),
                                       "p90_ms": round(float(np.percentile(v, 90)), 3),
                                       "tflops_bucket_rows": round(flops / statistics.median(v) / 1e9, 1)}
        for mode in ("varlen", "triton"):
            pt.MODE = mode
            with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
                llm(emb, ranges, cache, ranges, logits_index=idx, fused=True)
                torch.cuda.synchronize()
            classes, kernels = {}, {}
            for ev in prof.key_averages():
                tt = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
                if tt <= 0 or ev.key.startswith("aten::") or ev.key.startswith("cuda"):
                    continue
                low = ev.key.lower()
                cls = ("attention" if "flash" in low or "fmha" in low or "prefill" in low else
                       "gemm" if any(x in low for x in ("gemm", "sm90", "cutlass", "nvjet", "xmma")) else
                       "triton" if "triton" in low or "_kernel" in low else "other")
                classes[cls] = classes.get(cls, 0.0) + tt / 1e3
                kernels[ev.key[:80]] = kernels.get(ev.key[:80], 0.0) + tt / 1e3
            entry[f"kernels attention={mode}"] = {
                "class_ms": {k: round(v, 3) for k, v in classes.items()}, "total_ms": round(sum(classes.values()), 3),
                "top_ms": {k: round(v, 3) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:8]}}
        res[f"B{b}"] = entry
        log(f"prefill B={b}:", json.dumps(entry, indent=1))
        if b == 1:  # the attention call alone, over tiles (layer 0's cache as written above)
            q = (torch.randn(n, cfg.num_attention_heads, cfg.head_dim, device="cuda")).bfloat16()
            kf, vf = cache.k[0].flatten(0, 1), cache.v[0].flatten(0, 1)
            args = (q, kf, vf, cu_q, cu_k, t, slots, ranges.seqused, True)
            ref = torch_fa2(*args).float()
            live = slice(t - real, t)
            sweep = {"fa2": round(statistics.median(events_ms(lambda: torch_fa2(*args), 30)), 4)}
            for tiles in PREFILL_TILES:
                try:
                    out = pt.prefill_attention(*args, tiles=tiles).float()
                    err = float((out[live] - ref[live]).norm() / ref[live].norm())
                    sweep[str(tiles)] = {"ms": round(statistics.median(events_ms(
                        lambda: pt.prefill_attention(*args, tiles=tiles), 30)), 4), "rel_err_vs_fa2": err}
                except Exception as exc:  # noqa: BLE001
                    sweep[str(tiles)] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
            sweep["default"] = list(pt.TILES)
            res["attention_alone_B1"] = sweep
            log("prefill attention alone B=1:", json.dumps(sweep))
        del graphs
    pt.MODE = "triton"
    REPORT["prefill"] = res
    del llm, cache
    torch.cuda.empty_cache()


def run_steps(steps, report: dict, out: str, only=None, skip=(), after=None) -> None:
    """Run each (name, fn) step not skipped (or in `only`), timing it; an exception is recorded in the
    report and the next step runs. After each step `after()` (if given) adds to the report, and the
    report is written to `out`, so a call cut off by its time limit keeps what it measured."""
    for name, fn in steps:
        if name in skip or (only is not None and name not in only):
            continue
        t = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - keep the other measurements
            import traceback

            traceback.print_exc()
            report[name + "_error"] = f"{type(exc).__name__}: {exc}"
        log(f"[{name}] {time.perf_counter() - t:.1f} s")
        if after is not None:
            after()
        Path(out).write_text(json.dumps(report, indent=1, default=str))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="vision_stage.json")
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--only", nargs="*", default=None, help="run only these steps (names as in --skip)")
    args = ap.parse_args()
    import triton

    REPORT["env"] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                     "date": time.strftime("%Y-%m-%d")}
    log(REPORT["env"])
    steps = [("resize", check_resize), ("preprocess", preprocess_split), ("engine", engine_preprocess),
             ("gemms", gemm_shapes),
             ("slot1", lambda: slot_attention_sweep(1, 1680, 1656, 30)),
             ("slot32", lambda: slot_attention_sweep(32, 1680, 1656, 10)),
             ("vision1", lambda: vision_ab(1, 1680, 1656, (36, 46), 40)),
             ("vision32", lambda: vision_ab(32, 1680, 1656, (36, 46), 10)),
             ("vision25600", lambda: vision_ab(1, 26676, 25600, (160, 160), 6, variants=TOWER_VARIANTS[1:],
                                               exact_sdpa=True)),
             ("resid1", lambda: vision_ab(1, 1680, 1656, (36, 46), 60, profile="all", variants=RESIDUAL_VARIANTS)),
             ("resid32", lambda: vision_ab(32, 1680, 1656, (36, 46), 16, profile="all", variants=RESIDUAL_VARIANTS)),
             ("resid25600", lambda: vision_ab(1, 26676, 25600, (160, 160), 6, profile="all",
                                              variants=RESIDUAL_VARIANTS[1:])),
             ("mixed", mixed_batch),
             ("prefill", prefill_stage),
             ("attn1", lambda: attention_variants(1, 1680, 1656, 30)),
             ("attn32", lambda: attention_variants(32, 1680, 1656, 10))]
    run_steps(steps, REPORT, args.out, args.only, args.skip)


if __name__ == "__main__":
    main()

"""Where the host time of one `Engine.locate_batch` goes, span by span, and A/B of host-side changes.

Wraps the engine's phases with wall-clock spans (perf_counter; no extra synchronization, so the
stage timings stay what the engine reports) and runs the same batch repeatedly:

    intake      first Intake.prepare start -> last prepare end (the thread pool's wall time);
                inside: processor (load_image, rescale_on_device), prompt build; busy = sum over jobs
    run         Backend.run: admit (vision: fill_vision + replays; prefill: fill_prefill + replays),
                decode steps (one D2H read each), finish (collect)
    results     LocateResult.of for every row (parse + decode text)
    other       the rest of the call (validation, grouping, generators)

Variants (interleaved, rotating order, over the same images):
    before        every prompt built (no prompt cache), fill_vision as before 2026-11-24's pre
                  branch (staging copy per image, cos/sin/pos copied per image), PIL's pixels packed
                  into a copy before the host->device copy
    after_packed  the prompt cache and the grouped fill_vision, pixels still packed
    after         everything (the code now): PIL's RGBX memory read directly (processor.pil_rgbx)
    after_w1      `after` with 1 preprocessing thread (EngineOptions.preprocess_workers; default
                  min(8, cores))
Random weights: fixed 2 MTP steps per row, tokens are random.

    python benchmarks/host_gaps.py --checkpoint DIR --batch 1 32 --iters 10 --out res.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import capture.backend
import capture.inputs
import capture.runtime
import capture.staging
import capture.state
import graphrt.backend
import graphrt.intake
import graphrt.processor
import graphrt.request
from capture import Buckets
from graphrt import Engine
from graphrt.prompt import PromptBuilder

QUERIES = ["person", "car", "traffic light", "dog", "bicycle", "the red umbrella", "bus", "cat"]


class Spans:
    """(name, start, end, thread) of every wrapped call, for one measured call at a time."""

    def __init__(self):
        self.records: list[tuple[str, float, float, int]] = []
        self.on = False
        self._undo: list = []

    def timed(self, fn, name: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.records.append((name, t0, time.perf_counter(), threading.get_ident()))

        return timed

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)  # a classmethod comes back bound: called without its class
        raw = owner.__dict__[attr] if isinstance(owner, type) else fn
        timed = self.timed(fn, name)
        setattr(owner, attr, classmethod(lambda cls, *a, **k: timed(*a, **k)) if isinstance(raw, classmethod)
                else timed)
        self._undo.append((owner, attr, raw))

    def restore(self) -> None:
        for owner, attr, raw in reversed(self._undo):
            setattr(owner, attr, raw)

    @contextlib.contextmanager
    def measure(self):
        self.records = []
        self.on = True
        try:
            yield
        finally:
            self.on = False


def instrument(spans: Spans) -> None:
    w = spans.wrap
    w(Engine, "locate_batch", "call")
    w(graphrt.intake.Intake, "prepare", "prepare")
    w(graphrt.processor.ImageProcessor, "__call__", "processor")
    w(graphrt.processor, "load_image", "load_image")
    w(graphrt.processor.ImageProcessor, "rescale_on_device", "rescale_on_device")
    w(PromptBuilder, "build", "prompt_build")
    w(graphrt.backend.Backend, "run", "run")
    w(capture.runtime.GraphRuntime, "admit", "admit")
    w(capture.runtime.GraphRuntime, "_encode", "vision")
    w(capture.runtime.GraphRuntime, "_prefill", "prefill")
    w(capture.state.RowState, "fill_seeds", "fill_seeds")
    w(capture.staging.Staging, "fill", "staging_wait")
    w(capture.staging.Staging, "send", "staging_send")
    w(capture.inputs.StageInputs, "fill_prefill", "fill_prefill")
    w(capture.backend.GraphDecode, "_step", "step")
    w(capture.backend.GraphDecode, "_results", "collect")
    w(graphrt.request.LocateResult, "of", "result_of")
    w(graphrt.request, "parse_detections", "parse")


def summarize_call(records) -> dict[str, float]:
    """One call's spans -> ms per phase (sums over calls of the same name; walls for intake/call)."""
    by = collections.defaultdict(list)
    for name, t0, t1, _ in records:
        by[name].append((t0, t1))
    out = {f"{k}_ms": sum(t1 - t0 for t0, t1 in v) * 1e3 for k, v in by.items()}
    out.update({f"{k}_n": len(v) for k, v in by.items()})
    call0, call1 = by["call"][0]
    if by.get("prepare"):
        first, last = min(t0 for t0, _ in by["prepare"]), max(t1 for _, t1 in by["prepare"])
        out["intake_wall_ms"] = (last - first) * 1e3
        out["before_intake_ms"] = (first - call0) * 1e3
    if by.get("run"):
        r0, r1 = by["run"][0]
        out["intake_to_run_ms"] = (r0 - (last if by.get("prepare") else call0)) * 1e3
        out["after_run_ms"] = (call1 - r1) * 1e3
    return out


def fill_vision_before(self, images, bv: int, p: int) -> None:
    """capture/inputs.py's fill_vision before the pre branch (for the A/B)."""
    pipe = self.pipe
    if (images[0].mean, images[0].std) != self._norm:
        cols = pipe.pix_mean.shape[0] // 3
        pipe.pix_mean.copy_(torch.tensor(images[0].mean).repeat_interleave(cols))
        pipe.pix_std.copy_(torch.tensor(images[0].std).repeat_interleave(cols))
        self._norm = (images[0].mean, images[0].std)
    host = self._vision.fill()
    merge, used = host["merge_index"], host["v_seqused"]
    for i, im in enumerate(images):
        n, start = im.num_patches, i * p
        stage = pipe.rgb_stage[: im.rgb.numel()]
        stage.copy_(im.rgb.view(-1))
        torch.index_select(stage, 0, self.patch_order(im.grid), out=pipe.pixels_u8[start : start + n].view(-1))
        cos, sin, order, pos = self.grid_geometry(im.grid)
        pipe.cos[start : start + n].copy_(cos)
        pipe.sin[start : start + n].copy_(sin)
        pipe.pos[start : start + n].copy_(pos)
        merge[start : start + n] = order + start
        merge[start + n : start + p] = start
        used[i] = n
    for i in range(len(images), bv):
        merge[i * p : (i + 1) * p] = i * p
        used[i] = p
    self._vision.send({"merge_index": bv * p, "v_seqused": bv})


FILL_AFTER = capture.inputs.StageInputs.fill_vision
RGBX = graphrt.processor.pil_rgbx


@contextlib.contextmanager
def no_rgbx(image):
    yield None  # the processor packs PIL's pixels into a copy, as before


class Variant:
    """One configuration of the host side: prompt cache on/off, fill_vision, preprocessing threads."""

    def __init__(self, engine, cache: bool, fill, workers: int, rgbx: bool = True):
        self.engine, self.cache, self.fill, self.workers, self.rgbx = engine, cache, fill, workers, rgbx
        self.built = collections.OrderedDict()  # this variant's own prompt cache
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"prep{workers}")

    def apply(self) -> None:
        prompts = self.engine.prompts
        prompts._built = self.built
        prompts.PROMPTS_KEPT = PromptBuilder.PROMPTS_KEPT if self.cache else 0
        capture.inputs.StageInputs.fill_vision = self.fill
        graphrt.processor.pil_rgbx = RGBX if self.rgbx else no_rgbx
        self.engine.options = dataclasses.replace(self.engine.options, preprocess_workers=self.workers)
        self.engine._pool = self.pool


def images(n: int, width: int, height: int, seed: int) -> list[Image.Image]:
    rs = np.random.RandomState(seed)
    return [Image.fromarray((rs.rand(height, width, 3) * 255).astype(np.uint8)) for _ in range(n)]


def pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--graphs", default="on")
    ap.add_argument("--out", default="host_gaps.json")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    opts = dict(progress=False, fixed_steps=2, graphs=args.graphs if cuda else "off")
    if cuda and args.graphs == "on":  # only the buckets this run uses: a short capture
        opts["buckets"] = Buckets(batch_sizes=tuple(sorted(set(args.batch))), patch_budgets=(1680,),
                                  prefill_lengths=(64, 480, 576, 1280))
    t = time.perf_counter()
    engine = Engine.from_pretrained(args.checkpoint, **opts)
    load_s = time.perf_counter() - t
    spans = Spans()
    instrument(spans)
    before, after = spans.timed(fill_vision_before, "fill_vision"), spans.timed(FILL_AFTER, "fill_vision")
    variants = {"before": Variant(engine, False, before, 8, rgbx=False),
                "after_packed": Variant(engine, True, after, 8, rgbx=False),
                "after": Variant(engine, True, after, 8), "after_w1": Variant(engine, True, after, 1)}
    report = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "load_s": round(load_s, 1),
              "work": f"locate_batch of B distinct {args.width}x{args.height} PIL images, one query each "
                      f"({len(QUERIES)} distinct, cycled), 2 MTP steps per row, graphs {opts['graphs']}",
              "results": {}}
    for batch in args.batch:
        pairs = list(zip(images(batch, args.width, args.height, seed=batch), (QUERIES * batch)[:batch]))
        samples = {v: [] for v in variants}
        names = list(variants)
        for i in range(args.warmup + args.iters):
            for name in names[i % len(names):] + names[: i % len(names)]:  # rotating order
                variants[name].apply()
                if cuda:
                    torch.cuda.synchronize()
                with spans.measure():
                    results = engine.locate_batch(pairs)
                if cuda:
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    s = summarize_call(spans.records)
                    for key in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms"):
                        s[f"engine_{key}"] = float(np.median([r.timings_ms.get(key, float("nan")) for r in results]))
                    samples[name].append(s)
        out = {}
        for name, rows in samples.items():
            keys = sorted({k for r in rows for k in r})
            out[name] = {k: {"p50": pct([r.get(k, 0.0) for r in rows], 50), "p90": pct([r.get(k, 0.0) for r in rows], 90)}
                         for k in keys}
            stages = sum(out[name][f"engine_{k}"]["p50"] for k in ("vision_ms", "prefill_ms", "decode_ms"))
            out[name]["summary"] = {"call_p50_ms": out[name]["call_ms"]["p50"], "stages_p50_ms": round(stages, 3),
                                    "call_minus_stages_p50_ms": round(out[name]["call_ms"]["p50"] - stages, 3)}
        report["results"][f"B={batch}"] = out
        print(f"B={batch}", json.dumps({n: out[n]["summary"] for n in out}))
        for name in out:
            print(f"  {name}: " + ", ".join(f"{k}={v['p50']}" for k, v in out[name].items()
                                            if k != "summary" and k.endswith("_ms")))
    variants["after"].apply()
    capture.inputs.StageInputs.fill_vision = FILL_AFTER
    spans.restore()
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

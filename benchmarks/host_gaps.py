"""Where the host time of one `Engine.locate_batch` goes, span by span, and A/B of host-side changes.

Wraps the engine's phases with wall-clock spans (perf_counter; no extra synchronization, so the
stage timings stay what the engine reports) and runs the same batch repeatedly. Per call:

    call                Engine.locate_batch, returned results included
    stages              the engine's laps: preprocess + vision + prefill + decode (first row)
    exposed             call - stages: host time no stage lap holds (the issue's measure)
    host_outside_gpu    call - (vision + prefill + decode): every host ms of the call outside the
                        GPU stages' laps (the whole intake included)
and a timeline: each span's start (ms after the call's start, first occurrence) and its summed
time, P50/P90 over the calls. Spans:
    prepare / prepare_many  Intake (inside: load_image, processor.process_loaded (the device
                        resizes), prompt_build); run: Backend.run; admit (vision: fill_vision and
                        the replay launch; prefill: fill_prefill (fill_seeds) and launch; the wait
                        for the prefill's last event); step (replay + the one D2H read); collect;
                        result_of (LocateResult.of per row)

Variants (interleaved, rotating order, over the same images):
    before   this pass's starting point: images prepared one by one (EngineOptions.batch_intake
             False: on the CPU threads, each with its own blocking upload (torch synchronizes the
             stream after a pageable copy), pad-drop copy and resize launches), the `seen` seed
             written from the prompt's id list, fill_vision rewriting every table and length
             and gathering image by image, begin()'s fill before the vision, no read-back copy
             (done checks and five reads in collect on the device after the GPU ends)
    after    2026-11-24's code: equal-size images resized together (non-blocking pageable
             uploads, one per image, the first pass reading RGBX), the seed from the id array,
             fill_vision rewriting only what changed, the read-back copy queued behind each replay
             (EngineOptions.pinned_intake=False)
    pinned   the code now: `after` with the host pixels copied by the CPU threads into the
             engine's pinned ring and uploaded one block at a time (graphrt/host_staging.py)
(2026-11-24's run also had `after` through a kept pinned block filled by ONE thread, measured no
faster and removed: docs/notes.md, section "Host time around the GPU stages".)
Default variants: after pinned (--variants before after pinned for all three).
Random weights: fixed 2 MTP steps per row, tokens are random. On a CPU-only machine the graph
backend runs its stage bodies directly (--graphs on), which exercises the same host code.

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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import capture.backend
import capture.inputs
import capture.readback
import capture.runtime
import capture.staging
import capture.state
import graphrt.backend
import graphrt.engine
import graphrt.intake
import graphrt.processor
import graphrt.request
from capture import Buckets
from graphrt import Engine
from graphrt.decode import RowResult
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
    w(graphrt.intake.Intake, "prepare_many", "prepare_many")
    w(graphrt.processor.ImageProcessor, "process_loaded", "process_loaded")
    w(graphrt.processor.ImageProcessor, "_upload", "upload")
    w(graphrt.processor, "load_image", "load_image")
    w(PromptBuilder, "build", "prompt_build")
    w(graphrt.backend.Backend, "run", "run")
    w(capture.runtime.GraphRuntime, "admit", "admit")
    w(capture.runtime.GraphRuntime, "_encode", "vision")
    w(capture.runtime.GraphRuntime, "_prefill", "prefill")
    w(capture.inputs.StageInputs, "fill_vision", "fill_vision")
    w(capture.readback.ReadBack, "enqueue", "read_back_enqueue")
    w(capture.runtime.GraphRuntime, "_free_rows", "free_rows")
    w(graphrt.engine.Engine, "_backend_for_batch", "backend_for_batch")
    w(capture.backend.GraphBackend, "start", "backend_start")
    w(capture.inputs.StageInputs, "fill_prefill", "fill_prefill")
    w(capture.state.RowState, "fill_seeds", "fill_seeds")
    w(capture.staging.Staging, "send", "staging_send")
    w(capture.backend.GraphDecode, "_step", "step")
    w(capture.backend.GraphDecode, "_results", "collect")
    w(graphrt.request.LocateResult, "of", "result_of")


STAGES = ("vision_ms", "prefill_ms", "decode_ms")


def summarize_call(records, results) -> dict[str, float]:
    """One call's spans -> ms per span name (summed) and its first start after the call's start;
    the call against the engine's own stage laps."""
    by = collections.defaultdict(list)
    for name, t0, t1, _ in records:
        by[name].append((t0, t1))
    call0, call1 = by["call"][0]
    out = {f"{k}_ms": sum(t1 - t0 for t0, t1 in v) * 1e3 for k, v in by.items()}
    out.update({f"{k}_at_ms": (min(t0 for t0, _ in v) - call0) * 1e3 for k, v in by.items() if k != "call"})
    out.update({f"{k}_end_ms": (max(t1 for _, t1 in v) - call0) * 1e3 for k, v in by.items() if k != "call"})
    intake = by.get("prepare_many") or by.get("prepare") or []
    if intake:
        out["intake_wall_ms"] = (max(t1 for _, t1 in intake) - min(t0 for t0, _ in intake)) * 1e3
    laps = {k: float(np.median([r.timings_ms.get(k, float("nan")) for r in results]))
            for k in ("preprocess_ms",) + STAGES}
    out.update({f"engine_{k}": v for k, v in laps.items()})
    gpu = sum(laps[k] for k in STAGES)
    out["stages_ms"] = gpu + laps["preprocess_ms"]
    out["exposed_ms"] = out["call_ms"] - out["stages_ms"]
    out["host_outside_gpu_ms"] = out["call_ms"] - gpu
    return out


# ---------------------------------------------------------------- the "before" variant's pieces

def fill_seeds_before(cls, host: dict, segments: list, gen, pad_id: int) -> None:
    """capture/state.py's fill_seeds before this pass: the `seen` seed from the id list."""
    for name, seed in cls.seeded().items():
        if isinstance(seed, capture.state.FromSegments):
            host[name][: len(segments)] = seed.values(segments, gen)
        elif isinstance(seed, capture.state.TokenSet):
            for i, seg in enumerate(segments):
                ids = seg.row.prompt.ids if name == "seen" else seed.ids(seg, gen)
                host[name][i, : len(ids)] = ids
                host[name][i, len(ids):] = pad_id


def collect_before(self, targets: list[int]) -> list:
    """capture/runtime.py's collect before this pass: five device->host reads."""
    pipe, n = self.pipe, len(targets)
    index = slice(0, n) if targets == list(range(n)) else torch.tensor(targets, device=self.model.device)
    n_gen, steps, ended, limit = (x[index].tolist() for x in (pipe.n_gen, pipe.steps, pipe.ended, pipe.step_limit))
    out = pipe.out_tokens[index].cpu()
    results = []
    for i in range(len(targets)):
        reason = "end" if ended[i] else "fixed_steps" if steps[i] >= limit[i] else "max_new_tokens"
        results.append(RowResult(tokens=out[i, : n_gen[i]].tolist(), stop_reason=reason, steps=steps[i]))
    return results


def fill_vision_before(self, images, bv: int, p: int) -> None:
    """capture/inputs.py's fill_vision before this pass: every table and length rewritten each
    call, one gather per image. (The caches of the code now stay right across variants: every
    call of a run fills the same grids into the same slots.)"""
    pipe = self.pipe
    host = self._vision.fill()
    merge, used = host["merge_index"], host["v_seqused"]
    geometry = [self.grid_geometry(im.grid) for im in images]
    for i, im in enumerate(images):
        n, start = im.num_patches, i * p
        torch.index_select(im.rgb.view(-1), 0, self.patch_order(im.grid), out=pipe.pixels_u8[start : start + n].view(-1))
        merge[start : start + n] = geometry[i][2] + start
        merge[start + n : start + p] = start
        used[i] = n
    i = 0
    while i < len(images):
        grid, k = images[i].grid, 1
        while i + k < len(images) and images[i + k].grid == grid:
            k += 1
        cos, sin, _, pos = geometry[i]
        n = cos.shape[0]
        for dst, src in ((pipe.cos, cos), (pipe.sin, sin), (pipe.pos, pos)):
            dst[i * p : (i + k) * p].view(k, p, *src.shape[1:])[:, :n].copy_(src.unsqueeze(0).expand(k, *src.shape))
        i += k
    for i in range(len(images), bv):
        merge[i * p : (i + 1) * p] = i * p
        used[i] = p
    self._vision.send({"merge_index": bv * p, "v_seqused": bv})


def begin_before(self, owner=None) -> None:
    """GraphRuntime.begin before this pass: the fill launched at once (before the vision)."""
    self.pipe.finished.fill_(True)
    self.readback.invalidate()
    self.owner = owner


def no_read_back(self, rows: int) -> None:
    """Before this pass nothing was copied behind a replay: done checks read the device."""


def rescale_before(self, image, device):
    """graphrt/processor.py's rescale_on_device before this pass: one image, a blocking upload
    (torch synchronizes the stream after a pageable copy), its own launches."""
    capped = self.capped_size(*image.size)
    target = self.rounded_size(*capped)
    self._check_grid(*target)
    with graphrt.processor.pil_rgbx(image) as rgbx:
        if rgbx is not None:
            rgb = rgbx.to(device)[..., :3].contiguous()
        else:
            rgb = graphrt.processor.host_pixels(image).to(device)
    if capped != image.size:
        rgb = graphrt.processor.resize_bicubic(rgb, capped)
    return graphrt.processor.resize_bicubic(rgb, target) if target != capped else rgb




def before_patches(timed=lambda fn, name: fn) -> dict:
    """(class, attribute) -> what it was before this pass; `timed(fn, span name)` wraps the ones
    host_gaps times."""
    return {
        (capture.state.RowState, "fill_seeds"): classmethod(timed(fill_seeds_before, "fill_seeds")),
        (capture.runtime.GraphRuntime, "collect"): collect_before,
        (graphrt.processor.ImageProcessor, "rescale_many_on_device"):
            lambda proc, ims, d: [rescale_before(proc, im, d) for im in ims],
        (capture.inputs.StageInputs, "fill_vision"): timed(fill_vision_before, "fill_vision"),
        (capture.runtime.GraphRuntime, "begin"): begin_before,
        (capture.readback.ReadBack, "enqueue"): no_read_back,
    }


@contextlib.contextmanager
def host_before():
    """The host side as before this pass for the calls inside (latency.py's `host=before`; the
    engine also needs batch_intake=False)."""
    patches = before_patches()
    saved = {key: key[0].__dict__[key[1]] for key in patches}
    try:
        for (owner, attr), fn in patches.items():
            setattr(owner, attr, fn)
        yield
    finally:
        for (owner, attr), raw in saved.items():
            setattr(owner, attr, raw)


class Variant:
    """One configuration of the host side, applied by patching the engine's classes in place."""

    def __init__(self, engine, spans: Spans, before: bool, pinned: bool = False):
        self.engine, self.before = engine, before
        self.staging = engine.processor.staging if pinned else None  # the engine's ring (pinned_intake)
        patches = before_patches(spans.timed)
        now = {key: key[0].__dict__[key[1]] for key in patches}  # as instrument() wrapped them
        self.patches = patches if before else now

    def apply(self) -> None:
        self.engine.options = dataclasses.replace(self.engine.options, batch_intake=not self.before,
                                                  pinned_intake=self.staging is not None)
        self.engine.processor.staging = self.staging
        for (owner, attr), fn in self.patches.items():
            setattr(owner, attr, fn)


def images(n: int, width: int, height: int, seed: int) -> list[Image.Image]:
    rs = np.random.RandomState(seed)
    return [Image.fromarray((rs.rand(height, width, 3) * 255).astype(np.uint8)) for _ in range(n)]


def pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 3)


SUMMARY = ("call_ms", "stages_ms", "exposed_ms", "host_outside_gpu_ms", "intake_wall_ms", "engine_preprocess_ms",
           "engine_vision_ms", "engine_prefill_ms", "engine_decode_ms")


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
    ap.add_argument("--variants", nargs="+", default=["after", "pinned"], choices=["before", "after", "pinned"])
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    opts = dict(progress=False, fixed_steps=2, graphs=args.graphs)
    if args.graphs == "on":  # only the buckets this run uses: a short capture
        opts["buckets"] = Buckets(batch_sizes=tuple(sorted(set(args.batch))), patch_budgets=(1680,),
                                  prefill_lengths=(64, 480, 576, 1280))
    if not cuda:
        opts.update(device="cpu", dtype="float32")
    t = time.perf_counter()
    engine = Engine.from_pretrained(args.checkpoint, **opts)
    load_s = time.perf_counter() - t
    spans = Spans()
    instrument(spans)
    every = {"before": Variant(engine, spans, True), "after": Variant(engine, spans, False),
             "pinned": Variant(engine, spans, False, pinned=True)}
    variants = {name: every[name] for name in args.variants}
    report = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "load_s": round(load_s, 1),
              "work": f"locate_batch of B distinct {args.width}x{args.height} PIL images, one query each "
                      f"({len(QUERIES)} distinct, cycled), 2 MTP steps per row, graphs {opts['graphs']}",
              "results": {}}
    for batch in args.batch:
        pairs = list(zip(images(batch, args.width, args.height, seed=batch), (QUERIES * batch)[:batch]))
        samples = {v: [] for v in variants}
        tokens = {}
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
                tokens[name] = [r.tokens for r in results]
                if i >= args.warmup:
                    samples[name].append(summarize_call(spans.records, results))
        out = {"same_tokens": len({json.dumps(t) for t in tokens.values()}) == 1}
        for name, rows in samples.items():
            keys = sorted({k for r in rows for k in r})
            out[name] = {k: {"p50": pct([r.get(k, 0.0) for r in rows], 50), "p90": pct([r.get(k, 0.0) for r in rows], 90),
                             "p99": pct([r.get(k, 0.0) for r in rows], 99)} for k in keys}
        report["results"][f"B={batch}"] = out
        print(f"B={batch} same tokens across variants: {out['same_tokens']}")
        for name in variants:
            o = out[name]
            print(f"  {name}: " + ", ".join(f"{k[:-3]}={o[k]['p50']}/{o[k]['p90']}" for k in SUMMARY if k in o)
                  + "  (P50/P90 ms)")
            spans_ms = sorted((k[:-6] for k in o if k.endswith("_at_ms")), key=lambda n: o[n + "_at_ms"]["p50"])
            print("    timeline (start..end ms after the call's start: summed ms): " + "; ".join(
                f"{n} {o[n + '_at_ms']['p50']:.2f}..{o[n + '_end_ms']['p50']:.2f}: {o[n + '_ms']['p50']:.3f}"
                for n in spans_ms))
    every["pinned"].apply()
    spans.restore()
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

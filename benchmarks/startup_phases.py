"""Engine.from_pretrained's start-up split into its phases, each timed (device probe for issue 12's
<= 30 s warm start-up): model allocation, weight load, tokenizer (its import included), the graph
runtime's construction (pipeline, kernel self-checks) and the capture."""

from __future__ import annotations

import argparse
import json
import time

import torch

import capture.runtime as runtime_mod
import graphrt.engine as engine_mod
import graphrt.prompt as prompt_mod
import weights.loader as loader_mod

PHASES: dict[str, float] = {}


def timed(name, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            torch.cuda.synchronize()
            PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - t
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    engine_mod.load_weights = timed("weights", loader_mod.load_weights)
    engine_mod.load_tokenizer = timed("tokenizer", prompt_mod.load_tokenizer)
    engine_mod.LocateAnything = timed("model_alloc", engine_mod.LocateAnything)
    init = runtime_mod.GraphRuntime.__init__
    runtime_mod.GraphRuntime.__init__ = timed("runtime_init", init)
    runtime_mod.GraphRuntime.warmup = timed("capture", runtime_mod.GraphRuntime.warmup)
    import graphrt.kernels.step_topk as topk_mod  # imported lazily by capture.pipeline
    topk_mod.StepTopK = timed("topk_self_check", topk_mod.StepTopK)
    t0 = time.perf_counter()
    engine = engine_mod.Engine.from_pretrained(args.checkpoint, graphs="on", kernels="fused", progress=False)
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    # the top-k check runs inside runtime_init, and the tokenizer may load on a thread beside the rest
    PHASES["other"] = total - sum(v for k, v in PHASES.items() if k not in ("topk_self_check", "tokenizer"))
    print(json.dumps({"label": args.label, "ready_s": round(total, 2), "graphs": engine.status()["graphs"],
                      **{k: round(v, 2) for k, v in PHASES.items()}}), flush=True)


if __name__ == "__main__":
    main()

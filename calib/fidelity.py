"""Where FP8 error grows: several variants of one LM against its bf16 base, in one pass.

For each variant (an FP8 copy of the model in some mode, or the bf16 model with noise injected at
one layer: a probe of how the network itself carries a perturbation along depth):
- prefill, per layer: cosine of the residual stream (the layer's output) against bf16 over all
  prompt tokens, so the error's growth along depth is visible;
- teacher-forced MTP steps (calib/report.py's rule: each variant gets the bf16 decoder's tokens):
  window-logit top-1 agreement, cosine and KL against bf16;
- free-running answers: rows whose tokens equal bf16's.
And for the bf16 base itself: the residual stream's RMS and each layer's update RMS along depth
(how the checkpoint's weight scales make the stream evolve).

Random weights: numerical fidelity only (see calib/report.py).
"""

from __future__ import annotations

import torch

from graphrt.attention import sdpa
from graphrt.generate import EagerBatch, EagerDecoder, GenerationConfig
from graphrt.request import Batch

from .apply import shared_copy
from .report import _answers, _cos, _force, _LogitTap, _StepStats


class _DepthTap:
    """Forward hooks on every decoder layer recording its output (the residual stream) when on."""

    def __init__(self, llm):
        self.out: list[torch.Tensor] = []
        self.on = False
        self.handles = [layer.register_forward_hook(self._hook) for layer in llm.layers]

    def _hook(self, _m, _args, out):
        if self.on:
            self.out.append(out.detach().clone())

    def take(self) -> list[torch.Tensor]:
        out, self.out = self.out, []
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def noise_probe(model, layer: int, rel_sigma: float, seed: int = 0):
    """A copy of `model` (sharing every tensor) whose layer `layer` input gets elementwise relative
    Gaussian noise x * (1 + rel_sigma * N(0, 1)) at every call: rel_sigma ~0.026 is one e4m3
    rounding of every element, 2**-9 about one bf16 rounding."""
    probe = shared_copy(model)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)

    def pre(_m, args):
        x = args[0]
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32)
        return (((x.float() * (1 + rel_sigma * noise)).to(x.dtype)),) + tuple(args[1:])

    probe.llm.layers[layer].register_forward_pre_hook(pre)
    return probe


@torch.no_grad()
def fidelity(engine, variants: dict, pairs: list[tuple], steps: int = 2, answer_steps: int = 2,
             batch: int = 8) -> dict:
    """engine: the bf16 engine; variants: name -> model (same checkpoint, LM-only changes: the
    image embeddings are bf16's for all). Returns per-variant depth cosines, step stats, answers."""
    base = engine.model
    merge = base.cfg.vision.merge_kernel_size
    gen = GenerationConfig(fixed_steps=steps, max_new_tokens=256)
    gen_answer = GenerationConfig(fixed_steps=answer_steps, max_new_tokens=256)
    names = list(variants)
    depth_taps = {n: _DepthTap(m.llm) for n, m in [("bf16", base)] + list(variants.items())}
    logit_taps = {n: _LogitTap(m.llm) for n, m in [("bf16", base)] + list(variants.items())}
    depth = {n: [] for n in names}  # per batch: [layers] cosines
    stream_rms, update_rms = [], []
    stats = {n: [_StepStats() for _ in range(steps)] for n in names}
    answers = {n: {"rows": 0, "equal": 0, "tokens": 0, "same": 0} for n in names}
    try:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            images = [engine.processor(im) for im, _ in chunk]
            prompts = [engine.prompts.build(q, im.num_tokens(merge)) for im, (_, q) in zip(images, chunk)]
            emb = engine.encode_images(images)
            reqs = EagerBatch.of(Batch.of_prompts(images, prompts), emb)
            depth_taps["bf16"].on = True
            dec_b = EagerDecoder(base, sdpa.lm_attention, reqs, gen)
            depth_taps["bf16"].on = False
            ref = depth_taps["bf16"].take()
            prev = None
            for x in ref:
                stream_rms.append(float(x.float().pow(2).mean().sqrt()))
                update_rms.append(float((x.float() - (prev if prev is not None else 0)).pow(2).mean().sqrt())
                                  if prev is not None else float("nan"))
                prev = x.float()
            decs = {}
            for n in names:
                depth_taps[n].on = True
                decs[n] = EagerDecoder(variants[n], sdpa.lm_attention, reqs, gen)
                depth_taps[n].on = False
                depth[n].append([float(_cos(a, b)) for a, b in zip(ref, depth_taps[n].take())])
            del ref, prev
            for k in range(steps):
                for n in names:
                    _force(decs[n], dec_b)
                dec_b.step()
                lb = logit_taps["bf16"].pop()
                for n in names:
                    decs[n].step()
                    stats[n][k].add(lb, logit_taps[n].pop())
            del decs, dec_b
            if answer_steps:
                rb = _answers(base, reqs, gen_answer)
                for n in names:
                    rv = _answers(variants[n], reqs, gen_answer)
                    a = answers[n]
                    for x, y in zip(rb, rv):
                        a["rows"] += 1
                        a["equal"] += x.tokens == y.tokens
                        a["tokens"] += max(len(x.tokens), len(y.tokens))
                        a["same"] += sum(i == j for i, j in zip(x.tokens, y.tokens))
    finally:
        for t in list(depth_taps.values()) + list(logit_taps.values()):
            t.close()
    n_layers = len(base.llm.layers)

    def per_layer(vals):
        return [sum(v[i] for v in vals) / len(vals) for i in range(n_layers)]

    batches = max(1, len(stream_rms) // n_layers)
    return {
        "pairs": len(pairs), "steps": steps, "answer_steps": answer_steps,
        "bf16_stream_rms": [sum(stream_rms[b * n_layers + i] for b in range(batches)) / batches
                            for i in range(n_layers)],
        "bf16_update_rms": [sum(update_rms[b * n_layers + i] for b in range(batches)) / batches
                            for i in range(n_layers)],
        "variants": {n: {"depth_cos": per_layer(depth[n]),
                         "steps": [s.summary() for s in stats[n]],
                         "answers": answers[n]} for n in names},
    }


def markdown(r: dict, step_ms: dict | None = None) -> str:
    nl = len(r["bf16_stream_rms"])
    marks = sorted(i for i in {0, 1, 3, 7, nl // 2, 3 * nl // 4, nl - 1} if i < nl)
    lines = [f"{r['pairs']} held-out pairs, {r['steps']} teacher-forced steps, answers of {r['answer_steps']} steps.",
             "", "| variant | " + " | ".join(f"cos L{i}" for i in marks) + " | step | top-1 | logit cos | KL | "
             "answers equal |", "| --- " * (len(marks) + 6) + "|"]
    for n, v in r["variants"].items():
        for k, s in enumerate(v["steps"]):
            cols = [f"{v['depth_cos'][i]:.5f}" if k == 0 else "" for i in marks]
            a = v["answers"]
            lines.append(f"| {n if k == 0 else ''} | " + " | ".join(cols) + f" | {k + 1} | {s['top1_agreement']:.3f} | "
                         f"{s['logit_cos_mean']:.5f} | {s['kl_mean']:.3f} | "
                         + (f"{a['equal']}/{a['rows']}" if k == 0 else "") + " |")
    lines += ["", "bf16 residual stream RMS / layer update RMS along depth: "
              + ", ".join(f"L{i} {r['bf16_stream_rms'][i]:.3g}/{r['bf16_update_rms'][i]:.3g}" for i in marks), ""]
    return "\n".join(lines)

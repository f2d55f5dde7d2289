"""Accuracy of an FP8 model against its bf16 base on held-out (image, query) pairs.

Per stage:
- vision: cosine of the projector output (image embeddings) per image;
- prefill: cosine of the K and V caches over the prompt slots per row;
- step k (teacher-forced: before every step the FP8 decoder is given the bf16 decoder's accepted
  tokens, so both see the same context and only the arithmetic differs): window-logit top-1
  agreement, KL(bf16 || FP8) and logit cosine over the 6 window positions of every row;
- per linear: cosine of the FP8 linear's output against the bf16 linear's on the same input
  (the bf16 run's own inputs), i.e. each layer's own quantization error;
- whole answers (free-running, each model on its own tokens): exact matches, token agreement,
  and box IoU of the parsed detections.

What random weights can and cannot show: they measure numerical fidelity (how far FP8 arithmetic
moves activations and logits on these weight and activation statistics). They cannot show task
accuracy (their boxes are random tokens, so IoU is only a consistency figure), and trained
checkpoints have outlier activation channels that random ones lack, which is what makes static
per-tensor activation scales hard: a real checkpoint must be measured again.
"""

from __future__ import annotations

import collections
import copy
import math
import statistics

import torch
import torch.nn.functional as F

from graphrt.attention import sdpa
from graphrt.boxes import parse_detections
from graphrt.decode import GenerationConfig
from graphrt.generate import EagerBatch, EagerDecoder
from graphrt.request import Batch

from .apply import linear_modules
from .fp8_linear import FP8Linear

RANDOM_WEIGHTS_NOTE = (
    "Random weights: these figures measure numerical fidelity of FP8 against bf16 on random weight "
    "and activation statistics. They cannot show task accuracy (boxes of random weights are random "
    "tokens; IoU here is a consistency figure only), and random checkpoints lack the outlier "
    "activation channels of trained ones that make static scales hard: measure a real checkpoint again.")


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # float64: a float32 cosine over millions of elements is off in the 5th digit
    return F.cosine_similarity(a.double().reshape(1, -1), b.double().reshape(1, -1)).squeeze(0)


class _LogitTap:
    """Records every logits tensor the LM returns (instance attribute over Qwen2.logits)."""

    def __init__(self, llm):
        self.llm, self.out = llm, []
        orig = llm.logits

        def logits(hidden):
            y = orig(hidden)
            self.out.append(y)
            return y

        llm.logits = logits

    def pop(self) -> torch.Tensor:
        y = self.out.pop()
        self.out.clear()
        return y

    def close(self):
        del self.llm.logits


class _LayerTap:
    """Forward hooks on the bf16 model's linears that run the FP8 twin on the same input."""

    def __init__(self, bf16_model, fp8_model):
        twins = {n: m for n, m in fp8_model.named_modules() if isinstance(m, FP8Linear)}
        self.cos = collections.defaultdict(list)
        self.handles = []
        self.enabled = True
        for name, mod in linear_modules(bf16_model).items():
            if name in twins:
                self.handles.append(mod.register_forward_hook(self._hook(name, twins[name])))

    def _hook(self, name, twin):
        def hook(_m, args, out):
            if self.enabled:
                self.cos[name].append(_cos(out, twin(args[0])))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()

    def summary(self) -> dict:
        out = {}
        for name, vals in self.cos.items():
            v = torch.stack(vals).tolist()
            out[name] = {"mean": statistics.fmean(v), "min": min(v), "calls": len(v)}
        return out


def _force(dst: EagerDecoder, src: EagerDecoder) -> None:
    """Give the FP8 decoder the bf16 decoder's accepted tokens and bookkeeping (not its cache)."""
    dst.pending = [list(p) for p in src.pending]
    dst.cached = list(src.cached)
    dst.active = list(src.active)
    dst.ar_mode = list(src.ar_mode)
    dst.results = copy.deepcopy(src.results)
    dst.seen.copy_(src.seen)
    dst.steps_done = src.steps_done


class _StepStats:
    def __init__(self):
        self.agree = self.total = 0
        self.kl, self.cos = [], []

    def add(self, lb: torch.Tensor, lf: torch.Tensor) -> None:
        lb, lf = lb.float(), lf.float()
        self.agree += int((lb.argmax(-1) == lf.argmax(-1)).sum())
        self.total += lb.shape[0]
        logp_b, logp_f = lb.log_softmax(-1), lf.log_softmax(-1)
        self.kl += (logp_b.exp() * (logp_b - logp_f)).sum(-1).tolist()
        self.cos += F.cosine_similarity(lb.double(), lf.double(), dim=-1).tolist()

    def summary(self) -> dict:
        return {"window_positions": self.total, "top1_agreement": self.agree / max(self.total, 1),
                "kl_mean": statistics.fmean(self.kl), "kl_max": max(self.kl),
                "logit_cos_mean": statistics.fmean(self.cos), "logit_cos_min": min(self.cos)}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


@torch.no_grad()
def accuracy_report(bf16_engine, fp8_engine, pairs: list[tuple], steps: int = 2, answer_steps: int | None = 4,
                    batch: int = 8, max_new_tokens: int = 256) -> dict:
    """Compare fp8_engine.model with bf16_engine.model (same checkpoint) on `pairs`.
    answer_steps: MTP steps of the free-running answers (None: until the model ends, up to
    max_new_tokens; use None only with a real checkpoint, random weights rarely end)."""
    mb, mf = bf16_engine.model, fp8_engine.model
    if getattr(mf, "fp8_info", None) is None:
        raise ValueError("fp8_engine has no FP8 linears")
    cfg = mb.cfg
    merge = cfg.vision.merge_kernel_size
    layer_tap = _LayerTap(mb, mf)
    taps = _LogitTap(mb.llm), _LogitTap(mf.llm)
    vision_cos, k_cos, v_cos = [], [], []
    stages = [_StepStats() for _ in range(steps)]
    answers = {"pairs": 0, "exact": 0, "tokens": 0, "same_tokens": 0, "ious": [], "boxes_bf16": 0, "boxes_fp8": 0,
               "first_divergence_token": []}
    gen = GenerationConfig(fixed_steps=steps, max_new_tokens=max_new_tokens)
    gen_answer = GenerationConfig(fixed_steps=answer_steps, max_new_tokens=max_new_tokens)
    try:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            images = [bf16_engine.processor(im) for im, _ in chunk]
            prompts = [bf16_engine.prompts.build(q, im.num_tokens(merge)) for im, (_, q) in zip(images, chunk)]
            layer_tap.enabled = True
            emb_b = bf16_engine.encode_images(images)
            layer_tap.enabled = False
            emb_f = fp8_engine.encode_images(images)
            vision_cos += [float(_cos(a, b)) for a, b in zip(emb_b, emb_f)]
            reqs_b = EagerBatch.of(Batch.of_prompts(images, prompts), emb_b)
            reqs_f = EagerBatch.of(Batch.of_prompts(images, prompts), emb_f)
            layer_tap.enabled = True
            dec_b = EagerDecoder(mb, sdpa.lm_attention, reqs_b, gen)
            layer_tap.enabled = False
            dec_f = EagerDecoder(mf, sdpa.lm_attention, reqs_f, gen)
            for row, p in enumerate(prompts):
                n = len(p.ids) - 1
                k_cos.append(float(_cos(dec_b.cache.k[:, row, :n], dec_f.cache.k[:, row, :n])))
                v_cos.append(float(_cos(dec_b.cache.v[:, row, :n], dec_f.cache.v[:, row, :n])))
            for k in range(steps):
                _force(dec_f, dec_b)
                layer_tap.enabled = True
                dec_b.step()
                layer_tap.enabled = False
                dec_f.step()
                stages[k].add(taps[0].pop(), taps[1].pop())
            # Whole answers, each model on its own tokens.
            res_b = _answers(mb, reqs_b, gen_answer)
            res_f = _answers(mf, reqs_f, gen_answer)
            for im, rb, rf in zip(images, res_b, res_f):
                answers["pairs"] += 1
                answers["exact"] += rb.tokens == rf.tokens
                n = max(len(rb.tokens), len(rf.tokens))
                same = sum(a == b for a, b in zip(rb.tokens, rf.tokens))
                answers["tokens"] += n
                answers["same_tokens"] += same
                div = next((i for i, (a, b) in enumerate(zip(rb.tokens, rf.tokens)) if a != b),
                           None if len(rb.tokens) == len(rf.tokens) else min(len(rb.tokens), len(rf.tokens)))
                answers["first_divergence_token"].append(div)
                db = parse_detections(rb.tokens, cfg.tokens, bf16_engine.prompts.decode, im.size).detections
                df = parse_detections(rf.tokens, cfg.tokens, bf16_engine.prompts.decode, im.size).detections
                answers["boxes_bf16"] += len(db)
                answers["boxes_fp8"] += len(df)
                answers["ious"] += [_iou(a.box_norm, b.box_norm) for a, b in zip(db, df)
                                    if a.kind == b.kind == "box"]
    finally:
        layer_tap.close()
        for t in taps:
            t.close()
    layers = layer_tap.summary()
    ious = answers.pop("ious")
    divs = answers.pop("first_divergence_token")
    answers.update({
        "exact_fraction": answers["exact"] / max(answers["pairs"], 1),
        "token_agreement": answers["same_tokens"] / max(answers["tokens"], 1),
        "answers_diverged": sum(d is not None for d in divs),
        "median_first_divergence_token": statistics.median([d for d in divs if d is not None]) if any(
            d is not None for d in divs) else None,
        "box_pairs": len(ious), "box_iou_mean": statistics.fmean(ious) if ious else None,
        "answer_steps": answer_steps,
    })
    worst = sorted(layers.items(), key=lambda kv: kv[1]["mean"])[:8]
    by_kind = collections.defaultdict(list)
    for name, s in layers.items():
        by_kind[name.split(".")[0] + "." + name.split(".")[-1]].append(s["mean"])
    return {
        "pairs": len(pairs), "steps": steps, "fp8": mf.fp8_info.summary(),
        "stages": {
            "vision": {"embed_cos_mean": statistics.fmean(vision_cos), "embed_cos_min": min(vision_cos)},
            "prefill": {"k_cos_mean": statistics.fmean(k_cos), "k_cos_min": min(k_cos),
                        "v_cos_mean": statistics.fmean(v_cos), "v_cos_min": min(v_cos)},
            **{f"step{k + 1}": s.summary() for k, s in enumerate(stages)},
        },
        "answers": answers,
        "layers_by_kind": {k: {"mean_cos": statistics.fmean(v), "min_of_means": min(v), "layers": len(v)}
                           for k, v in sorted(by_kind.items())},
        "worst_layers": [{"name": n, **s} for n, s in worst],
        "layers": layers,
        "note": RANDOM_WEIGHTS_NOTE,
    }


def _answers(model, batch: EagerBatch, gen):
    dec = EagerDecoder(model, sdpa.lm_attention, batch, gen)
    while not dec.done:
        dec.step()
    return dec.results


def markdown(report: dict, title: str = "FP8 vs bf16 accuracy") -> str:
    f = lambda x: "n/a" if x is None else (f"{x:.6f}" if isinstance(x, float) and not math.isnan(x) else str(x))  # noqa: E731
    st = report["stages"]
    lines = [f"# {title}", "", f"{report['pairs']} held-out pairs, {report['steps']} teacher-forced MTP steps; "
             f"FP8: {report['fp8']}", "",
             "| stage | metric | value |", "| --- | --- | --- |",
             f"| vision | image-embedding cosine mean / min | {f(st['vision']['embed_cos_mean'])} / "
             f"{f(st['vision']['embed_cos_min'])} |",
             f"| prefill | K cache cosine mean / min | {f(st['prefill']['k_cos_mean'])} / {f(st['prefill']['k_cos_min'])} |",
             f"| prefill | V cache cosine mean / min | {f(st['prefill']['v_cos_mean'])} / {f(st['prefill']['v_cos_min'])} |"]
    for k in range(report["steps"]):
        s = st[f"step{k + 1}"]
        lines += [f"| step {k + 1} | window-logit top-1 agreement ({s['window_positions']} positions) | "
                  f"{f(s['top1_agreement'])} |",
                  f"| step {k + 1} | window-logit cosine mean / min | {f(s['logit_cos_mean'])} / {f(s['logit_cos_min'])} |",
                  f"| step {k + 1} | KL(bf16 \\|\\| fp8) mean / max | {f(s['kl_mean'])} / {f(s['kl_max'])} |"]
    a = report["answers"]
    lines += [f"| answers | exact / token agreement ({a['pairs']} answers, {a['answer_steps']} steps) | "
              f"{f(a['exact_fraction'])} / {f(a['token_agreement'])} |",
              f"| answers | box IoU mean ({a['box_pairs']} box pairs) | {f(a['box_iou_mean'])} |", "",
              "| linears | mean output cosine | lowest layer mean | layers |", "| --- | --- | --- | --- |"]
    for kind, s in report["layers_by_kind"].items():
        lines.append(f"| {kind} | {f(s['mean_cos'])} | {f(s['min_of_means'])} | {s['layers']} |")
    lines += ["", "Worst linears: " + ", ".join(f"{w['name']} {w['mean']:.5f}" for w in report["worst_layers"]),
              "", report["note"], ""]
    return "\n".join(lines)

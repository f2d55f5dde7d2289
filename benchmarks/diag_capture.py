"""Diagnostic: where do a graph replay and the same bodies run uncaptured first differ?"""
import sys
import torch
from capture import Buckets, GraphRuntime
from graphrt import Engine, EngineOptions, GenerationConfig
from weights.synth import write_preset
sys.path.insert(0, "tests")
from test_static_path import CASES, prepare  # noqa: E402

for flag in sys.argv[1:]:
    if flag == "noreduced":
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    if flag == "cublas":
        torch.backends.cuda.preferred_blas_library("cublas")
ck = write_preset("mid", "/tmp/mid", device="cuda", progress=False)
eng = Engine.from_pretrained(ck, EngineOptions(device="cuda", dtype="bfloat16", graphs="off", progress=False))
gen = GenerationConfig(max_new_tokens=24)
bk = Buckets(batch_sizes=(1, 2, 4, 8), patch_budgets=(128, 256), prefill_lengths=(192, 320), max_new_tokens=40)
pairs = [(img.resize((min(img.width, 160), min(img.height, 160))), q) for img, q in CASES["identical rows"]]
images, rows = prepare(eng, pairs)
g = GraphRuntime(eng.model, bk, gen, attention="torch-fa2", strict=True); g.warmup(progress=False)
u = GraphRuntime(eng.model, bk, gen, attention="torch-fa2", strict=True, use_graphs=False)
b, p, t = 2, 128, 192
for rt in (g, u):
    rt._fill_vision(images, 2, p); rt._run(("vision", 2, p))
d = lambda a, c: (a.float() - c.float()).abs().max().item()
print("vision_out diff", d(g.pipe.vision_out[: p // 2], u.pipe.vision_out[: p // 2]))
for rt in (g, u):
    rt._fill_prefill(rows, b, t, p, [24, 24], gen); rt._run(("prefill", b, t))
L = len(rows[0].prompt.ids) - 1
print("kv after prefill diff", d(g.pipe.cache.k[:, :b, :L], u.pipe.cache.k[:, :b, :L]))
for i in range(4):
    for rt in (g, u):
        rt._run(("step", b))
    print("step", i, "pending", g.pipe.pending[:b].tolist(), u.pipe.pending[:b].tolist(),
          "kv diff", d(g.pipe.cache.k[:, :b, :L + 6 * i], u.pipe.cache.k[:, :b, :L + 6 * i]))

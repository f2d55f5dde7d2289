"""The step's top-k lists and greedy argmax with torch CUDA's exact output, tie order included,
in two Triton kernels instead of torch's ~20 (two mbtopk radix selects, their sorts, an argmax).

`graphrt.mtp.candidates` takes torch.topk(probs[:, 1:5], 4) and torch.topk(probs[:, 1:], 5); the
step tail reads each list in order, so with ties (bf16 probs have 8 mantissa bits) the ORDER
decides tokens. torch does not document it; this is the rule read from torch's source
(aten/src/ATen/native/cuda/TensorTopK.cu, Sort.cu, SortUtils.cuh; docs/notes.md names the commit):

1. selection (sbtopk and mbtopk alike): the k-th largest value `kth` under torch's radix order
   (TopKTypeConfig::convert: bits ^ (sign ? 0xffff : 0x8000), NaN highest); gatherTopK writes
   every element > kth in index order, then the first (k - that many) elements == kth in index
   order. As a set: the first k under (value desc, index asc).
2. order: sortKeyValueInplace (k <= 32, unstable) runs SmallBitonicSort: a 32-slot bitonic
   network (16 threads x 2 items) on that gathered list, slots >= k invalid (sorting last),
   comparator GTOp (a > b, NaN first), swap when (comp(a, b) && valid a || !valid b) == dir.
   The network only compares, so the output permutation depends on nothing but the weak order of
   the k values in list positions: `network_table` runs the network once per weak order (541 for
   k=5) and the kernel looks its permutation up.
3. argmax (x0 of greedy rows): torch's first maximal index = the head of the same order.

Kernels: `_chunk_top` (grid rows x V/CHUNK) keeps each chunk's first 5 under (value desc, index
asc) as int64 keys (radix bits << 32 | 2**31 - 1 - index); `_merge` (grid rows) takes a row's first 5 of
the chunk keys (exact: a total order), writes the argmax, and rebuilds torch's gathered list and
network order for k=4 (slots 1-4) and k=5 (slots 1-5).

An emulation of one torch build, so checked, not trusted: `StepTopK` compares with torch on the
device for every captured batch size on tie-heavy rows when the pipeline is built, and uses
torch's kernels (one warning, the reason in `graphrt status`) on any difference.
GRAPHRT_STEP_TOPK=torch keeps torch's (A/B).
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
import triton
import triton.language as tl

from graphrt.kernels import env_choice
from graphrt.kernels.pdl_ops import pdl_enter
from graphrt.kernels.step_softmax import end_launch
from graphrt.mtp import MTPConfig, candidates

log = logging.getLogger("graphrt")

CHUNK = 4096  # values per CTA of the chunk pass (a power of 2)
GROUP = 64  # values per group of the chunk pass's first level
KEEP = 5  # candidates per chunk: the longest list (ref_keep_k)
SORT_SIZE = 32  # SmallBitonicSort's slots
_INVALID = -1


# ---- the rule on the host (the kernel's table, and the tests' reference)

def _gt(a: float, b: float) -> bool:
    """GTOp<K, true>: NaN before numbers, then a > b."""
    return (math.isnan(a) and not math.isnan(b)) or a > b


def bitonic_network(keys: list[float], vals: list[int]) -> tuple[list[float], list[int]]:
    """SmallBitonicSort, descending, on len(keys) <= 32 valid slots (the rest invalid): the
    network as torch's 16 threads run it, emulated in order (each stride's pairs are disjoint)."""
    n = len(keys)
    k = list(keys) + [0.0] * (SORT_SIZE - n)
    v = list(vals) + [0] * (SORT_SIZE - n)
    ok = [True] * n + [False] * (SORT_SIZE - n)

    def swap_step(size_flag, stride):
        for tx in range(SORT_SIZE // 2):
            flag = size_flag(tx)
            a = 2 * tx - (tx & (stride - 1))
            b = a + stride
            swap = (_gt(k[a], k[b]) and ok[a]) or not ok[b]
            if swap == flag:
                k[a], k[b], v[a], v[b], ok[a], ok[b] = k[b], k[a], v[b], v[a], ok[b], ok[a]

    size = 2
    while size < SORT_SIZE:
        stride = size // 2
        while stride > 0:
            swap_step(lambda tx, s=size: (tx & (s // 2)) != 0, stride)
            stride //= 2
        size *= 2
    stride = SORT_SIZE // 2
    while stride > 0:
        swap_step(lambda tx: False, stride)
        stride //= 2
    return k[:n], v[:n]


def radix_key(values: torch.Tensor) -> torch.Tensor:
    """torch's TopKTypeConfig::convert of 16-bit floats, as int64 (NaN -> 0xffff)."""
    bits = values.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    key = torch.where(bits >= 0x8000, bits ^ 0xFFFF, bits ^ 0x8000)
    return torch.where(torch.isnan(values), torch.full_like(key, 0xFFFF), key)


def reference_topk(row: torch.Tensor, k: int) -> list[int]:
    """The rule on one 1-D row of 16-bit floats, in Python: torch.topk(row, k).indices (CUDA)."""
    key = radix_key(row).tolist()
    values = row.float().tolist()
    order = sorted(range(len(key)), key=lambda i: (-key[i], i))[:k]
    kth = key[order[-1]]
    gathered = sorted(i for i in order if key[i] > kth) + sorted(i for i in order if key[i] == kth)
    return bitonic_network([values[i] for i in gathered], gathered)[1]


def network_table(k: int) -> torch.Tensor:
    """[k**k] int32: for the weak order of a gathered list (position p's rank r_p = how many of the
    k values are strictly larger; code sum r_p * k**p), the network's output as source positions,
    3 bits each (output q comes from list position (t >> 3q) & 7); -1 where no weak order has
    that code."""
    table = [_INVALID] * k ** k
    for ranks in itertools.product(range(k), repeat=k):
        if any(r != sum(s < r for s in ranks) for r in ranks):
            continue
        _, src = bitonic_network([-float(r) for r in ranks], list(range(k)))
        table[sum(r * k ** p for p, r in enumerate(ranks))] = sum(s << (3 * q) for q, s in enumerate(src))
    return torch.tensor(table, dtype=torch.int32)


# ---- kernels

@triton.jit
def _radix(bits, NAN_ABOVE: tl.constexpr):
    """torch's radix order of 16-bit float bits (TopKTypeConfig::convert), as int32 in [0, 0xffff]."""
    b = bits.to(tl.int32) & 0xFFFF
    radix = tl.where(b >= 0x8000, b ^ 0xFFFF, b ^ 0x8000)
    return tl.where((b & 0x7FFF) > NAN_ABOVE, 0xFFFF, radix)  # NaN (exponent all ones, mantissa != 0)


@triton.jit
def _chunk_top(x_ptr, part_ptr, V, NCH, CHUNK: tl.constexpr, LOCAL_BITS: tl.constexpr, GROUP: tl.constexpr,
               KEEP: tl.constexpr, NAN_ABOVE: tl.constexpr, PDL: tl.constexpr):
    """The first KEEP of elements [c*CHUNK, (c+1)*CHUNK) of a row under (value desc, index asc), as
    int64 keys radix << 32 | (2**31 - 1 - index), largest first (-1: none).

    Two levels, so that each value is reduced once: the maxima of the chunk's groups of GROUP
    values; the first KEEP lie in the KEEP groups of largest maxima (any other group has KEEP
    larger values above its own maximum), which are read again and searched. Inside the chunk the
    keys are int32 (radix << LOCAL_BITS | reversed local index)."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    base = x_ptr + row.to(tl.int64) * V + c * CHUNK
    g = tl.arange(0, CHUNK // GROUP)
    j = tl.arange(0, GROUP)
    local = g[:, None] * GROUP + j[None, :]
    ok = c * CHUNK + local < V
    key = tl.where(ok, (_radix(tl.load(base + local, mask=ok, other=0), NAN_ABOVE) << LOCAL_BITS) | (CHUNK - 1 - local),
                   -1)
    gmax = tl.max(key, axis=1)  # [groups]
    s = tl.arange(0, 8)
    pick = tl.full((8,), -1, tl.int32)  # the KEEP groups of largest maxima (-1: none)
    for t in tl.static_range(KEEP):
        m = tl.max(gmax, axis=0)
        pick = tl.where((s == t) & (m >= 0), (CHUNK - 1 - (m & (CHUNK - 1))) // GROUP, pick)
        gmax = tl.where(gmax == m, -1, gmax)
    local = pick[:, None] * GROUP + j[None, :]
    ok = (pick[:, None] >= 0) & (c * CHUNK + local < V)
    key = tl.where(ok, (_radix(tl.load(base + local, mask=ok, other=0), NAN_ABOVE) << LOCAL_BITS) | (CHUNK - 1 - local),
                   -1)
    out = part_ptr + (row * NCH + c) * KEEP
    for t in tl.static_range(KEEP):
        m = tl.max(tl.max(key, axis=1), axis=0)
        gidx = c * CHUNK + (CHUNK - 1 - (m & (CHUNK - 1)))
        wide = ((m >> LOCAL_BITS).to(tl.int64) << 32) | (0x7FFFFFFF - gidx).to(tl.int64)
        tl.store(out + t, tl.where(m < 0, -1, wide))
        key = tl.where(key == m, -1, key)  # keys are unique (the local index is in them)


@triton.jit
def _network_order(key, p, k: tl.constexpr, lut_ptr):
    """torch's list for the first k of `key` ([8], positions p; largest first under (value desc,
    index asc)): [k] indices in the order gatherTopK + the bitonic network leave them."""
    valid = p < k
    val = key >> 32
    idx = 0x7FFFFFFF - (key & 0x7FFFFFFF)
    kth = tl.sum(tl.where(p == k - 1, val, 0), axis=0)
    above = valid & (val > kth)
    # gathered list position: the elements > kth in index order, then the ties at kth (already in index order)
    before = tl.sum((above[None, :] & (idx[None, :] < idx[:, None])).to(tl.int32), axis=1)
    lpos = tl.where(above, before, p)
    # weak order of the list: rank = how many values are strictly larger
    rank = tl.sum((valid[None, :] & (val[None, :] > val[:, None])).to(tl.int32), axis=1)
    weight = tl.full(p.shape, 1, tl.int32)
    for t in tl.static_range(1, k):
        weight = tl.where(lpos >= t, weight * k, weight)
    code = tl.sum(tl.where(valid, rank * weight, 0), axis=0)
    perm = tl.load(lut_ptr + code)
    src = (perm >> (3 * p)) & 7  # output q <- list position src[q]
    hit = (lpos[None, :] == src[:, None]) & valid[None, :]
    out = tl.sum(tl.where(hit, idx[None, :], 0), axis=1)
    return out, valid


@triton.jit
def _merge(part_ptr, amax_ptr, top_ptr, ref_ptr, lut4_ptr, lut5_ptr, NCH, W: tl.constexpr, KK: tl.constexpr,
           KR: tl.constexpr, KEEP: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Row (request b, slot s): argmax; slots 1-4 the KK list, slots 1-5 the KR list."""
    pdl_enter(PDL)
    row = tl.program_id(0)
    b = row // W
    s = row % W
    i = tl.arange(0, BLOCK)
    key = tl.load(part_ptr + row * NCH * KEEP + i, mask=i < NCH * KEEP, other=-1)
    p = tl.arange(0, 8)
    first = tl.full((8,), -1, tl.int64)
    for t in tl.static_range(KEEP):
        m = tl.max(key, axis=0)
        first = tl.where(p == t, m, first)
        key = tl.where(key == m, -1, key)
    head = tl.max(first, axis=0)
    tl.store(amax_ptr + row, (0x7FFFFFFF - (head & 0x7FFFFFFF)))
    if (s >= 1) & (s <= 4):
        out, ok = _network_order(first, p, KK, lut4_ptr)
        tl.store(top_ptr + (b * 4 + s - 1) * KK + p, out, mask=ok)
    if s >= 1:
        out, ok = _network_order(first, p, KR, lut5_ptr)
        tl.store(ref_ptr + (b * (W - 1) + s - 1) * KR + p, out, mask=ok)


def _nan_above(dtype: torch.dtype) -> int:
    return 0x7F80 if dtype == torch.bfloat16 else 0x7C00


class _Tables:
    def __init__(self, device, kk: int, kr: int):
        self.kk, self.kr = network_table(kk).to(device), network_table(kr).to(device)


def fused_lists(probs: torch.Tensor, tables: _Tables, cfg: MTPConfig = MTPConfig()):
    """probs [B, 6, V] (bf16/fp16, contiguous) -> (argmax [B, 6], top_i [B, 4, keep_k], ref_i
    [B, 5, ref_keep_k]), int64, torch CUDA's exact results (see the module doc)."""
    b, w, v = probs.shape
    assert w == 6 and probs.is_contiguous() and probs.dtype in (torch.bfloat16, torch.float16)
    assert cfg.keep_k == 4 and cfg.ref_keep_k == 5, "the network tables are built for k = 4 and 5"
    rows = b * w
    nch = triton.cdiv(v, CHUNK)
    part = torch.empty(rows, nch, KEEP, dtype=torch.int64, device=probs.device)
    amax = torch.empty(b, w, dtype=torch.int64, device=probs.device)
    top_i = torch.empty(b, 4, cfg.keep_k, dtype=torch.int64, device=probs.device)
    ref_i = torch.empty(b, 5, cfg.ref_keep_k, dtype=torch.int64, device=probs.device)
    nan_above = _nan_above(probs.dtype)
    launch = end_launch(probs, rows)  # PDL at B=1 (GRAPHRT_STEP_END_PDL)
    _chunk_top[(rows, nch)](probs.view(torch.int16), part, v, nch, CHUNK=CHUNK, LOCAL_BITS=CHUNK.bit_length() - 1,
                            GROUP=GROUP, KEEP=KEEP, NAN_ABOVE=nan_above, num_warps=4, **launch)
    _merge[(rows,)](part, amax, top_i, ref_i, tables.kk, tables.kr, nch, W=w, KK=cfg.keep_k, KR=cfg.ref_keep_k,
                    KEEP=KEEP, BLOCK=triton.next_power_of_2(nch * KEEP), num_warps=1, **launch)
    return amax, top_i, ref_i


def torch_lists(probs: torch.Tensor, cfg: MTPConfig = MTPConfig()):
    """The same three from torch: argmax and graphrt.mtp.candidates' lists."""
    _, top_i, ref_i = candidates(probs, cfg)
    return probs.argmax(dim=-1), top_i, ref_i


def check_probs(b: int, v: int, dtype: torch.dtype, device, seed: int = 0) -> list[torch.Tensor]:
    """Tie-heavy probs batches [b, 6, v]: every row equal; a few distinct levels; ties straddling
    the k-th place with ties above it; tied maxima on both sides of every block edge mbtopk may
    use (256 threads x 4..64 items); zeros with few non-zeros; a softmax of random logits.
    Drawn on `device` with its own generator, every row at once (the engine's start-up check runs
    this: per-row host loops cost seconds there)."""
    g = torch.Generator(device=device).manual_seed(seed)
    n = b * 6
    f = dict(device=device)
    out = [torch.full((n, v), 1.0 / v, **f)]  # all equal
    levels = torch.tensor([1e-6, 2e-6, 3e-6, 4e-6], **f)
    out.append(levels[torch.randint(0, 4, (n, v), generator=g, **f)])  # few levels: the top one has ~v/4 ties
    # 0-3 distinct values above a tie group of 12 at the k-th place, some tied among themselves
    x = torch.rand(n, v, generator=g, **f) * 1e-6
    pos = torch.rand(n, v, generator=g, **f).topk(16, dim=1).indices  # 16 distinct random places a row
    above = torch.randint(0, 4, (n, 1), generator=g, **f)
    j = torch.arange(16, **f).expand(n, 16)
    tops = torch.tensor([0.5, 0.5, 0.25, 0.125, 0.0], **f)[j.clamp(max=4)]
    vals = torch.where(j < above, tops, torch.full_like(tops, 0.0625))
    x.scatter_(1, pos, torch.where(j < above + 12, vals, x.gather(1, pos)))
    out.append(x)
    # 6 tied maxima straddling 3 of the block edges, then one larger (odd rows) or tied (even) value
    x = torch.rand(n, v, generator=g, **f) * 1e-6
    edges = torch.tensor([e * 256 * ipt for ipt in (4, 8, 16, 32, 64) for e in range(1, 4) if e * 256 * ipt < v],
                         dtype=torch.int64, **f)
    pick = edges[torch.rand(n, len(edges), generator=g, **f).argsort(dim=1)[:, :3]]
    x.scatter_(1, torch.cat([pick - 1, pick], dim=1).clamp(max=v - 1), 0.25)
    one = torch.randint(0, v, (n, 1), generator=g, **f)
    odd = (torch.arange(n, **f) % 2 == 1).unsqueeze(1)
    x.scatter_(1, one, torch.where(odd, 0.5, 0.25).to(x.dtype))
    out.append(x)
    # zeros with 1-3 places at 0.5 (places may repeat)
    x = torch.zeros(n, v, **f)
    count = torch.randint(1, 4, (n, 1), generator=g, **f)
    places = torch.randint(0, v, (n, 3), generator=g, **f)
    keep = torch.arange(3, **f).expand(n, 3) < count
    x.scatter_(1, torch.where(keep, places, places[:, :1]), 0.5)
    out.append(x)
    out.append(torch.softmax(torch.randn(n, v, generator=g, **f) * 0.5, dim=-1))
    return [t.to(dtype).view(b, 6, v) for t in out]


def self_check(device, dtype: torch.dtype, vocab: int, batch_sizes, cfg: MTPConfig = MTPConfig(),
               kernel=fused_lists, tables: _Tables | None = None) -> str:
    """'' when `kernel` gives torch's argmax and top-k lists exactly on `check_probs` at every batch
    size, else a reason naming the first difference."""
    tables = tables or _Tables(device, cfg.keep_k, cfg.ref_keep_k)
    sizes = sorted(set(batch_sizes))
    cases = check_probs(sizes[-1], vocab, dtype, device, seed=sizes[-1])  # drawn once; rows are independent
    for b in sizes:
        for case, probs in enumerate(c[:b] for c in cases):
            want = torch_lists(probs, cfg)
            got = kernel(probs, tables, cfg)
            for name, w, h in zip(("argmax", "top-k (slots 1-4)", "top-k (slots 1-5)"), want, got):
                if not torch.equal(w, h):
                    bad = (w != h).nonzero()[0].tolist()
                    return (f"self-check: {name} differs from torch at B={b}, case {case}, position {bad}: "
                            f"{h[tuple(bad)].item()} vs {w[tuple(bad)].item()}")
    return ""


def enabled() -> bool:
    return env_choice("GRAPHRT_STEP_TOPK", ("fused", "torch")) == "fused"


class StepTopK:
    """The step's argmax and top-k lists: the Triton kernels where checked equal to torch's on this
    device, dtype, vocab and every step batch size, torch's otherwise. Build before graph capture
    (the check synchronizes)."""

    def __init__(self, device, dtype: torch.dtype, vocab: int, batch_sizes, cfg: MTPConfig = MTPConfig()):
        self.vocab, self.cfg = vocab, cfg
        self.reason = ""
        if not enabled():
            self.reason = "GRAPHRT_STEP_TOPK=torch"
        elif dtype not in (torch.bfloat16, torch.float16):
            self.reason = f"{dtype} probs (the kernels take 16-bit floats)"
        elif (cfg.keep_k, cfg.ref_keep_k) != (4, 5):
            self.reason = f"top-k sizes {cfg.keep_k}/{cfg.ref_keep_k} (the kernels are built for 4/5)"
        else:
            self.tables = _Tables(device, cfg.keep_k, cfg.ref_keep_k)
            self.reason = self_check(device, dtype, vocab, batch_sizes, cfg, tables=self.tables)
        self.fused = not self.reason
        if not self.fused and enabled():
            log.warning("step top-k: torch.topk (%s)", self.reason)

    def describe(self) -> str:
        return "triton (equal to torch.topk/argmax, checked)" if self.fused else f"torch ({self.reason})"

    def __call__(self, probs: torch.Tensor):
        """(argmax [B, 6], top_i, ref_i), or None where torch's kernels are to run."""
        if not self.fused or probs.shape[-1] != self.vocab or probs.shape[1] != 6:
            return None
        return fused_lists(probs.contiguous(), self.tables, self.cfg)

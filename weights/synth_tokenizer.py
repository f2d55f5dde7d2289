"""The byte-level BPE of random checkpoints, trained so that prompts have realistic lengths.

The real Qwen2 vocabulary holds most English words as single tokens (with their leading space),
so the grounding prompt costs ~40 text tokens. A tokenizer with bytes only costs one token per
character (~130 more for a 640x480 prompt), which made every benchmark's prefill too long. Here a
small BPE is trained, by the ordinary greedy most-frequent-pair rule, on the official worker's
task strings, the chat turns and common category / referring-expression words, after the same
pre-tokenizer split Qwen2 uses. Words of that corpus become single tokens; other text splits into
the learned pieces and bytes, as with a real BPE. `none` keeps its fixed id (the model's output
grammar needs it as one token), and the merges that build it come first, as they always have.
"""

from __future__ import annotations

import collections

import regex

# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer uses the same pattern).
PRETOKENIZE = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Text between special tokens in the official prompt (system turn, user header, image labels).
# `</c>` joins the categories of a detect query.
CHAT_TEXTS = ["system\nYou are a helpful assistant.\n", "\n", "user\n", "assistant\n", "<image 1>", "<image 2>", "</c>"]

# Task strings of the official worker (NVlabs/Eagle Embodied/locateanything_worker.py) and the
# visual-prompt question; {q} is filled with every category word below.
TASK_TEXTS = [
    "Locate all the instances that matches the following description: {q}.",
    "Locate all the instances that match the following description: {q}.",
    "Locate a single instance that matches the following description: {q}.",
    "Please locate the text referred as {q}.",
    "Detect all the text in box format.",
    "Locate the region that matches the following description: {q}.",
    "Point to: {q}.",
    "Detect all the objects in the image that belong to the category set: <image-2>.",
    "\nVisual prompt: <image-2>",
]

# COCO's categories and common words of referring expressions and GUI grounding.
CATEGORY_WORDS = """
person bicycle car motorcycle airplane bus train truck boat traffic light fire hydrant stop sign
parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella
handbag tie suitcase frisbee skis snowboard sports ball kite baseball bat glove skateboard
surfboard tennis racket bottle wine glass cup fork knife spoon bowl banana apple sandwich orange
broccoli carrot hot pizza donut cake chair couch potted plant bed dining table toilet tv laptop
mouse remote keyboard cell phone microwave oven toaster sink refrigerator book clock vase
scissors teddy hair drier toothbrush people man woman men women child children boy girl baby
player face hand head shirt jacket hat helmet shoe shoes dress building tree trees sky road street
window door wall floor sign text logo button icon menu search box field tab link image picture
the a an of in on at with and or to from by near next behind front left right top bottom middle
center red blue green yellow white black brown gray grey pink purple small large big little tall
wearing holding sitting standing walking riding two three first second last other all each one
""".split()

# Extra weight of the prompt's fixed text over single category words, so its pieces merge first.
_TEXT_WEIGHT = 4


def corpus_words() -> collections.Counter:
    """Pre-tokenized words of the training corpus with their counts."""
    counts: collections.Counter = collections.Counter()
    texts = [t for t in CHAT_TEXTS] * _TEXT_WEIGHT
    for template in TASK_TEXTS:
        texts += [template.format(q=w) for w in CATEGORY_WORDS] if "{q}" in template else [template] * _TEXT_WEIGHT
    texts += ["none", " none"] + [w for w in CATEGORY_WORDS] + [" " + w for w in CATEGORY_WORDS]
    for text in texts:
        counts.update(PRETOKENIZE.findall(text))
    return counts


def train_merges(words: collections.Counter, byte_chars: dict[int, str], forced: list[tuple[str, str]],
                 limit: int) -> list[tuple[str, str]]:
    """Greedy BPE: apply `forced` merges first, then merge the most frequent adjacent pair (ties by
    the pair's text, so the result is deterministic) until every word is one token or `limit`
    merges exist. Pair counts are updated incrementally, only in words a merge touches."""
    segs = {w: [byte_chars[b] for b in w.encode("utf-8")] for w in words}
    merges: list[tuple[str, str]] = []

    def apply(seg: list[str], pair: tuple[str, str]) -> list[str]:
        out, i = [], 0
        while i < len(seg):
            if i + 1 < len(seg) and (seg[i], seg[i + 1]) == pair:
                out.append(seg[i] + seg[i + 1])
                i += 2
            else:
                out.append(seg[i])
                i += 1
        return out

    for pair in forced[:limit]:
        merges.append(pair)
        for w in segs:
            segs[w] = apply(segs[w], pair)

    pair_count: collections.Counter = collections.Counter()
    where: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for w, seg in segs.items():
        for pair in zip(seg, seg[1:]):
            pair_count[pair] += words[w]
            where[pair].add(w)
    while len(merges) < limit:
        live = [(c, p) for p, c in pair_count.items() if c > 0]
        if not live:
            break
        best = min(live, key=lambda cp: (-cp[0], cp[1]))[1]
        merges.append(best)
        for w in sorted(where.pop(best, ())):
            old = segs[w]
            for pair in zip(old, old[1:]):
                pair_count[pair] -= words[w]
            new = apply(old, best)
            segs[w] = new
            for pair in zip(new, new[1:]):
                pair_count[pair] += words[w]
                where[pair].add(w)
        pair_count.pop(best, None)
    return merges


def build_bpe(base_vocab: int, none_id: int) -> tuple[dict[str, int], list[str]]:
    """vocab (token text -> id, ids [0, base_vocab) all used) and merges (ranked) of the BPE.

    Bytes take ids 0..255, learned tokens the next free ids in merge order, `none` the id
    `none_id`; unused ids get unreachable filler entries so the ids stay contiguous, as in the
    real vocabulary. A small `base_vocab` (the tiny preset) keeps only the merges that fit."""
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    forced = [("n", "o"), ("no", "n"), ("non", "e")]
    merges = train_merges(corpus_words(), byte_chars, forced, limit=base_vocab - 256)
    next_free = 256
    for left, right in merges:
        token = left + right
        if token in vocab:
            continue
        if token == "none":
            vocab[token] = none_id
            continue
        while next_free == none_id:
            next_free += 1
        if next_free >= base_vocab:
            raise ValueError(f"base vocabulary of {base_vocab} ids is too small for the merges")
        vocab[token], next_free = next_free, next_free + 1
    if "none" not in vocab:
        raise ValueError(f"base vocabulary of {base_vocab} ids cannot hold the `none` token")
    used = set(vocab.values())
    for i in range(base_vocab):
        if i not in used:
            vocab[f"tok{i}"] = i
    return vocab, [f"{a} {b}" for a, b in merges]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to code points >= 256."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars

"""The prompt as NVIDIA's worker builds it, as token ids, for every task of the worker.

The official `locateanything_worker.py` never renders `chat_template.json`: it calls the
processor's `py_apply_chat_template` and then the processor's placeholder expansion
(`processing_locateanything.py`). So, with images 2.. being visual-prompt exemplars:

    <|im_start|>system\\nYou are a helpful assistant.\\n<|im_end|>\\n      (newline before <|im_end|>)
    <|im_start|>user\\n<image-1>{question}<image-3>...<|im_end|>\\n<|im_start|>assistant\\n

(an image item adds `<image-N>` only when the question does not already hold it; a visual prompt
puts `<image-2>` into the question), and every `<image-N>` becomes the plain text `<image N>`
followed by `<img>`, one `<IMG_CONTEXT>` per merged patch, `</img>`. The Jinja template of
`chat_template.json` (no newline before `<|im_end|>`) is used only when asked for
(`EngineOptions.prompt_format="jinja"`). The tokenizer is the checkpoint's own (transformers).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import CheckpointError, InputError

# The official chat_template.json (Qwen chat format; images become `<image-N>` placeholders).
DEFAULT_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}<image {{ image_count.value }}>{% endif %}"
    "<image-{{ image_count.value }}>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}<video {{ video_count.value }}>{% endif %}<video-{{ video_count.value }}>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# py_apply_chat_template's fixed turns (processing_locateanything.py).
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.\n<|im_end|>\n"
USER_START = "<|im_start|>user\n"
USER_END = "<|im_end|>\n"
ASSISTANT_START = "<|im_start|>assistant\n"

# The worker's task questions (locateanything_worker.py), character for character. `{phrase}`:
# the user's phrase; for `detect`, the categories joined by `</c>` (sic: "matches" in detect,
# "match" in ground_multi). `region` is the worker's ground_gui (box); `point` answers
# `<box><x><y></box>`. `detect_visual_prompt` takes no phrase: its marker becomes `<image-2>`.
TASKS = {
    "detect": "Locate all the instances that matches the following description: {phrase}.",
    "detect_text": "Detect all the text in box format.",
    "ground_single": "Locate a single instance that matches the following description: {phrase}.",
    "ground_multi": "Locate all the instances that match the following description: {phrase}.",
    "ground_text": "Please locate the text referred as {phrase}.",
    "region": "Locate the region that matches the following description: {phrase}.",
    "point": "Point to: {phrase}.",
    "detect_visual_prompt": "Detect all the objects in the image that belong to the category set: <visual_prompt>.",
}
PHRASE_TASKS = frozenset(t for t, q in TASKS.items() if "{phrase}" in q)
VISUAL_PROMPT_TASKS = frozenset({"detect_visual_prompt"})  # need an exemplar

# The worker replaces the first of these markers with `<image-2>` when a visual prompt is given,
# else appends "\nVisual prompt: <image-2>" to the question (_replace_visual_prompt_text).
VISUAL_PROMPT_MARKERS = ("<visual_prompt>", "{visual_prompt}")
VISUAL_PROMPT_SUFFIX = "\nVisual prompt: {placeholder}"
CATEGORY_SEPARATOR = "</c>"

# The processor expands every match of this pattern (replace_media_placeholder).
PLACEHOLDER = re.compile(r"<(image|video)-(\d+)>")
IMAGE_PLACEHOLDER = "<image-1>"


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    image_start: int  # index of the first image-placeholder token of image 1 (the query image)
    image_tokens: int  # number of image-placeholder tokens of image 1
    prefix_len: int  # tokens up to and including image 1's `</img>`: shared by all queries on one image
    # (start, tokens) of every image in placeholder order: image 1, then the exemplars. Empty: image 1 only.
    images: tuple[tuple[int, int], ...] = ()
    # The ids as a read-only int64 array, shared by the rows of a cached prompt (host fills read it
    # without converting the list each time); None: made from `ids` on demand.
    id_array: np.ndarray | None = field(default=None, repr=False, compare=False)

    def token_array(self) -> np.ndarray:
        return self.id_array if self.id_array is not None else np.asarray(self.ids, dtype=np.int64)

    @property
    def image_spans(self) -> tuple[tuple[int, int], ...]:
        return self.images or ((self.image_start, self.image_tokens),)


def load_tokenizer(checkpoint_dir: str | Path):
    from transformers import AutoTokenizer  # heavy import, only when a checkpoint is opened
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns that config.json is no transformers model type
    try:
        return AutoTokenizer.from_pretrained(str(checkpoint_dir), trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for broken tokenizer files
        raise CheckpointError(f"{checkpoint_dir}: cannot load the tokenizer ({exc})") from exc
    finally:
        hf_logging.set_verbosity(level)


def load_chat_template(checkpoint_dir: str | Path) -> str:
    path = Path(checkpoint_dir) / "chat_template.json"
    if path.is_file():
        try:
            template = json.loads(path.read_text(encoding="utf-8"))["chat_template"]
        except (OSError, UnicodeDecodeError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable chat template ({type(exc).__name__}: {exc})") from exc
        if not isinstance(template, str):
            raise CheckpointError(f"{path}: chat_template must be a string, found {type(template).__name__}")
        return template
    return DEFAULT_CHAT_TEMPLATE


def normalize_query(query: str | list[str] | tuple[str, ...]) -> str:
    """A query string, or a list of categories joined with `</c>`; empty parts are refused."""
    parts = [query] if isinstance(query, str) else list(query) if isinstance(query, (list, tuple)) else None
    if not parts or any(not isinstance(p, str) for p in parts):
        raise InputError("query must be a non-empty string or a list of strings")
    cleaned = [p.strip() for p in parts]
    if any(not p for p in cleaned):
        raise InputError("query is empty" if len(cleaned) == 1 else "query list holds an empty category")
    return CATEGORY_SEPARATOR.join(cleaned)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return task


def task_phrase(task: str, query) -> str:
    """The phrase a task's question takes ("" for the tasks without one), with clear errors."""
    check_task(task)
    if task in PHRASE_TASKS:
        if query is None or (isinstance(query, str) and not query.strip()):
            what = "a phrase or categories" if task == "detect" else "a phrase"
            raise InputError(f"query is {'missing' if query is None else 'empty'}: task {task} needs {what}")
        return normalize_query(query)
    if query not in (None, "", [], ()):
        raise InputError(f"task {task} takes no query (got {query!r}); its question is fixed: {TASKS[task]!r}")
    return ""


def insert_visual_prompt(question: str, placeholder: str = "<image-2>") -> str:
    """The worker's _replace_visual_prompt_text without replace_text: the first marker found
    (in marker order) becomes the placeholder, else it is appended on a new line."""
    for marker in VISUAL_PROMPT_MARKERS:
        if marker in question:
            return question.replace(marker, placeholder, 1)
    return question + VISUAL_PROMPT_SUFFIX.format(placeholder=placeholder)


def question_text(task: str, phrase: str, exemplars: int = 0) -> str:
    """The worker's question for a task (phrase from task_phrase), with `<image-2>` placed when
    the row carries `exemplars` visual-prompt images."""
    if task in VISUAL_PROMPT_TASKS and exemplars == 0:
        raise InputError(f"task {task} needs an exemplar (an image, or a box on the query image)")
    question = TASKS[task].format(phrase=phrase) if task in PHRASE_TASKS else TASKS[task]
    return insert_visual_prompt(question) if exemplars else question


def official_chat_text(question: str, images: int) -> str:
    """py_apply_chat_template for the worker's message [image 1, question, images 2..N]."""
    def image_item(n: int) -> str:  # an image adds its placeholder unless the text holds it
        return "" if f"<image-{n}>" in question else f"<image-{n}>"

    parts = [SYSTEM_TURN, USER_START, image_item(1), question] + [image_item(n) for n in range(2, images + 1)]
    parts += [USER_END, ASSISTANT_START]
    return "".join(parts)


class PromptBuilder:
    """Question text -> chat text -> token ids with the image placeholders expanded."""

    def __init__(self, tokenizer, cfg: ModelConfig, chat_template: str = DEFAULT_CHAT_TEMPLATE, task: str = "detect",
                 prompt_format: str = "official"):
        if prompt_format not in ("official", "jinja"):
            raise ValueError("prompt_format must be 'official' (the worker's text) or 'jinja' (chat_template.json)")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.task = check_task(task)
        self.prompt_format = prompt_format
        self.chat_template = chat_template
        self._template = None
        self.img_start = self._token_id("<img>")
        self.img_end = self._token_id("</img>")
        # Text the tokenizer turns into an added (special) token must not come from a user query:
        # it would break the prompt's structure. `</c>` (the category separator) is allowed.
        self._added = {int(i): t for t, i in tokenizer.get_added_vocab().items() if t != CATEGORY_SEPARATOR}
        # Built prompts by (query, image token counts, task): a robot loop asks the same question
        # of every frame, and the build (checks, template, tokenization) is ~0.3 ms of host work
        # on the one-frame critical path. Bounded; a lock, as the engine prepares on several threads.
        self._built: OrderedDict[tuple, tuple] = OrderedDict()
        self._built_lock = threading.Lock()

    def _token_id(self, text: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(text)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise CheckpointError(f"tokenizer has no {text} token")
        return int(tid)

    # ------------------------------------------------------------------ text

    def question(self, query, task: str | None = None, exemplars: int = 0) -> str:
        task = task or self.task
        phrase = task_phrase(task, query)
        self.check_user_text(phrase)
        return question_text(task, phrase, exemplars)

    def check_user_text(self, text: str) -> None:
        """Refuse image placeholders and special-token text in what a user typed."""
        if m := PLACEHOLDER.search(text):
            raise InputError(f"query holds the image placeholder {m.group(0)!r}; images are given as images, "
                             "not as text")
        bad = sorted({self._added[t] for t in self._encode(text) if t in self._added})
        if bad:
            raise InputError(f"query holds special-token text {', '.join(map(repr, bad))}; remove it")

    def text(self, query, task: str | None = None, exemplars: int = 0) -> str:
        """The chat text with the images still `<image-N>` placeholders."""
        question = self.question(query, task, exemplars)
        if self.prompt_format == "official":
            return official_chat_text(question, 1 + exemplars)
        if exemplars:
            raise InputError("the Jinja chat template repeats <image-2> for a visual prompt; use the default "
                             "(official) prompt format for exemplars")
        if self._template is None:
            from jinja2 import Template  # transformers depends on jinja2

            self._template = Template(self.chat_template)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self._template.render(messages=messages, add_generation_prompt=True)

    # ------------------------------------------------------------------ ids

    PROMPTS_KEPT = 512  # distinct (query, image sizes, task) prompts kept by build()

    def build(self, query, image_tokens: int | list[int], task: str | None = None) -> Prompt:
        """Token ids for a query on image 1 (and exemplars 2..N): `image_tokens` per image. A
        prompt built before for the same (query, counts, task) is reused (its ids copied)."""
        counts = [image_tokens] if isinstance(image_tokens, int) else list(image_tokens)
        key = _build_key(query, counts, task or self.task)
        if key is not None:
            with self._built_lock:
                hit = self._built.get(key)
                if hit is not None:
                    self._built.move_to_end(key)
            if hit is not None:
                ids, array, *rest = hit
                return Prompt(list(ids), *rest, id_array=array)
        prompt = self._build(query, counts, task)
        if key is not None:
            with self._built_lock:
                array = np.asarray(prompt.ids, dtype=np.int64)
                array.flags.writeable = False
                self._built[key] = (tuple(prompt.ids), array, prompt.image_start, prompt.image_tokens,
                                    prompt.prefix_len, prompt.images)
                if len(self._built) > self.PROMPTS_KEPT:
                    self._built.popitem(last=False)
        return prompt

    def _build(self, query, counts: list[int], task: str | None) -> Prompt:
        text = self.text(query, task, len(counts) - 1)
        found = [int(m.group(2)) for m in PLACEHOLDER.finditer(text)]
        if found != list(range(1, len(counts) + 1)) or "<video-" in text:
            raise CheckpointError(f"chat template must place <image-1>..<image-{len(counts)}> once each, in order "
                                  f"(found {found})")
        ids, spans, pos = [], [], 0
        for m, n in zip(PLACEHOLDER.finditer(text), counts):
            # The processor writes `<image N>` as plain text before `<img>`; special tokens split
            # the text anyway, so encoding the parts equals encoding the expanded whole.
            ids += self._encode(text[pos : m.start()] + f"<image {m.group(2)}>") + [self.img_start]
            spans.append((len(ids), n))
            ids += [self.cfg.tokens.image] * n + [self.img_end]
            pos = m.end()
        ids += self._encode(text[pos:])
        first_start, first_tokens = spans[0]
        return Prompt(ids=ids, image_start=first_start, image_tokens=first_tokens,
                      prefix_len=first_start + first_tokens + 1, images=tuple(spans))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def _build_key(query, counts: list[int], task: str) -> tuple | None:
    """Cache key of a build, or None for queries of unexpected types (built, and refused, each time)."""
    if query is None or isinstance(query, str):
        phrase = query
    elif isinstance(query, (list, tuple)) and all(isinstance(p, str) for p in query):
        phrase = ("categories", *query)
    else:
        return None
    if not all(isinstance(c, int) for c in counts):
        return None
    return phrase, tuple(counts), task


def expanded_text(text: str, image_tokens: list[int]) -> str:
    """The processor's expansion of a chat text as text (for checks against whole-text encoding)."""
    return PLACEHOLDER.sub(lambda m: f"<image {m.group(2)}><img>" + "<IMG_CONTEXT>" * image_tokens[int(m.group(2)) - 1]
                           + "</img>", text)

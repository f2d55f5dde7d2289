"""Chat-format prompt with the grounding instruction and the image placeholder expanded to one
`<IMG_CONTEXT>` per merged image patch. The tokenizer is the checkpoint's own (transformers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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

# Task instructions of the model card. `detect` takes categories joined by `</c>`.
INSTRUCTIONS = {
    "detect": "Locate all the instances that matches the following description: {query}.",
    "ground_multi": "Locate all the instances that match the following description: {query}.",
    "ground_single": "Locate a single instance that matches the following description: {query}.",
}

IMAGE_PLACEHOLDER = "<image-1>"


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    image_start: int  # index of the first image-placeholder token
    image_tokens: int  # number of image-placeholder tokens
    prefix_len: int  # tokens up to and including `</img>`: shared by all queries on one image


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
    parts = [query] if isinstance(query, str) else list(query)
    if not parts or any(not isinstance(p, str) for p in parts):
        raise InputError("query must be a non-empty string or a list of strings")
    cleaned = [p.strip() for p in parts]
    if any(not p for p in cleaned):
        raise InputError("query is empty" if len(cleaned) == 1 else "query list holds an empty category")
    return "</c>".join(cleaned)


class PromptBuilder:
    def __init__(self, tokenizer, cfg: ModelConfig, chat_template: str = DEFAULT_CHAT_TEMPLATE, task: str = "detect"):
        if task not in INSTRUCTIONS:
            raise InputError(f"unknown task {task!r}; choose from {', '.join(INSTRUCTIONS)}")
        from jinja2 import Template  # transformers depends on jinja2

        self.tokenizer = tokenizer
        self.cfg = cfg
        self.instruction = INSTRUCTIONS[task]
        self.template = Template(chat_template)
        self.img_start = self._token_id("<img>")
        self.img_end = self._token_id("</img>")

    def _token_id(self, text: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(text)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise CheckpointError(f"tokenizer has no {text} token")
        return int(tid)

    def text(self, query: str) -> str:
        """The rendered chat text, with the image still a single `<image-1>` placeholder."""
        messages = [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": self.instruction.format(query=normalize_query(query))}]}]
        return self.template.render(messages=messages, add_generation_prompt=True)

    def build(self, query: str, image_tokens: int) -> Prompt:
        text = self.text(query)
        if text.count(IMAGE_PLACEHOLDER) != 1:
            raise CheckpointError("chat template must place exactly one image placeholder")
        before, after = text.split(IMAGE_PLACEHOLDER)
        # Special tokens split the text anyway, so encoding the parts is the same as encoding the whole.
        head = self._encode(before) + [self.img_start]
        body = [self.cfg.tokens.image] * image_tokens + [self.img_end]
        ids = head + body + self._encode(after)
        return Prompt(ids=ids, image_start=len(head), image_tokens=image_tokens, prefix_len=len(head) + len(body))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

"""One prompt format for sampling, training and evaluation, the same on any day.

The model's chat template renders a system instruction and the question as the user turn.
Templates are config (``model.chat_template``): a name from :data:`CHAT_TEMPLATES`, a
literal Jinja template, or ``null`` for the tokenizer's own. The prompt is rendered and
tokenized once, here, and every backend receives the same token ids: a rendered Llama-3
prompt already starts with ``<|begin_of_text|>``, and a backend that tokenized the text
again with special tokens (vLLM does by default) would put a second one in front.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PAPER_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

#: The Llama-3 prompt the paper's authors laid out by hand for sampling and evaluation
#: (docs/method.md §1.7): special tokens, no "Cutting Knowledge Date" / "Today Date"
#: lines (Llama-3.2's own template stamps the current date into every prompt), a newline
#: after the system turn's <|eot_id|>, and the assistant header as the generation prompt.
#: Assistant turns end in <|eot_id|>, the end-of-turn token SFT learns to emit.
LLAMA3_PAPER = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% if message['role'] == 'system' %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

#: ChatML, as the embedded tiny model and SmolLM2 use it (no date, no BOS).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {"llama3_paper": LLAMA3_PAPER, "chatml": CHATML}


def resolve_chat_template(value: str | None) -> str | None:
    """The Jinja text ``model.chat_template`` stands for (``None``: the tokenizer's own)."""
    if value is None:
        return None
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(
        f"invalid config model.chat_template={value!r}: a template name "
        f"({', '.join(CHAT_TEMPLATES)}), a literal Jinja template, or null for the tokenizer's own"
    )


def messages(question: str, system: str | None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": question}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def render(tokenizer: Any, question: str, system: str | None) -> str:
    """The prompt text for one question; TRL's trainers render the same ``messages``
    through the same template for training."""
    return tokenizer.apply_chat_template(
        messages(question, system), tokenize=False, add_generation_prompt=True
    )


@dataclass(frozen=True)
class Prompts:
    """Rendered prompts, their token ids (what every backend receives) and a digest of the
    ids, which is part of the sample and evaluate stages' cache keys."""

    texts: list[str]
    token_ids: list[list[int]]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for ids in self.token_ids:
            h.update(b"%d," % len(ids) + ",".join(map(str, ids)).encode() + b";")
        return h.hexdigest()[:20]


def build_prompts(tokenizer: Any, questions: Sequence[str], system: str | None) -> Prompts:
    """Render and tokenize each question once. The template writes any special tokens
    (BOS included), so tokenization adds none."""
    texts = [render(tokenizer, q, system) for q in questions]
    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return Prompts(texts, ids)

"""One prompt format for sampling, training and evaluation: the model's chat template with a
system instruction and the question as the user turn."""

from __future__ import annotations

from typing import Any

PAPER_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def messages(question: str, system: str | None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": question}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def render(tokenizer: Any, question: str, system: str | None) -> str:
    """The exact prompt text the sampler and evaluator feed the model; TRL's trainers render
    the same ``messages`` through the same template for training."""
    return tokenizer.apply_chat_template(
        messages(question, system), tokenize=False, add_generation_prompt=True
    )

"""Shared fixtures: where the real datasets live, and the tiny model used end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EAST_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real GSM8K / MATH copies beside the checkout; skip where they are absent."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set EAST_SHARED_DATA)")
    return SHARED_DATA


TASK_TEXTS = [
    f"What is {a} plus {b}? {a}+{b}={a + b}. The answer is \\boxed{{{a + b}}}."
    for a in range(20)
    for b in range(20)
]
SYSTEM = {
    "role": "system",
    "content": "Please reason step by step, and put your final answer within \\boxed{}.",
}


def prompt(a: int, b: int) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": f"What is {a} plus {b}?"}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny LLaMA + tokenizer (random init, ~0.1M parameters), built locally."""
    from east.models import build_tiny_model, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny")
    tok = build_tiny_tokenizer(TASK_TEXTS)
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"]


def build_llama3_style_tokenizer(texts):
    """A small tokenizer that behaves like Llama-3's: its special tokens, and a post-processor
    that prepends <|begin_of_text|> whenever text is tokenized with special tokens (which is
    how a second BOS sneaks in front of an already rendered prompt)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|pad|>")  # fmt: skip


@pytest.fixture(scope="session")
def llama3_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA whose tokenizer behaves like Llama-3's (see above)."""
    from east.models import build_tiny_model

    path = tmp_path_factory.mktemp("llama3")
    tok = build_llama3_style_tokenizer(TASK_TEXTS)
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.config.bos_token_id = model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

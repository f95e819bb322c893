"""Shared fixtures (where the real datasets live, the tiny models used end to end) and the
test tiers: ``tests/unit`` (pure logic, seconds), ``tests/integration`` (tiny models, Hydra,
worker processes), ``tests/e2e`` (whole pipeline runs, minutes), ``tests/engines`` (the real
vLLM, DeepSpeed ZeRO-3 and FSDP engines on CPU processes; skipped where they are not
installed: ``.ci/engines`` builds their environment) and ``tests/gpu`` (needs CUDA; skipped
cleanly without it). Each test carries its tier as a marker, so
``python -m pytest -m unit`` runs the fast tier alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on two cores: one thread per worker (and the processes it starts), not
    # two each fighting for the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e", "gpu", "engines")


def pytest_collection_modifyitems(config, items):
    cuda = None
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(
                    pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
                )


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


def build_llama3_style_tokenizer(texts):
    """A small tokenizer that behaves like Llama-3's (east.models.llama3_style)."""
    from east.models import build_tiny_tokenizer, llama3_style

    return llama3_style(build_tiny_tokenizer(texts))


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

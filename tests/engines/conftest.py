"""The engines tier: the real engines on CPU processes, each test module skipped with its
reason where its engine is not installed (the main environment; `.ci/engines` builds the
one that has them)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def need(module: str, how: str):
    """A skip marker for a module whose engine (``module``) is not importable."""
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{module} is not installed: {how}"
    )


def engine_env(**extra: str) -> dict[str, str]:
    """The environment a test's subprocesses run in: offline, one thread per process (2
    training ranks on 2 cores), vLLM's CPU settings (a KV cache in GiB of RAM, every core)."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        **extra,
    }

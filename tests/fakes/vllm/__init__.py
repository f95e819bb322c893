"""A stand-in for vLLM 0.31 in tests (CPU, no CUDA): the names and signatures the project
calls, read from vLLM's own source (vllm/entrypoints/llm.py ``LLM.__init__`` and
``LLM.generate``, vllm/sampling_params.py ``SamplingParams``, vllm/outputs.py
``RequestOutput`` / ``CompletionOutput``, vllm/logprobs.py ``Logprob``, vllm/config/model.py
``ModelDType`` / ``LogprobsMode``), with vLLM's own checks on them.

It generates nothing real: a response is a pure function of (prompt ids, seed, temperature),
``max_tokens`` tokens long, with ``logprobs`` entries per token when asked. Every engine and
``generate`` call is logged, with the process it ran in, to the JSON Lines file named by
``EAST_FAKE_VLLM_LOG``: tests check that engines live in worker processes, never in the
driver. Put ``tests/fakes`` first on ``PYTHONPATH`` (or ``sys.path``) to use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__version__ = "0.31.0+fake"

MODEL_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")
#: EngineArgs fields the project may pass through LLM(**kwargs) (vllm/engine/arg_utils.py).
ENGINE_ARGS = {
    "max_model_len",
    "max_logprobs",
    "logprobs_mode",
    "disable_log_stats",
    "enforce_eager",
    "enable_chunked_prefill",
    "max_num_batched_tokens",
}


def _log(event: dict[str, Any]) -> None:
    path = os.environ.get("EAST_FAKE_VLLM_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({**event, "pid": os.getpid(), "ppid": os.getppid()}) + "\n")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    flat_logprobs: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.logprobs is not None and self.logprobs < -1:
            raise ValueError(f"logprobs must be non-negative or -1, got {self.logprobs}")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class LLM:
    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        enforce_eager: bool = False,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got unexpected keyword arguments {sorted(unknown)}")
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {MODEL_DTYPES}")
        if kwargs.get("logprobs_mode", "raw_logprobs") not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode {kwargs['logprobs_mode']!r} is not one of {LOGPROBS_MODES}")
        self.model = model
        self.max_model_len = kwargs.get("max_model_len")
        self.max_logprobs = kwargs.get("max_logprobs", 20)
        _log(
            {
                "event": "engine",
                "model": model,
                "tensor_parallel_size": tensor_parallel_size,
                "dtype": dtype,
                "gpu_memory_utilization": gpu_memory_utilization,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT"),
                **{k: kwargs[k] for k in sorted(kwargs)},
            }
        )

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Any = None,
        priority: list[int] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        prompts = list(prompts) if isinstance(prompts, list | tuple) else [prompts]
        params = sampling_params or SamplingParams()
        params = list(params) if isinstance(params, list | tuple) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        _log(
            {
                "event": "generate",
                "requests": len(prompts),
                "logprobs": [p.logprobs for p in params[:1]],
                "seeds": [p.seed for p in params],
                "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT"),
            }
        )
        return [self._one(i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]

    def _one(self, i: int, prompt: Any, sp: SamplingParams) -> RequestOutput:
        if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt:
            raise TypeError("this fake takes token-id prompts only: {'prompt_token_ids': [...]}")
        ids = list(prompt["prompt_token_ids"])
        tokens = sp.max_tokens or 16
        if self.max_model_len is not None and len(ids) + tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({len(ids)}) + max_tokens ({tokens}) > max_model_len {self.max_model_len}"
            )
        if sp.logprobs is not None and sp.logprobs > self.max_logprobs:
            raise ValueError(
                f"Requested sample logprobs of {sp.logprobs}, which is greater than max allowed: {self.max_logprobs}"
            )
        digest = hashlib.sha256(json.dumps([ids, sp.seed, sp.temperature]).encode()).digest()
        answer = digest[0] % 3 if sp.temperature > 0 else sum(ids) % 3
        text = f" The answer is \\boxed{{{answer}}}. "
        logprobs = None
        if sp.logprobs:
            k = sp.logprobs
            # New objects per position, as vLLM returns them (memory grows with tokens x k).
            logprobs = [{t: Logprob(math.log(1 / k), rank=t + 1) for t in range(k)} for _ in range(tokens)]
        out = CompletionOutput(0, text, [7] * tokens, None, logprobs, finish_reason="length")
        return RequestOutput(str(i), None, ids, None, [out], True)

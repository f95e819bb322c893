"""vLLM sampler backend (``sampler=vllm``), same contract as the HF backend: one request per
(prompt, seed) with ``SamplingParams(seed=...)``.

The engine is built in the process that generates — a stage worker (east.stages.generate),
never the Hydra driver when stages are isolated — and lives until that process exits: vLLM
frees device memory only when its engine-core process dies (vllm/entrypoints/llm.py has no
shutdown). What the engine is told, explicitly: the dtype by vLLM's own names
(``ModelDType`` in vllm/config/model.py: auto, bfloat16, float16, float32), ``max_model_len``
(the longest prompt plus the new tokens, unless set: Llama-3.1 would otherwise reserve KV
for 131k tokens), and ``logprobs_mode="raw_logprobs"`` (log-probabilities before the
temperature, which :func:`mean_top_k_entropy` then applies).

Requests go to ``LLM.generate`` in chunks of ``chunk_requests``, and each response's
token log-probabilities are reduced to one float as its chunk returns: vLLM holds every
request's ``list[dict[int, Logprob]]`` until ``generate`` returns (about 1.6 MiB per
300-token response at 20 log-probs a token). Log-probabilities are asked for only when a
mapping reads token entropy (``mapping=local_uncertainty``).

vLLM's response to a (prompt, seed) can depend on the batch it ran in unless
``batch_invariant`` (``VLLM_BATCH_INVARIANT=1``, slower kernels) is set.

Prompts go in as token ids (``{"prompt_token_ids": ...}``): vLLM tokenizes text prompts with
special tokens, which would put a second ``<|begin_of_text|>`` before a rendered Llama-3
prompt. Install with ``pip install 'east[vllm]'`` (CUDA; or its CPU build). This module imports vLLM only
when an engine is built: the config check reads the class without it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from east.checks import check_choice, check_int, check_real
from east.samplers.base import Generation, Sampler, SamplerConfig, SamplingParams, check_token_ids

INSTALL = "pip install 'east[vllm]' (CUDA only; or use sampler=hf)"


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"sampler=vllm needs vLLM, which is not installed: {INSTALL}") from e
    return vllm


#: Our dtype names -> vLLM's (vllm/config/model.py ModelDType).
VLLM_DTYPES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


@dataclass
class VLLMSamplerConfig(SamplerConfig):
    """``sampler=vllm`` (conf/sampler/vllm.yaml)."""

    _target_: str = "east.samplers.vllm.VLLMSampler"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    entropy_top_k: int = 20  # log-probs per token for token entropies (0: none)
    max_model_len: int | None = None  # null: the longest prompt plus the new tokens
    batch_invariant: bool = False  # VLLM_BATCH_INVARIANT=1: responses independent of batching
    chunk_requests: int = 4096  # requests per LLM.generate call
    # auto: off without CUDA (vLLM's CPU runner cannot rewind a seeded request's generator
    # after a partial prefill), vLLM's default (on) with it.
    chunked_prefill: Any = "auto"
    enforce_eager: bool = False  # no graph capture / compilation: faster start, slower steps

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("sampler.tensor_parallel_size", self.tensor_parallel_size, 1, 1024)
        check_real("sampler.gpu_memory_utilization", self.gpu_memory_utilization, 0.01, 1.0)
        check_int("sampler.entropy_top_k", self.entropy_top_k, 0, 1000)
        check_int("sampler.max_model_len", self.max_model_len, 1, 1 << 22, optional=True)
        check_int("sampler.chunk_requests", self.chunk_requests, 1, 1 << 24)
        check_choice("sampler.chunked_prefill", self.chunked_prefill, ("auto", True, False))


#: vLLM's CPU attention backend takes head dimensions from 32 up (a tiny model of head_dim 16
#: fails at its first generate, inside the engine).
CPU_MIN_HEAD_DIM = 32


class VLLMSampler(Sampler):
    #: vLLM gives its memory back only when its process exits: it always generates in a
    #: worker process, whatever isolate_stages says.
    own_process = True
    #: It can run batch-invariant (VLLM_BATCH_INVARIANT=1): the driver asks for it in greedy
    #: evaluation on CUDA (east.stages.driver.evaluation_batch_invariant).
    batch_invariant_mode = True
    returns_token_entropy = True
    Config = VLLMSamplerConfig
    libraries = ("vllm",)
    install_hint = INSTALL

    def __init__(
        self,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        entropy_top_k: int = 20,
        max_model_len: int | None = None,
        batch_invariant: bool = False,
        chunk_requests: int = 4096,
        chunked_prefill: bool | str = "auto",
        enforce_eager: bool = False,
    ):
        _vllm()  # not installed: one line saying how to get it, before anything else
        if dtype not in VLLM_DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} for vLLM; allowed: {', '.join(VLLM_DTYPES)}")
        self.entropy_top_k = entropy_top_k
        self.max_model_len = max_model_len
        self.batch_invariant = batch_invariant
        self.chunk_requests = chunk_requests
        self.chunked_prefill = chunked_prefill
        self.gpu_memory_utilization = gpu_memory_utilization
        self.kwargs = {
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": VLLM_DTYPES[dtype],
            "logprobs_mode": "raw_logprobs",
            "max_logprobs": max(entropy_top_k, 1),
        }
        if enforce_eager:  # no graph capture or compilation: a faster start, slower steps
            self.kwargs["enforce_eager"] = True
        #: Token entropies come from the top-k log-probs, and batch-invariant kernels change
        #: the numbers: both shape the samples.
        self._key: dict[str, Any] = {"name": "vllm", "entropy_top_k": entropy_top_k}
        if batch_invariant:
            self._key["batch_invariant"] = True
        if enforce_eager:  # other kernels: float results may differ from the compiled graph's
            self._key["enforce_eager"] = True
        self._engine: tuple[str, Any] | None = None
        self.tokens_generated = 0
        self.seconds = 0.0

    @property
    def cache_key(self) -> dict[str, Any]:
        return self._key

    @property
    def devices_per_worker(self) -> int:
        return int(self.kwargs["tensor_parallel_size"])

    def fit_prompts(self, longest: int) -> None:
        """Unless ``max_model_len`` is set, reserve KV for this shard's longest request only."""
        if self.max_model_len is None:
            self.max_model_len = longest

    @classmethod
    def config_problem(cls, config: Any) -> tuple[str, Any, str] | None:
        """On a CPU, a tiny model whose attention heads vLLM's CPU backend cannot run: one line
        naming head_dim, before the warm-up."""
        import torch

        tiny = config.model.tiny
        if tiny is None or torch.cuda.is_available():
            return None
        head_dim = tiny.hidden_size // tiny.num_heads
        if head_dim >= CPU_MIN_HEAD_DIM:
            return None
        return (
            "model.tiny.num_heads",
            tiny.num_heads,
            f"the tiny model's head_dim is {tiny.hidden_size} / {tiny.num_heads} = {head_dim}, and vLLM's CPU "
            f"attention needs head_dim >= {CPU_MIN_HEAD_DIM}: use sampler=hf, or fewer heads "
            f"(model.tiny.num_heads={max(1, tiny.hidden_size // CPU_MIN_HEAD_DIM)}; debug=fast's model has "
            "head_dim 32)",
        )

    def required_device_memory(self, model_path: str) -> int | None:
        """vLLM's own start-up check: its share of the device's memory must be free."""
        import torch

        if not torch.cuda.is_available():
            return None
        return int(self.gpu_memory_utilization * torch.cuda.mem_get_info()[1])

    def _llm(self, model_path: str, longest: int) -> Any:
        if self._engine is None or self._engine[0] != model_path:
            self.close()
            if self.batch_invariant:
                os.environ["VLLM_BATCH_INVARIANT"] = "1"
            kwargs = dict(self.kwargs)
            kwargs["max_model_len"] = self.max_model_len or longest
            kwargs.update(prefill_settings(self.chunked_prefill, kwargs["max_model_len"]))
            self._engine = (model_path, _vllm().LLM(model=model_path, **kwargs))
        return self._engine[1]

    def close(self) -> None:
        """Drop the engine (its memory returns when this process exits)."""
        self._engine = None

    def generate(
        self,
        model_path: str,
        prompts: list[list[int]],
        seeds: list[list[int]],
        params: SamplingParams,
        token_entropy: bool = False,
    ) -> Generation:
        prompts = check_token_ids(prompts, seeds)
        longest = max((len(p) for p in prompts), default=1) + params.max_new_tokens
        llm = self._llm(model_path, longest)
        vllm = _vllm()
        rows = [(i, j, s) for i, row_seeds in enumerate(seeds) for j, s in enumerate(row_seeds)]
        record = token_entropy and params.temperature > 0 and self.entropy_top_k > 0
        out: list[list[str]] = [[""] * len(s) for s in seeds]
        entropy: list[list[float]] = [[0.0] * len(s) for s in seeds]
        start = time.perf_counter()
        for c in range(0, len(rows), self.chunk_requests):
            chunk = rows[c : c + self.chunk_requests]
            requests = [{"prompt_token_ids": list(prompts[i])} for i, _, _ in chunk]
            sampling = [
                vllm.SamplingParams(
                    n=1,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_new_tokens,
                    # Greedy needs no seed, and a seeded request takes vLLM's slower
                    # per-request sampling path.
                    seed=int(seed) % (2**31) if params.temperature > 0 else None,
                    logprobs=self.entropy_top_k if record else None,
                    flat_logprobs=record,  # fewer objects for vLLM to hold
                )
                for _, _, seed in chunk
            ]
            outputs = llm.generate(requests, sampling, use_tqdm=True)
            for (i, j, _), result in zip(chunk, outputs, strict=True):
                completion = result.outputs[0]
                self.tokens_generated += len(completion.token_ids)
                out[i][j] = completion.text.strip()
                if record:
                    entropy[i][j] = mean_top_k_entropy(completion.logprobs or [], params.temperature)
            del outputs  # each chunk's log-probs go here, not at the end
        self.seconds += time.perf_counter() - start
        return Generation(out, entropy if record else None)


#: vLLM's default token budget per scheduler step (vllm/config/scheduler.py,
#: ``SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS``).
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


def prefill_settings(chunked_prefill: bool | str, max_model_len: int) -> dict[str, Any]:
    """The engine arguments for ``sampler.chunked_prefill``.

    A request whose prompt does not fit the step's remaining token budget is prefilled in
    chunks; until its prefill completes, each step's sampled token is discarded and its seeded
    generator rewound (``gen.set_offset(gen.get_offset() - 4)`` in
    vllm/v1/worker/gpu_model_runner.py, which the CPU runner inherits). A CPU generator has no
    offset and raises, killing the engine. With chunked prefill off, the scheduler stops at a
    prompt that does not fit (vllm/v1/core/sched/scheduler.py) and takes it whole next step;
    vLLM then requires ``max_num_batched_tokens >= max_model_len`` (vllm/config/scheduler.py).
    ``auto``: off without CUDA, vLLM's default with it."""
    if chunked_prefill == "auto":
        import torch

        chunked_prefill = torch.cuda.is_available()
    if chunked_prefill:
        return {}
    return {
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max(max_model_len, DEFAULT_MAX_NUM_BATCHED_TOKENS),
    }


def mean_top_k_entropy(steps: list[dict[int, Any]], temperature: float) -> float:
    """Mean over generated tokens of the entropy (nats) of softmax(logp / T) restricted to
    the top-k log-probabilities vLLM returned at that step (``Logprob`` objects or floats)."""
    values = []
    for step in steps:
        logps = [getattr(v, "logprob", v) for v in step.values()]
        logps = [lp / temperature for lp in logps if math.isfinite(lp)]
        if not logps:
            continue
        top = max(logps)
        weights = [math.exp(lp - top) for lp in logps]
        z = sum(weights)
        values.append(-sum(w / z * math.log(w / z) for w in weights if w > 0))
    return sum(values) / len(values) if values else 0.0

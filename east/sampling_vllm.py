"""vLLM sampler backend (``sampler=vllm``), same contract as the HF backend: one request per
(prompt, seed) with ``SamplingParams(seed=...)``, so each response depends only on its seed.

Prompts go in as token ids (``{"prompt_token_ids": ...}``): vLLM tokenizes text prompts with
special tokens, which would put a second ``<|begin_of_text|>`` before a rendered Llama-3
prompt. Token entropies (``mapping=local_uncertainty``) come from the top-``entropy_top_k``
log-probabilities vLLM returns per sampled token, tempered and renormalised: the entropy of
the sampling distribution truncated to its k most likely tokens (a lower bound on the full
one; the HF backend computes it over the whole vocabulary).

Install with ``pip install 'east[vllm]'`` (CUDA only). Tensor parallelism is
``sampler.tensor_parallel_size``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from east.sampling import Generation, SamplingParams, check_token_ids

try:
    import vllm
except ImportError as e:  # pragma: no cover - exercised through the error message test
    raise ImportError(
        "sampler=vllm needs vLLM, which is not installed: pip install 'east[vllm]' "
        "(CUDA only; or use sampler=hf)"
    ) from e


class VLLMSampler:
    def __init__(
        self,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        entropy_top_k: int = 20,
    ):
        self.entropy_top_k = entropy_top_k
        self.kwargs = {
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
        }
        #: Token entropies come from the top-k log-probs, so k shapes the samples' records.
        self.cache_key = {"name": "vllm", "entropy_top_k": entropy_top_k}
        self._engines: dict[str, Any] = {}
        self.tokens_generated = 0
        self.seconds = 0.0

    def _engine(self, model_path: str) -> Any:
        if model_path not in self._engines:
            self._engines.clear()  # one model on the GPUs at a time
            self._engines[model_path] = vllm.LLM(model=model_path, **self.kwargs)
        return self._engines[model_path]

    def generate(
        self, model_path: str, prompts: list[list[int]], seeds: list[list[int]], params: SamplingParams
    ) -> Generation:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seed lists")
        llm = self._engine(model_path)
        rows = [(i, j, s) for i, row_seeds in enumerate(seeds) for j, s in enumerate(row_seeds)]
        prompts = check_token_ids(prompts)
        requests = [{"prompt_token_ids": list(prompts[i])} for i, _, _ in rows]
        sampled = params.temperature > 0 and self.entropy_top_k > 0
        sampling = [
            vllm.SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=int(seed) % (2**31),
                logprobs=self.entropy_top_k if sampled else None,
            )
            for _, _, seed in rows
        ]
        start = time.perf_counter()
        outputs = llm.generate(requests, sampling, use_tqdm=True)
        self.seconds += time.perf_counter() - start
        out: list[list[str]] = [[""] * len(s) for s in seeds]
        entropy: list[list[float]] = [[0.0] * len(s) for s in seeds]
        for (i, j, _), result in zip(rows, outputs, strict=True):
            completion = result.outputs[0]
            self.tokens_generated += len(completion.token_ids)
            out[i][j] = completion.text.strip()
            if sampled:
                entropy[i][j] = mean_top_k_entropy(completion.logprobs or [], params.temperature)
        return Generation(out, entropy if sampled else None)


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

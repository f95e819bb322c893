"""vLLM sampler backend (``sampler=vllm``), same contract as the HF backend: one request per
(prompt, seed) with ``SamplingParams(seed=...)``, so each response depends only on its seed.

Install with ``pip install 'east[vllm]'`` (CUDA only). Tensor parallelism is
``sampler.tensor_parallel_size``.
"""

from __future__ import annotations

import time
from typing import Any

from east.sampling import SamplingParams, register_sampler

try:
    import vllm
except ImportError as e:  # pragma: no cover - exercised through the error message test
    raise ImportError(
        "sampler=vllm needs vLLM, which is not installed: pip install 'east[vllm]' "
        "(CUDA only; or use sampler=hf)"
    ) from e


@register_sampler("vllm")
class VLLMSampler:
    def __init__(
        self, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, dtype: str = "auto"
    ):
        self.kwargs = {"tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
                       "dtype": dtype if dtype != "float32" else "float32"}  # fmt: skip
        self._engines: dict[str, Any] = {}
        self.tokens_generated = 0
        self.seconds = 0.0
        self.token_entropy: list[list[float]] | None = None  # not computed by this backend

    def _engine(self, model_path: str) -> Any:
        if model_path not in self._engines:
            self._engines.clear()  # one model on the GPUs at a time
            self._engines[model_path] = vllm.LLM(model=model_path, **self.kwargs)
        return self._engines[model_path]

    def generate(
        self, model_path: str, prompts: list[str], seeds: list[list[int]], params: SamplingParams
    ) -> list[list[str]]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seed lists")
        llm = self._engine(model_path)
        rows = [(i, j, s) for i, row_seeds in enumerate(seeds) for j, s in enumerate(row_seeds)]
        requests = [prompts[i] for i, _, _ in rows]
        sampling = [
            vllm.SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=int(seed) % (2**31),
            )
            for _, _, seed in rows
        ]
        start = time.perf_counter()
        outputs = llm.generate(requests, sampling, use_tqdm=True)
        self.seconds += time.perf_counter() - start
        out: list[list[str]] = [[""] * len(s) for s in seeds]
        for (i, j, _), result in zip(rows, outputs, strict=True):
            completion = result.outputs[0]
            self.tokens_generated += len(completion.token_ids)
            out[i][j] = completion.text.strip()
        return out

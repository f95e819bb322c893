"""The generate worker: responses from a model's weights for the sample, evaluate and
evaluate_sampled stages — in the driver, or in its own process that owns its devices.

    python -m east.stages.generate SPEC.json

Spec (JSON, written by the driver):

- ``model_path``: a hub id or a folder; ``dtype``: the weights' dtype name;
- ``sampler``: the backend's ``_target_`` and its keyword arguments (conf/sampler/*.yaml);
- ``params``: :class:`east.sampling_params.SamplingParams` fields;
- ``prompts``: a JSON Lines file, one row per prompt: ``{"token_ids": [...], "seeds": [...]}``;
- ``token_entropy``: whether to record each response's mean token entropy;
- ``out``: the JSON Lines file to write, one row per prompt, in order:
  ``{"texts": [...], "token_entropy": [...] or null}``;
- ``chunk_prompts``: prompts per ``generate`` call; each chunk's rows are written as it
  returns, so memory holds one chunk, not the stage's output.
"""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from east.sampling_params import SamplingParams
from east.stages.launch import check_device_memory


def build_sampler(node: dict[str, Any], dtype: str) -> Any:
    """The backend a sampler config names (without Hydra: workers never import it)."""
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    module, _, name = node["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs, dtype=dtype)


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def run(spec: dict[str, Any], sampler: Any = None) -> None:
    """Generate for every prompt of ``spec`` and write the rows (``sampler``: a backend
    already built, when the driver runs this inline)."""
    own = sampler is None
    if own:
        sampler = build_sampler(spec["sampler"], spec["dtype"])
    params = SamplingParams(**spec["params"])
    prompts = Path(spec["prompts"])
    if getattr(sampler, "max_model_len", False) is None:  # vLLM: size its KV reserve to this shard
        longest = max((len(r["token_ids"]) for r in _rows(prompts)), default=1)
        sampler.max_model_len = longest + params.max_new_tokens
    required = getattr(sampler, "required_device_memory", None)
    check_device_memory(
        required(spec["model_path"]) if required else None, f"generating with {spec['model_path']}"
    )
    kwargs = {"token_entropy": True} if spec.get("token_entropy") else {}
    chunk = max(1, int(spec.get("chunk_prompts", 1024)))
    out = Path(spec["out"])
    try:
        with out.open("w", encoding="utf-8") as f:
            rows = _rows(prompts)
            while batch := list(itertools.islice(rows, chunk)):
                generation = sampler.generate(
                    spec["model_path"],
                    [r["token_ids"] for r in batch],
                    [r["seeds"] for r in batch],
                    params,
                    **kwargs,
                )
                entropy = generation.token_entropy or [None] * len(batch)
                for texts, ent in zip(generation.texts, entropy, strict=True):
                    f.write(json.dumps({"texts": texts, "token_entropy": ent}, ensure_ascii=False) + "\n")
    finally:
        close = getattr(sampler, "close", None)
        if own and close is not None:
            close()


def main() -> None:
    from east.stages.launch import worker_main

    worker_main("generate", run)


if __name__ == "__main__":
    main()

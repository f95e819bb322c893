"""The generate worker: responses from a model's weights for the sample, evaluate and
evaluate_sampled stages — in the driver, or in its own process that owns its devices.

    python -m east.stages.generate SPEC.json

Spec (JSON, written by the driver):

- ``model_path``: a hub id or a folder; ``dtype``: the weights' dtype name;
- ``sampler``: the backend's ``_target_`` and its keyword arguments (conf/sampler/*.yaml);
- ``params``: :class:`east.sampling_params.SamplingParams` fields;
- ``prompts``: a JSON Lines file, one row per prompt: ``{"token_ids": [...], "seeds": [...]}``;
  ``longest_prompt``: the most token ids of any of them (the backend sizes itself to it);
- ``token_entropy``: whether to record each response's mean token entropy;
- ``out``: the JSON Lines file to write, one row per prompt, in order:
  ``{"texts": [...], "token_entropy": [...] or null}``;
- ``chunk_prompts``: prompts per ``generate`` call; each chunk's rows are written as it
  returns, so memory holds one chunk, not the stage's output;
- ``imports``: the run's ``imports`` (a backend of yours is found beside them).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from east.checks import import_user_modules
from east.samplers.base import Sampler, SamplingParams, build_sampler
from east.stages.launch import check_device_memory


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def run(spec: dict[str, Any], sampler: Sampler | None = None) -> None:
    """Generate for every prompt of ``spec`` and write the rows (``sampler``: a backend
    already built, when the driver runs this inline)."""
    own = sampler is None
    if own:
        import_user_modules(spec.get("imports") or [])  # and the current folder on the path
        sampler = build_sampler(spec["sampler"], spec["dtype"])
    params = SamplingParams(**spec["params"])
    prompts = Path(spec["prompts"])
    sampler.fit_prompts(spec["longest_prompt"] + params.max_new_tokens)
    check_device_memory(
        sampler.required_device_memory(spec["model_path"]), f"generating with {spec['model_path']}"
    )
    token_entropy = bool(spec.get("token_entropy"))
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
                    token_entropy=token_entropy,
                )
                entropy = generation.token_entropy or [None] * len(batch)
                for texts, ent in zip(generation.texts, entropy, strict=True):
                    f.write(json.dumps({"texts": texts, "token_entropy": ent}, ensure_ascii=False) + "\n")
    finally:
        if own:
            sampler.close()


def main() -> None:
    from east.stages.launch import worker_main

    worker_main("generate", run)


if __name__ == "__main__":
    main()

"""The driver side of every stage: its cache key (exactly the config it depends on), and its
body — grading and building in this process; the stages that load model weights through
their worker modules (east.stages.base_model, .generate, .train), run here or, with
``isolate_stages``, in child processes that own their devices and give them back on exit.

:class:`Stages` holds what they share (the cache, the sampler backend, generation) and the
grade and build stages; its parts hold the others: east.stages.driver_train (base model,
train) and east.stages.driver_generate (sample, the evaluations). :func:`east.pipeline.run`
calls them in the paper's order. east.codeid keys each stage by the definitions of these
modules that it reaches, one by one (``DRIVER_MODULES``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from east.cache import (
    StageCache,
    StageResult,
    join_by_id,
    parse_store_dir,
    read_jsonl,
    stage_key,
    write_json,
    write_jsonl,
)
from east.codeid import defining_module, function_digest, own_modules, stage_code
from east.config import Config, SamplingParams
from east.objectives import code_modules
from east.prompts import Prompts
from east.samplers.base import Sampler, build_sampler, sampler_node
from east.stages import launch
from east.stages.driver_common import grading_stats, round_label
from east.stages.driver_generate import GenerationStages
from east.stages.driver_train import ModelStages
from east.weighting import canonical, get_mapping

#: The stages that generate with the sampler backend (its package's version is in their keys).
GENERATING = ("sample", "evaluate", "evaluate_sampled")


class Stages(ModelStages, GenerationStages):
    """Every stage's driver side: the helpers they share here (a stage's artifact from the
    cache, a weight-loading body run inline or in a worker, generation through the backend,
    evaluation grading), the grading and building stages, and from its parts the stages that
    write weights (:class:`ModelStages`) and that generate (:class:`GenerationStages`)."""

    def __init__(self, c: Config, logger: Any, sampler: Sampler):
        self.c = c
        self.logger = logger
        self.sampler = sampler
        self.cache = StageCache(c.paths.cache_dir, c.paths.lock_timeout_s)
        self.cache.clean_stale()
        self.isolate = isolation(c.isolate_stages)
        #: Every stage this run used, by label (e.g. ``sample``, ``train_r1``, ``evaluate_trained_arith``).
        self.results: dict[str, StageResult] = {}
        self._prompt_cache: dict[tuple[str, str], Prompts] = {}

    # ------------------------------------------------------------------ helpers

    def _stage(
        self,
        name: str,
        config: Any,
        inputs: list[StageResult],
        build: Callable[..., None],
        label: str,
        work: bool = False,
        libraries: tuple[str, ...] = (),
        modules: tuple[str, ...] = (),
    ) -> StageResult:
        """The artifact of ``name`` for this config and inputs, built by ``build(folder)``
        (``work``: ``build(folder, work_dir)``, a folder of the key that survives a killed
        build, for checkpoints, and is removed once the artifact is in place; ``libraries``:
        packages this build uses beyond the stage's own, whose versions join the key;
        ``modules``: own modules it runs beyond those east.codeid derives, their code joining
        the key)."""
        # The code that builds the artifact is part of its key (east.codeid): comments no, code
        # yes; for the generating stages, the sampler backend's own module and packages too.
        if name in GENERATING:
            modules = (*modules, *own_modules(self.sampler.code_modules()))
            libraries = (*self.sampler.libraries, *libraries)
        config = {**config, "code": stage_code(name, modules, libraries)}
        keys = [i.key for i in inputs]
        work_dir = self.cache.work_dir(name, stage_key(name, config, keys)) if work else None
        _CURRENT[0] = label
        result = self.cache.run(name, config, keys, (lambda d: build(d, work_dir)) if work else build, label)
        _CURRENT[0] = None
        if work_dir is not None and not result.cached:
            shutil.rmtree(work_dir, ignore_errors=True)
        self.results[label] = result
        self.logger.log(
            {f"stages/{label}/seconds": result.seconds, f"stages/{label}/cached": int(result.cached)}
        )
        return result

    def _run(
        self, module: str, spec: dict[str, Any], folder: Path, label: str, inline: Callable[[], None]
    ) -> None:
        """A weight-loading stage body: ``inline()`` here, or ``python -m module SPEC`` in a
        child process on one device group when stages are isolated."""
        if not self.isolate:
            inline()
            return
        path = launch.write_spec(folder / f"{module.rsplit('.', 1)[-1]}_spec.json", spec)
        launch.run_workers(module, [path], launch.device_groups(1, 1), label)

    def _generate(
        self,
        scratch: Path,
        path: str,
        token_ids: list[list[int]],
        seeds: list[list[int]],
        params: SamplingParams,
        token_entropy: bool,
        label: str,
        sampler_overrides: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Per prompt, in order, ``{"texts": [...], "token_entropy": [...] | None}``: written by
        generate workers (contiguous shards, one per device group) or, unsharded and not
        isolated, by the driver's own sampler. The worker count is not in any key: each
        response depends only on its seed."""
        from east.stages import generate

        scratch.mkdir(parents=True, exist_ok=True)
        per_worker = self.sampler.devices_per_worker
        workers = data_parallel(_get(self.c.sampler, "data_parallel_size", 1), per_worker, len(token_ids))
        parts = launch.shards(len(token_ids), workers)
        base = {
            "model_path": path,
            "dtype": self.c.model.dtype,
            "sampler": {**sampler_node(self.c.sampler), **(sampler_overrides or {})},
            "params": dataclasses.asdict(params),
            "token_entropy": token_entropy,
            "chunk_prompts": _get(self.c.sampler, "chunk_prompts", 1024),
            "imports": list(self.c.imports),  # a backend of yours may live beside them
        }
        outs = []
        for k, part in enumerate(parts):
            prompts = scratch / f"prompts-{k}.jsonl"
            write_jsonl(prompts, [{"token_ids": token_ids[i], "seeds": seeds[i]} for i in part])
            outs.append(scratch / f"generated-{k}.jsonl")
            longest = max((len(token_ids[i]) for i in part), default=1)
            spec = {**base, "prompts": str(prompts), "longest_prompt": longest, "out": str(outs[-1])}
            launch.write_spec(scratch / f"generate-{k}.json", spec)
        if len(parts) == 1 and not (self.isolate or self.sampler.own_process):
            try:
                generate.run(json.loads((scratch / "generate-0.json").read_text()), sampler=self.sampler)
            finally:
                self.sampler.close()
        elif parts:
            specs = [scratch / f"generate-{k}.json" for k in range(len(parts))]
            launch.run_workers(
                "east.stages.generate", specs, launch.device_groups(len(parts), per_worker), label
            )
        for out in outs:
            yield from read_jsonl(out)

    # ------------------------------------------------------------------ stages

    def grade(self, samples: StageResult, round_: int = 0) -> StageResult:
        """Extract, cluster and grade every question's responses (east.grading)."""
        from east.grading import grade_questions

        g = self.c.grading

        def write(d: Path) -> None:
            rows = read_jsonl(samples.path / "samples.jsonl")
            grades = grade_questions(
                [(r["responses"], r["gold"]) for r in rows],
                mode=g.mode,
                processes=g.processes,
                timeout_s=g.timeout_s,
                fallback=g.fallback,
                store=parse_store_dir(self.cache.root),
            )
            write_jsonl(d / "grades.jsonl", [{"id": r["id"], **gr.to_dict()} for r, gr in zip(rows, grades)])
            write_json(d / "stats.json", grading_stats(grades, g.timeout_s, "grade"))

        config = {"mode": g.mode, "timeout_s": g.timeout_s, "fallback": g.fallback}
        return self._stage("grade", config, [samples], write, round_label("grade", round_))

    def build(self, samples: StageResult, grades: StageResult, round_: int = 0) -> StageResult:
        """Filter the graded questions, weight the kept ones, build the objective's records."""
        from east.stages.build import build_records

        c = self.c
        # Vanilla runs (uniform, or e.g. power at a = 0) share one key: the same records. The
        # mapping's own code is in the key: a mapping of yours whose body changes is rebuilt.
        mapping, sharpness = canonical(c.east.mapping, c.east.sharpness)
        config = {
            "objective": c.objective.name,
            "sft_k": c.objective.sft_k,
            "east": {
                **dataclasses.asdict(c.east),
                "mapping": mapping,
                "sharpness": sharpness,
                "mapping_code": function_digest(get_mapping(mapping).raw),
            },
            "filters": dataclasses.asdict(c.filters),
            "seed": c.seed,
        }

        def write(d: Path) -> None:
            rows = read_jsonl(samples.path / "samples.jsonl")
            grade_rows = join_by_id(rows, read_jsonl(grades.path / "grades.jsonl"), samples, grades)
            records, stats = build_records(c, rows, grade_rows)
            write_jsonl(d / "records.jsonl", records)
            write_json(d / "stats.json", stats)

        # The mapping's own module and the objective's (its builder), with every module of yours
        # they import (east.codeid).
        own = (*defining_module(get_mapping(mapping).raw), *code_modules(c.objective.name, "build"))
        return self._stage("build", config, [grades], write, round_label("build", round_), modules=own)

    def _grade(self, items: list[tuple[list[str], str]]) -> list[Any]:
        """Evaluation grading: equivalence clusters, the run's fallback and bound."""
        from east.grading import grade_questions

        g = self.c.grading
        return grade_questions(
            items,
            processes=g.processes,
            fallback=g.fallback,
            timeout_s=g.timeout_s,
            store=parse_store_dir(self.cache.root),
        )


#: The stage this process is building, for the one line a Ctrl-C prints (run.py).
_CURRENT: list[str | None] = [None]


def current_stage() -> str | None:
    return _CURRENT[0]


# ---------------------------------------------------------------------- placement


def make_sampler(c: Config) -> Sampler:
    """The run's sampler backend, built from ``sampler`` as a generate worker builds it."""
    return build_sampler(c.sampler, c.model.dtype)


def isolation(setting: Any) -> bool:
    """``isolate_stages``: ``auto`` is on when a CUDA device is visible."""
    if setting == "auto":
        return launch.cuda_available()
    return bool(setting)


def _get(node: Any, key: str, default: Any) -> Any:
    if dataclasses.is_dataclass(node):
        return getattr(node, key, default)
    return node.get(key, default) if hasattr(node, "get") else default


def data_parallel(size: Any, per_worker: int, prompts: int) -> int:
    """Generate workers: ``sampler.data_parallel_size`` (``auto``: every visible group of
    ``per_worker`` devices, the backend's ``devices_per_worker``; 1 on a CPU), never more than
    there are prompts."""
    if size == "auto":
        size = max(1, len(launch.visible_devices()) // per_worker)
    return max(1, min(int(size), max(prompts, 1)))

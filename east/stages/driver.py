"""The driver side of every stage: its cache key (exactly the config it depends on), and its
body — grading and building in this process; the stages that load model weights through
their worker modules (east.stages.base_model, .generate, .train), run here or, with
``isolate_stages``, in child processes that own their devices and give them back on exit.

:class:`Stages` holds what they share (the cache, the sampler backend, tokenized prompts);
:func:`east.pipeline.run` calls them in the paper's order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from east.cache import (
    StageCache,
    StageResult,
    join_by_id,
    parse_store_dir,
    read_json,
    read_jsonl,
    stage_key,
    write_json,
    write_jsonl,
)
from east.codeid import defining_module, function_digest, is_own, stage_code
from east.config import Config, SamplingParams
from east.data import Problem, Splits
from east.models import model_path
from east.objectives import code_modules
from east.prompts import Prompts, build_prompts
from east.samplers.base import Sampler, build_sampler, sample_seed, sampler_node
from east.stages import launch
from east.stages.base_model import WARMUP_RECIPE
from east.validate import batch_layout, trainer_settings
from east.weighting import canonical, get_mapping

log = logging.getLogger(__name__)

#: The stages that generate with the sampler backend (its package's version is in their keys).
GENERATING = ("sample", "evaluate", "evaluate_sampled")


class Stages:
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
            modules = (*modules, *(m for m in self.sampler.code_modules() if m != "__main__" and is_own(m)))
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

    def _prompts(self, path: str, problems: list[Problem]) -> Prompts:
        """The prompts for ``problems``, rendered by the configured template and tokenized
        once; their digest goes into the keys of the stages that generate from them."""
        from east.models import load_tokenizer

        key = (path, problems_digest(problems))
        if key not in self._prompt_cache:
            tok = load_tokenizer(path, self.c.model.chat_template)
            questions = [p.question for p in problems]
            self._prompt_cache[key] = build_prompts(tok, questions, self.c.model.system_prompt)
        return self._prompt_cache[key]

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
        workers, per_worker = data_parallel(self.c.sampler, len(token_ids))
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

    def base_model(self, splits: Splits) -> StageResult:
        """The model self-training starts from: the tiny model after its warm-up, or a
        reference to real weights (hub id or folder) written as a small artifact."""
        from east.stages import base_model as worker

        m = self.c.model
        if m.gguf and not m.path:
            from east.models import find_gguf

            gguf = dict(m.gguf)

            def convert(d: Path) -> None:
                spec = {"kind": "gguf", "out": str(d), "gguf": str(find_gguf(gguf["package"], gguf["file"]))}
                self._run("east.stages.base_model", spec, d / ".work", "base_model", lambda: worker.run(spec))
                shutil.rmtree(d / ".work", ignore_errors=True)

            return self._stage("base_model", {"gguf": gguf}, [], convert, "base_model")
        if m.tiny is None:
            config = {"path": m.path, "chat_template": m.chat_template}
            return self._stage(
                "base_model", config, [], lambda d: write_json(d / "model.json", config), "base_model"
            )
        warmup = splits.warmup
        if not warmup:  # another dataset: the tiny model's warm-up is the embedded task's
            from east.data.arith import ArithConfig, generate

            warmup = generate(ArithConfig())["warmup"]
            log.warning(
                "model=tiny on dataset %s: its base policy is warmed up on the embedded arith task "
                "(cached, shared with the default run); on these questions it exercises the "
                "pipeline, its accuracy is not a result",
                self.c.dataset.name,
            )
        config = {
            "tiny": dataclasses.asdict(m.tiny),
            "system": m.system_prompt,
            "warmup": problems_digest(warmup),
            "recipe": WARMUP_RECIPE,
        }

        def warm_up(d: Path) -> None:
            scratch = d / ".work"
            scratch.mkdir()
            write_jsonl(scratch / "warmup.jsonl", [p.to_dict() for p in warmup])
            spec = {
                "kind": "tiny",
                "out": str(d),
                "tiny": dataclasses.asdict(m.tiny),
                "warmup": str(scratch / "warmup.jsonl"),
                "system": m.system_prompt,
            }
            self._run("east.stages.base_model", spec, scratch, "base_model", lambda: worker.run(spec))
            shutil.rmtree(scratch, ignore_errors=True)

        return self._stage("base_model", config, [], warm_up, "base_model")

    def sample(self, model: StageResult, problems: list[Problem], round_: int = 0) -> StageResult:
        """n responses per training question, each seeded by (seed, question, index, round),
        with the sampler's token entropies when the mapping reads them."""
        c, params = self.c, self.c.sampling
        path = model_path(model.path)
        prompts = self._prompts(path, problems)
        token_entropy = get_mapping(canonical(c.east.mapping, c.east.sharpness)[0]).signal == "token_entropy"
        config = {
            "sampling": dataclasses.asdict(params),
            "seed": c.seed,
            "round": round_,
            "prompts": prompts.digest,
            "sampler": self.sampler.cache_key,
            "questions": problems_digest(problems),
            "dtype": c.model.dtype,
        }
        if token_entropy:  # recorded only when read (vLLM then returns log-probs)
            config["token_entropy"] = True
        label = round_label("sample", round_)

        def write(d: Path) -> None:
            seeds = [[sample_seed(c.seed, p.id, j, round_) for j in range(params.n)] for p in problems]
            start = time.perf_counter()
            generated = self._generate(
                d / ".work", path, prompts.token_ids, seeds, params, token_entropy, label
            )
            responses = 0
            with (d / "samples.jsonl").open("w", encoding="utf-8") as f:
                for p, g in zip(problems, generated, strict=True):
                    responses += len(g["texts"])
                    row = {**p.to_dict(), "responses": g["texts"], "token_entropy": g["token_entropy"]}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            shutil.rmtree(d / ".work", ignore_errors=True)
            write_json(d / "stats.json", {"seconds": time.perf_counter() - start, "responses": responses})
            example = {"text": prompts.texts[0], "token_ids": prompts.token_ids[0]}
            write_json(d / "prompt_example.json", example)

        return self._stage("sample", config, [model], write, label)

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

    def train(self, model: StageResult, records: StageResult, round_: int = 0) -> StageResult:
        """Train the objective with the per-question weights (east.training's TRL subclasses),
        checkpointing into the stage's work folder so that a killed run resumes."""
        from east.stages import train as worker

        c = self.c
        layout = batch_layout(c)
        trainer_cfg = {
            **trainer_settings(c),
            "gradient_accumulation_steps": layout["gradient_accumulation_steps"],
        }
        # The process count is part of the key: with it, float reductions change. How often
        # checkpoints are written does not change the result: not in the key.
        config = {
            "objective": c.objective.name,
            "trainer": {k: v for k, v in trainer_cfg.items() if k != "save_steps"},
            "seed": c.seed,
            "processes": layout["processes"],
            "dtype": c.model.dtype,
            "chat_template": c.model.chat_template,
        }
        dist = c.distributed
        # DDP, FSDP and ZeRO-3 reduce in different orders (ZeRO-3 on one process too).
        if layout["processes"] > 1 or dist.accelerate_config:
            config["accelerate_config"] = dist.accelerate_config
        peft = dataclasses.asdict(c.peft) if c.peft.enabled else None
        if peft:  # (absent when off: full-training keys stay what they were)
            config["peft"] = peft
        label = round_label("train", round_)

        def write(d: Path, work: Path) -> None:
            spec = {
                "objective": c.objective.name,
                "base_path": model_path(model.path),
                "out_dir": str(d),
                "work_dir": str(work),
                "records": str(records.path / "records.jsonl"),
                "settings": trainer_cfg,
                "seed": c.seed,
                "chat_template": c.model.chat_template,
                "dtype": c.model.dtype,
                "peft": peft,
                "report_to": [],  # the driver logs through its own logger
                "imports": list(c.imports),  # an objective of yours registers itself there
            }
            if dist.num_processes > 1 or dist.accelerate_config:  # (ZeRO-3 on one process too)
                write_json(d / "train_spec.json", spec)
                accelerate = dist.accelerate_config_path() if dist.accelerate_config else None
                worker.launch(d / "train_spec.json", dist.num_processes, accelerate, list(dist.launch_args))
            else:
                from east.tracking import logger_callback

                inline = lambda: worker.train_from_spec(spec, callbacks=[logger_callback(self.logger)])  # noqa: E731
                self._run("east.stages.train", spec, d, label, inline)
                if not self.isolate:
                    return
            for entry in read_json(d / "log_history.json"):  # workers do not log to W&B
                self.logger.log({f"train/{k}": v for k, v in entry.items() if isinstance(v, int | float)})

        lora = ("peft",) if peft else ()  # PEFT's version shapes a LoRA model, not a full one
        engine = (
            ("deepspeed",) if dist.distributed_type() == "DEEPSPEED" else ()
        )  # ZeRO-3's own optimiser step
        return self._stage(
            "train",
            config,
            [model, records],
            write,
            label,
            work=True,
            libraries=(*lora, *engine),
            modules=code_modules(c.objective.name),  # its trainer and spec (east.objectives)
        )

    def evaluate(
        self, model: StageResult, test_name: str, problems: list[Problem], label: str
    ) -> StageResult:
        """Greedy-decoding accuracy on one test set, with a prediction per question."""
        e, g = self.c.evaluation, self.c.grading
        path = model_path(model.path)
        prompts = self._prompts(path, problems)
        config = {
            "test": test_name,
            "questions": problems_digest(problems),
            "max_new_tokens": e.max_new_tokens,
            "prompts": prompts.digest,
            "sampler": self.sampler.cache_key,
            "fallback": g.fallback,
            "timeout_s": g.timeout_s,
            "dtype": self.c.model.dtype,
        }
        invariant = evaluation_batch_invariant(self.sampler)
        if invariant:  # (absent otherwise: the HF backend's and CPU keys stay what they were)
            config["batch_invariant"] = True

        def write(d: Path) -> None:
            params = SamplingParams(n=1, temperature=0.0, max_new_tokens=e.max_new_tokens)
            seeds = [[0]] * len(problems)
            overrides = {"batch_invariant": True} if invariant else {}
            texts = [
                r["texts"]
                for r in self._generate(
                    d / ".work", path, prompts.token_ids, seeds, params, False, label, overrides
                )
            ]
            shutil.rmtree(d / ".work", ignore_errors=True)
            grades = self._grade([(t, p.gold) for t, p in zip(texts, problems, strict=True)])
            records = [
                {
                    "id": p.id,
                    "gold": p.gold,
                    "answer": gr.answers[0],
                    "boxed": gr.boxed[0],
                    "correct": gr.correct[0],
                    "response": t[0],
                }
                for p, t, gr in zip(problems, texts, grades)
            ]
            correct = sum(r["correct"] for r in records)
            timeouts = sum(gr.timeouts for gr in grades)
            warn_timeouts(timeouts, len(records), g.timeout_s, label)
            write_jsonl(d / "predictions.jsonl", records)
            metrics = {
                "accuracy": correct / len(records) if records else 0.0,
                "n": len(records),
                "fallback": g.fallback,
                "answers_not_boxed": sum(1 for r in records if r["answer"] is not None and not r["boxed"]),
                "grading_timeouts": timeouts,
            }
            write_json(d / "metrics.json", metrics)

        return self._stage("evaluate", config, [model], write, label)

    def evaluate_sampled(
        self, model: StageResult, test_name: str, problems: list[Problem], label: str
    ) -> StageResult:
        """maj@n and unbiased pass@k over n sampled answers per test question."""
        e, g, c = self.c.evaluation, self.c.grading, self.c
        params = dataclasses.replace(c.sampling, n=e.samples, max_new_tokens=e.max_new_tokens)
        path = model_path(model.path)
        prompts = self._prompts(path, problems)
        config = {
            "test": test_name,
            "questions": problems_digest(problems),
            "params": dataclasses.asdict(params),
            "prompts": prompts.digest,
            "sampler": self.sampler.cache_key,
            "seed": c.seed,
            "pass_k": list(e.pass_k),
            "fallback": g.fallback,
            "timeout_s": g.timeout_s,
            "dtype": c.model.dtype,
        }

        def write(d: Path) -> None:
            from east.metrics import majority_correct, pass_at_k

            seeds = [[sample_seed(c.seed, p.id, j, "eval") for j in range(params.n)] for p in problems]
            texts = [
                r["texts"]
                for r in self._generate(d / ".work", path, prompts.token_ids, seeds, params, False, label)
            ]
            shutil.rmtree(d / ".work", ignore_errors=True)
            grades = self._grade([(r, p.gold) for r, p in zip(texts, problems, strict=True)])
            metrics = {
                f"maj@{params.n}": float(np.mean([majority_correct(gr) for gr in grades])),
                "grading_timeouts": sum(gr.timeouts for gr in grades),
            }
            warn_timeouts(metrics["grading_timeouts"], sum(gr.n for gr in grades), g.timeout_s, label)
            for k in e.pass_k:
                metrics[f"pass@{k}"] = float(np.mean([pass_at_k(gr.n, sum(gr.correct), k) for gr in grades]))
            write_json(d / "metrics.json", metrics)

        return self._stage("evaluate_sampled", config, [model], write, label)

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


def evaluation_batch_invariant(sampler: Sampler) -> bool:
    """Whether greedy evaluation runs batch-invariant: with a backend that can
    (``batch_invariant_mode``: vLLM) on CUDA. Phase A evaluates the base model on all
    of a node's GPUs, phase B the trained model on one; without it a response depends on the
    batch it ran in, and trained - base would carry batching noise on top of training's effect.
    Not on a CPU: vLLM's CPU attention has no batch-invariant mode (its backend does not
    declare ``supports_batch_invariance``), and a CPU's batches are the same either way here
    (tests/engines: two engines write what one writes)."""
    return sampler.batch_invariant_mode and launch.cuda_available()


def isolation(setting: Any) -> bool:
    """``isolate_stages``: ``auto`` is on when a CUDA device is visible."""
    if setting == "auto":
        return launch.cuda_available()
    return bool(setting)


def _get(node: Any, key: str, default: Any) -> Any:
    if dataclasses.is_dataclass(node):
        return getattr(node, key, default)
    return node.get(key, default) if hasattr(node, "get") else default


def data_parallel(sampler: Any, prompts: int) -> tuple[int, int]:
    """(generate workers, devices per worker): ``sampler.data_parallel_size`` (``auto``: every
    visible device group of ``tensor_parallel_size`` devices; 1 on a CPU) and the backend's
    tensor parallelism."""
    per_worker = int(_get(sampler, "tensor_parallel_size", 1) or 1)
    size = _get(sampler, "data_parallel_size", 1)
    if size == "auto":
        size = max(1, len(launch.visible_devices()) // per_worker)
    return max(1, min(int(size), max(prompts, 1))), per_worker


# ---------------------------------------------------------------------- helpers


def problems_digest(problems: list[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.gold]).encode())
    return h.hexdigest()[:20]


def round_label(stage: str, round_: int) -> str:
    return stage if round_ == 0 else f"{stage}_r{round_}"


def grading_stats(grades: list[Any], timeout_s: float, stage: str) -> dict[str, Any]:
    responses = sum(g.n for g in grades)
    timeouts = sum(g.timeouts for g in grades)
    warn_timeouts(timeouts, responses, timeout_s, stage)
    return {"questions": len(grades), "responses": responses, "timeouts": timeouts, "timeout_s": timeout_s}


def warn_timeouts(timeouts: int, responses: int, timeout_s: float, stage: str) -> None:
    if timeouts:
        log.warning(
            "%s: %d of %d responses hit the grading bound (%.3g s per parse or comparison, or too "
            "large to evaluate) and were compared by string only; raise grading.timeout_s to "
            "grade them symbolically",
            stage,
            timeouts,
            responses,
            timeout_s,
        )

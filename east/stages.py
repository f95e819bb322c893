"""The pipeline's stages, each a cached artifact (:mod:`east.cache`) keyed by exactly the
config it depends on: the base model, sampling, grading, building the weighted training
records, training, and evaluation (greedy accuracy; maj@n / pass@k over samples).

:class:`Stages` holds what they share (the cache, the sampler backend, tokenized prompts);
:func:`east.pipeline.run` calls them in the paper's order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from east.cache import StageCache, StageResult, read_json, read_jsonl, write_json, write_jsonl
from east.config import Config, SamplingParams, batch_layout, trainer_settings
from east.data import Problem, Splits
from east.prompts import Prompts, assistant, build_prompts, messages
from east.sampling import sample_seed
from east.train_stage import WARMUP_RECIPE, launch_workers, model_path, train_from_spec, warm_up_tiny
from east.weighting import canonical

log = logging.getLogger(__name__)


class Stages:
    def __init__(self, c: Config, logger: Any, sampler: Any):
        self.c = c
        self.logger = logger
        self.sampler = sampler
        self.cache = StageCache(c.paths.cache_dir)
        self.cache.clean_stale()
        #: Every stage this run used, by label (e.g. ``sample``, ``train_r1``, ``evaluate_arith``).
        self.results: dict[str, StageResult] = {}
        self._prompt_cache: dict[tuple[str, str], Prompts] = {}

    # ------------------------------------------------------------------ helpers

    def _stage(
        self, name: str, config: Any, inputs: list[StageResult], build: Any, label: str
    ) -> StageResult:
        result = self.cache.run(name, config, [i.key for i in inputs], build)
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

    # ------------------------------------------------------------------ stages

    def base_model(self, splits: Splits) -> StageResult:
        """The model self-training starts from: the tiny model after its warm-up, or a
        reference to real weights (hub id or folder) written as a small artifact."""
        m = self.c.model
        if m.gguf and not m.path:
            from east.models import convert_gguf, find_gguf

            gguf = dict(m.gguf)

            def convert(d: Path) -> None:
                convert_gguf(find_gguf(gguf["package"], gguf["file"]), d / "model")

            return self._stage("base_model", {"gguf": gguf}, [], convert, "base_model")
        if m.tiny is None:
            config = {"path": m.path, "chat_template": m.chat_template}
            return self._stage(
                "base_model", config, [], lambda d: write_json(d / "model.json", config), "base_model"
            )
        config = {
            "tiny": dataclasses.asdict(m.tiny),
            "system": m.system_prompt,
            "warmup": problems_digest(splits.warmup),
            "recipe": WARMUP_RECIPE,
        }

        def warm_up(d: Path) -> None:
            warm_up_tiny(d, m.tiny, splits.warmup, m.system_prompt)

        return self._stage("base_model", config, [], warm_up, "base_model")

    def sample(self, model: StageResult, problems: list[Problem], round_: int = 0) -> StageResult:
        """n responses per training question, each seeded by (seed, question, index, round),
        with the sampler's token entropies where it records them."""
        c, params = self.c, self.c.sampling
        path = model_path(model.path)
        prompts = self._prompts(path, problems)
        config = {
            "sampling": dataclasses.asdict(params),
            "seed": c.seed,
            "round": round_,
            "prompts": prompts.digest,
            "sampler": self.sampler.cache_key,
            "questions": problems_digest(problems),
            "dtype": c.model.dtype,
        }

        def write(d: Path) -> None:
            seeds = [[sample_seed(c.seed, p.id, j, round_) for j in range(params.n)] for p in problems]
            start = time.perf_counter()
            generation = self.sampler.generate(path, prompts.token_ids, seeds, params)
            seconds = time.perf_counter() - start
            token_entropy = generation.token_entropy or [None] * len(problems)
            rows = [
                {**p.to_dict(), "responses": r, "token_entropy": t}
                for p, r, t in zip(problems, generation.texts, token_entropy, strict=True)
            ]
            write_jsonl(d / "samples.jsonl", rows)
            responses = sum(map(len, generation.texts))
            write_json(d / "stats.json", {"seconds": seconds, "responses": responses})
            example = {"text": prompts.texts[0], "token_ids": prompts.token_ids[0]}
            write_json(d / "prompt_example.json", example)

        return self._stage("sample", config, [model], write, round_label("sample", round_))

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
                store=self.cache.root,
            )
            write_jsonl(d / "grades.jsonl", [{"id": r["id"], **gr.to_dict()} for r, gr in zip(rows, grades)])
            write_json(d / "stats.json", grading_stats(grades, g.timeout_s, "grade"))

        config = {"mode": g.mode, "timeout_s": g.timeout_s, "fallback": g.fallback}
        return self._stage("grade", config, [samples], write, round_label("grade", round_))

    def build(self, samples: StageResult, grades: StageResult, round_: int = 0) -> StageResult:
        """Filter the graded questions, weight the kept ones, build the objective's records."""
        c = self.c
        # Vanilla runs (uniform, or e.g. power at a = 0) share one key: the same records.
        mapping, sharpness = canonical(c.east.mapping, c.east.sharpness)
        config = {
            "objective": c.objective.name,
            "sft_k": c.objective.sft_k,
            "east": {**dataclasses.asdict(c.east), "mapping": mapping, "sharpness": sharpness},
            "filters": dataclasses.asdict(c.filters),
            "seed": c.seed,
        }

        def write(d: Path) -> None:
            rows = read_jsonl(samples.path / "samples.jsonl")
            grade_rows = join_by_id(rows, read_jsonl(grades.path / "grades.jsonl"), samples, grades)
            records, stats = build_records(c, rows, grade_rows)
            write_jsonl(d / "records.jsonl", records)
            write_json(d / "stats.json", stats)

        return self._stage("build", config, [grades], write, round_label("build", round_))

    def train(self, model: StageResult, records: StageResult, round_: int = 0) -> StageResult:
        """Train the objective with the per-question weights (east.training's TRL subclasses)."""
        c = self.c
        layout = batch_layout(c)
        trainer_cfg = {
            **trainer_settings(c),
            "gradient_accumulation_steps": layout["gradient_accumulation_steps"],
        }
        # The process count is part of the key: with it, float reductions change.
        config = {
            "objective": c.objective.name,
            "trainer": trainer_cfg,
            "seed": c.seed,
            "processes": layout["processes"],
            "dtype": c.model.dtype,
            "chat_template": c.model.chat_template,
        }
        dist = c.distributed
        if layout["processes"] > 1:  # DDP, FSDP and ZeRO-3 reduce in different orders
            config["accelerate_config"] = dist.accelerate_config

        def write(d: Path) -> None:
            spec = {
                "objective": c.objective.name,
                "base_path": model_path(model.path),
                "out_dir": str(d),
                "records": str(records.path / "records.jsonl"),
                "settings": trainer_cfg,
                "seed": c.seed,
                "chat_template": c.model.chat_template,
                "dtype": c.model.dtype,
                "report_to": [],  # the driver logs through its own logger
            }
            if dist.num_processes == 1:
                from east.tracking import logger_callback

                train_from_spec(spec, callbacks=[logger_callback(self.logger)])
                return
            write_json(d / "train_spec.json", spec)
            accelerate = dist.accelerate_config_path() if dist.accelerate_config else None
            launch_workers(d / "train_spec.json", dist.num_processes, accelerate, list(dist.launch_args))
            for entry in read_json(d / "log_history.json"):  # workers do not log to W&B
                self.logger.log({f"train/{k}": v for k, v in entry.items() if isinstance(v, int | float)})

        return self._stage("train", config, [model, records], write, round_label("train", round_))

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

        def write(d: Path) -> None:
            params = SamplingParams(n=1, temperature=0.0, max_new_tokens=e.max_new_tokens)
            texts = self.sampler.generate(path, prompts.token_ids, [[0]] * len(problems), params).texts
            grades = self._grade([(t, p.gold) for t, p in zip(texts, problems)])
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
            texts = self.sampler.generate(path, prompts.token_ids, seeds, params).texts
            grades = self._grade([(r, p.gold) for r, p in zip(texts, problems)])
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
            items, processes=g.processes, fallback=g.fallback, timeout_s=g.timeout_s, store=self.cache.root
        )


# ---------------------------------------------------------------------- building records


def build_records(
    c: Config, rows: list[dict[str, Any]], grade_rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The objective's weighted training records from graded samples, and their statistics."""
    from east.grading import QuestionGrade
    from east.selection import GradedQuestion, filter_questions
    from east.selection import build_records as build_objective_records
    from east.weighting import get_mapping

    system = c.model.system_prompt
    questions = [
        GradedQuestion(
            r["id"],
            messages(r["question"], system),
            r["responses"],
            QuestionGrade(**{k: v for k, v in g.items() if k != "id"}),
        )
        for r, g in zip(rows, grade_rows)
    ]
    kept, dropped = filter_questions(questions, c.filters)
    if not kept:
        raise RuntimeError(
            f"no training question survived the filters (dropped per rule: {dropped}); "
            "sample more responses (sampling.n) or relax the filters"
        )
    name, sharpness = canonical(c.east.mapping, c.east.sharpness)
    mapping = get_mapping(name)
    weights = mapping(signal_values(kept, rows, mapping.signal), sharpness)
    kwargs = {"k": c.objective.sft_k} if c.objective.name == "sft" else {}
    records = build_objective_records(c.objective.name, kept, weights, seed=c.seed, **kwargs)
    for r in records:  # TRL conversational format
        for key in ("completion", "chosen", "rejected"):
            if key in r:
                r[key] = assistant(r[key])
    entropy = [q.grade.entropy for q in questions]
    kept_entropy = [q.grade.entropy for q in kept]
    stats = {
        "questions": len(questions),
        "kept": len(kept),
        "dropped": dropped,
        "records": len(records),
        "entropy": summary(kept_entropy),
        "entropy_all": summary(entropy),
        "weight": summary(list(weights)),
        "accuracy_all": summary([q.grade.accuracy for q in questions]),
        "kept_entropy_values": kept_entropy,
        "weight_values": [float(w) for w in weights],
        "entropy_values": entropy,
    }
    return records, stats


def signal_values(kept: list[Any], rows: list[dict[str, Any]], signal: str) -> np.ndarray:
    """Per kept question, the statistic a mapping reads (east.weighting.SIGNALS): a field of
    its grade, or the mean of the sampler's token entropies over its responses."""
    if signal == "token_entropy":
        token = {r["id"]: r.get("token_entropy") for r in rows}
        missing = [q.question_id for q in kept if not token.get(q.question_id)]
        if missing:
            raise ValueError(
                f"mapping signal 'token_entropy' is not available for {len(missing)} questions "
                f"(e.g. {missing[0]!r}): this run's sampler recorded no token entropies"
            )
        return np.array([np.mean(token[q.question_id]) for q in kept], dtype=float)
    field = {"entropy": "entropy", "accuracy": "accuracy", "rejected": "rejected_share"}[signal]
    return np.array([getattr(q.grade, field) for q in kept], dtype=float)


# ---------------------------------------------------------------------- helpers


def problems_digest(problems: list[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.gold]).encode())
    return h.hexdigest()[:20]


def round_label(stage: str, round_: int) -> str:
    return stage if round_ == 0 else f"{stage}_r{round_}"


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def join_by_id(
    rows: list[dict[str, Any]], other: list[dict[str, Any]], left: StageResult, right: StageResult
) -> list[dict[str, Any]]:
    """``other``'s rows in the order of ``rows``, matched by question id. A missing, extra or
    repeated id is an error naming both artifacts: rows are never paired by position."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in other:
        if r["id"] in by_id:
            raise RuntimeError(f"{right.name} artifact {right.path} repeats question id {r['id']!r}")
        by_id[r["id"]] = r
    ids = [r["id"] for r in rows]
    missing = [i for i in ids if i not in by_id]
    extra = sorted(set(by_id) - set(ids))
    if missing or extra or len(set(ids)) != len(ids):
        raise RuntimeError(
            f"{left.name} ({left.path}) and {right.name} ({right.path}) disagree on question ids: "
            f"{len(missing)} missing from {right.name} (e.g. {missing[:3]}), {len(extra)} extra "
            f"(e.g. {extra[:3]}); delete both folders to rebuild them"
        )
    return [by_id[i] for i in ids]


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

"""The driver side of the stages that generate with the sampler backend: sampling the
training responses, greedy evaluation, and sampled evaluation (maj@n, pass@k). A part of
:class:`east.stages.driver.Stages` (which holds the cache, the backend and ``_generate``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from east.cache import StageResult, write_json, write_jsonl
from east.config import Config, SamplingParams
from east.data import Problem
from east.models import model_path
from east.prompts import Prompts, build_prompts
from east.samplers.base import Sampler, sample_seed
from east.stages import launch
from east.stages.driver_common import problems_digest, round_label, warn_timeouts
from east.weighting import canonical, get_mapping


class GenerationStages:
    """``sample``, ``evaluate`` and ``evaluate_sampled``, and the prompts they tokenize."""

    # Set by Stages (these methods call its _stage, _generate and _grade): a part, not usable alone.
    c: Config
    sampler: Sampler
    _prompt_cache: dict[tuple[str, str], Prompts]

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


def evaluation_batch_invariant(sampler: Sampler) -> bool:
    """Whether greedy evaluation runs batch-invariant: with a backend that can
    (``batch_invariant_mode``: vLLM) on CUDA. Phase A evaluates the base model on all
    of a node's GPUs, phase B the trained model on one; without it a response depends on the
    batch it ran in, and trained - base would carry batching noise on top of training's effect.
    Not on a CPU: vLLM's CPU attention has no batch-invariant mode (its backend does not
    declare ``supports_batch_invariance``), and a CPU's batches are the same either way here
    (tests/engines: two engines write what one writes)."""
    return sampler.batch_invariant_mode and launch.cuda_available()

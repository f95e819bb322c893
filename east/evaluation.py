"""Greedy-decoding accuracy on a test set, graded by equivalence."""

from __future__ import annotations

from typing import Any

from east.data import Problem
from east.grading import grade_questions
from east.sampling import Sampler, SamplingParams


def evaluate(
    sampler: Sampler,
    model_path: str,
    prompts: list[list[int]],
    problems: list[Problem],
    *,
    max_new_tokens: int,
    processes: int = 1,
    fallback: str = "last_number",
    timeout_s: float = 1.0,
    store: Any = None,
) -> dict[str, Any]:
    """Greedy-decode every prompt (token ids) once; return accuracy, count and per-question
    records. ``fallback``: the extraction policy for responses that box nothing."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    outputs = sampler.generate(model_path, prompts, [[0]] * len(prompts), params)
    grades = grade_questions([(out, p.gold) for out, p in zip(outputs, problems)], processes=processes,
                             fallback=fallback, timeout_s=timeout_s, store=store)  # fmt: skip
    records = [
        {"id": p.id, "gold": p.gold, "answer": g.answers[0], "boxed": g.boxed[0], "correct": g.correct[0],
         "response": out[0]}
        for p, out, g in zip(problems, outputs, grades)
    ]  # fmt: skip
    correct = sum(r["correct"] for r in records)
    unboxed = sum(1 for r in records if r["answer"] is not None and not r["boxed"])
    return {"accuracy": correct / len(records) if records else 0.0, "n": len(records), "records": records,
            "fallback": fallback, "answers_not_boxed": unboxed,
            "grading_timeouts": sum(g.timeouts for g in grades)}  # fmt: skip

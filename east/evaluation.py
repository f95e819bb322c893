"""Greedy-decoding accuracy on a test set, graded by equivalence."""

from __future__ import annotations

from typing import Any

from east.answers import grade_questions
from east.data import Problem
from east.sampling import Sampler, SamplingParams


def evaluate(
    sampler: Sampler,
    model_path: str,
    prompts: list[str],
    problems: list[Problem],
    *,
    max_new_tokens: int,
    processes: int = 1,
) -> dict[str, Any]:
    """Greedy-decode every prompt once; return accuracy, count and per-question records."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    outputs = sampler.generate(model_path, prompts, [[0]] * len(prompts), params)
    grades = grade_questions([(out, p.gold) for out, p in zip(outputs, problems)], processes=processes)
    records = [
        {"id": p.id, "gold": p.gold, "answer": g.answers[0], "correct": g.correct[0], "response": out[0]}
        for p, out, g in zip(problems, outputs, grades)
    ]
    correct = sum(r["correct"] for r in records)
    return {"accuracy": correct / len(records) if records else 0.0, "n": len(records), "records": records}

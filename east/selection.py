"""Filtering graded questions and building SFT / DPO / KTO training records (each objective's
module in east.objectives names its builder).

Pure Python. Every random choice is a pure function of ``(seed, question id, purpose)``,
so the records do not depend on question order or on how many processes built them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the sampler imports derive_seed without math-verify
    from east.grading import QuestionGrade

__all__ = [
    "FILTER_RULES",
    "FilterConfig",
    "GradedQuestion",
    "build_dpo",
    "build_kto",
    "build_sft",
    "derive_seed",
    "filter_questions",
]


@dataclass(frozen=True)
class GradedQuestion:
    """One training question with its sampled responses and their grade."""

    question_id: str
    prompt: Any  # what the trainer's prompt column gets (text or chat messages)
    responses: list[str]
    grade: QuestionGrade

    def __post_init__(self) -> None:
        if len(self.responses) != self.grade.n:
            raise ValueError(
                f"question {self.question_id!r}: {len(self.responses)} responses but a grade "
                f"for {self.grade.n}"
            )


@dataclass
class FilterConfig:
    """``filters``: which questions are kept for training (all-incorrect ones are always
    dropped)."""

    drop_all_correct: bool = True  # H = 0 questions; the reference drops them for every method
    require_boxed_correct: bool = True  # at least one correct answer inside \boxed{}
    require_boxed_incorrect: bool = True  # at least one incorrect answer inside \boxed{}


#: Rule names in the order they are applied; a dropped question counts under its first rule.
FILTER_RULES = ("all_incorrect", "all_correct", "no_boxed_correct", "no_boxed_incorrect")


def filter_questions(
    questions: Sequence[GradedQuestion], config: FilterConfig | None = None
) -> tuple[list[GradedQuestion], dict[str, int]]:
    """Keep the questions EAST trains on; return them and the count dropped by each rule."""
    config = config or FilterConfig()
    dropped = dict.fromkeys(FILTER_RULES, 0)
    kept = []
    for q in questions:
        g = q.grade
        if not any(g.correct):
            dropped["all_incorrect"] += 1
        elif config.drop_all_correct and all(g.correct):
            dropped["all_correct"] += 1
        elif config.require_boxed_correct and not any(c and b for c, b in zip(g.correct, g.boxed)):
            dropped["no_boxed_correct"] += 1
        elif config.require_boxed_incorrect and not any((not c) and b for c, b in zip(g.correct, g.boxed)):
            dropped["no_boxed_incorrect"] += 1
        else:
            kept.append(q)
    return kept, dropped


#: The switch that turns each rule off; all-incorrect questions are the method's and have none.
FILTER_SWITCHES = {
    "all_correct": "filters.drop_all_correct=false",
    "no_boxed_correct": "filters.require_boxed_correct=false",
    "no_boxed_incorrect": "filters.require_boxed_incorrect=false",
}

#: What the embedded tiny model can answer: the arith task's phrasing (east/data/arith.py).
TINY_FORMAT = (
    '{"question": "Cal has 8 cups. Cal gets 2 more. Cal finds 9 more. How many cups does Cal have now?", '
    '"answer": "8+2=10. 10+9=19.\\n#### 19"}'
)


def nothing_survived(dropped: dict[str, int], n: int, tiny_model: bool, embedded_task: bool = False) -> str:
    """Why no training question survived the filters, in the user's terms: how many each
    rule dropped, and only switches that exist for the rules that dropped them.
    ``tiny_model``: the embedded tiny model; ``embedded_task``: on the arith task itself."""
    counts = ", ".join(f"{rule} {count}" for rule, count in dropped.items() if count)
    total = sum(dropped.values())
    lines = [f"no training question survived the filters ({total} dropped: {counts})"]
    if dropped.get("all_incorrect") == total:
        lines.append(
            f"the model answered none of the {total} questions correctly in {n} tries; EAST learns only "
            "from questions it sometimes gets right, so this rule has no switch"
        )
        if tiny_model and embedded_task:
            lines.append(
                "warm the tiny model up longer (model.tiny.warmup_steps) or sample more (sampling.n)"
            )
        elif tiny_model:
            lines.append(
                "the default tiny model is warmed up on the embedded arithmetic task and answers only "
                f"questions phrased like it (a row of that task: {TINY_FORMAT}); for your own data use "
                "a real model (model=llama-3.2-1b model.path=...; README: Your own data)"
            )
        else:
            lines.append("sample more responses (sampling.n) or use a stronger model")
    else:
        switches = [FILTER_SWITCHES[rule] for rule in FILTER_SWITCHES if dropped.get(rule)]
        lines.append(
            "sample more responses (sampling.n)"
            + (f", or turn off the rules that dropped them: {' '.join(switches)}" if switches else "")
        )
    return "; ".join(lines)


def derive_seed(*parts: Any) -> int:
    """A 64-bit seed that is a pure function of its parts (stable across processes/runs)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(seed: int, question_id: str, purpose: str) -> random.Random:
    return random.Random(derive_seed(seed, question_id, purpose))


def _stats(q: GradedQuestion, weight: float) -> dict[str, Any]:
    g = q.grade
    return {
        "question_id": q.question_id,
        "entropy": g.entropy,
        "accuracy": g.accuracy,
        "rejected_share": g.rejected_share,
        "weight": float(weight),
    }


def _correct_indices(g: QuestionGrade) -> list[int]:
    # Prefer boxed correct responses: they teach the answer format the grader reads.
    boxed = [i for i in range(g.n) if g.correct[i] and g.boxed[i]]
    return boxed or [i for i in range(g.n) if g.correct[i]]


def _rejected_indices(g: QuestionGrade) -> list[int]:
    """Responses of the most frequent incorrect answer cluster (or, lacking one, any wrong)."""
    if g.top_incorrect_cluster is not None:
        return [i for i in range(g.n) if g.cluster_ids[i] == g.top_incorrect_cluster]
    return [i for i in range(g.n) if not g.correct[i]]


def _check(questions: Sequence[GradedQuestion], weights: Sequence[float]) -> None:
    if len(questions) != len(weights):
        raise ValueError(f"{len(questions)} questions but {len(weights)} weights")


def build_sft(
    questions: Sequence[GradedQuestion], weights: Sequence[float], *, seed: int, k: int = 1
) -> list[dict[str, Any]]:
    """One record per kept question and chosen correct response (``k`` distinct ones at most)."""
    _check(questions, weights)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    records = []
    for q, w in zip(questions, weights):
        pool = _correct_indices(q.grade)
        if not pool:
            raise ValueError(f"question {q.question_id!r} has no correct response; filter first")
        picks = _rng(seed, q.question_id, "sft").sample(pool, min(k, len(pool)))
        for i in picks:
            records.append({"prompt": q.prompt, "completion": q.responses[i], **_stats(q, w)})
    return records


def build_dpo(
    questions: Sequence[GradedQuestion], weights: Sequence[float], *, seed: int
) -> list[dict[str, Any]]:
    """Chosen = a random correct response; rejected = a random response of the most frequent
    incorrect answer cluster."""
    _check(questions, weights)
    records = []
    for q, w in zip(questions, weights):
        good, bad = _correct_indices(q.grade), _rejected_indices(q.grade)
        if not good or not bad:
            raise ValueError(
                f"question {q.question_id!r} needs a correct and an incorrect response; filter first"
            )
        rng = _rng(seed, q.question_id, "dpo")
        records.append(
            {
                "prompt": q.prompt,
                "chosen": q.responses[rng.choice(good)],
                "rejected": q.responses[rng.choice(bad)],
                **_stats(q, w),
            }
        )
    return records


def build_kto(
    questions: Sequence[GradedQuestion], weights: Sequence[float], *, seed: int
) -> list[dict[str, Any]]:
    """The DPO pair, unpaired: chosen as desirable, rejected as undesirable, both carrying
    the question's weight."""
    records = []
    for pair in build_dpo(questions, weights, seed=seed):
        stats = {k: v for k, v in pair.items() if k not in ("prompt", "chosen", "rejected")}
        records.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True, **stats})
        records.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False, **stats})
    return records

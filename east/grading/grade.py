"""Grading one question's n responses: extract, cluster by equivalence, grade against
the gold answer, and summarise (entropy, accuracy, rejected share) in a
:class:`QuestionGrade`. :func:`east.grading.pool.grade_questions` grades many in supervised
worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from east.grading import equivalence as _eq
from east.grading.equivalence import (
    DEFAULT_TIMEOUT_S,
    _equal_parsed,
    _Parsed,
    _parsed,
    _timed_out,
    answers_equal,
)
from east.grading.extract import Fallback, extract_answer_with_source, normalize_answer
from east.weighting import entropy

__all__ = ["GradingMode", "QuestionGrade", "cluster_answers", "grade_question"]


class GradingMode(StrEnum):
    """How answers are clustered: ``equivalence`` (math-verify) or ``string`` (the reference
    implementation's exact normalised strings)."""

    equivalence = "equivalence"
    string = "string"


def as_choice(enum: Any, value: Any, what: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ValueError(f"unknown {what} {value!r}; allowed: {allowed}") from None


def cluster_answers(
    answers: Sequence[str | None],
    mode: GradingMode | str = "equivalence",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[int]:
    """Cluster ids (0, 1, ... in order of first appearance) for a list of answers.

    ``equivalence``: answers share an id when :func:`answers_equal` holds with the
    cluster's first member. ``string``: identical normalised strings share an id (the
    reference implementation's behaviour). All ``None`` answers share one cluster.
    Each distinct string is parsed and compared once.
    """
    mode = as_choice(GradingMode, mode, "cluster mode")
    by_norm: dict[str, int] = {}
    representatives: list[_Parsed | None] = []  # cluster id -> first member (None = no answer)
    none_cluster: int | None = None
    ids: list[int] = []
    for answer in answers:
        if answer is None:
            if none_cluster is None:
                none_cluster = len(representatives)
                representatives.append(None)
            ids.append(none_cluster)
            continue
        norm = normalize_answer(answer)
        if norm in by_norm:
            ids.append(by_norm[norm])
            continue
        cid = None
        if mode == "equivalence":
            p = _parsed(norm)
            for k, rep in enumerate(representatives):
                if rep is not None and _equal_parsed(rep, p, timeout_s):
                    cid = k
                    break
        if cid is None:
            cid = len(representatives)
            representatives.append(_parsed(norm))
        by_norm[norm] = cid
        ids.append(cid)
    return ids


# --------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class QuestionGrade:
    """Everything EAST needs to know about one question's n sampled responses."""

    answers: list[str | None]  # extracted final answer per response
    boxed: list[bool]  # the answer came from \boxed{} / \fbox{}
    correct: list[bool]  # equivalent to the gold answer
    cluster_ids: list[int]  # per response, 0.. in order of first appearance
    cluster_sizes: list[int]  # per cluster id
    cluster_correct: list[bool]  # per cluster id
    no_answer_cluster: int | None  # the id of the "no answer" cluster, if any
    entropy: float  # H of the cluster distribution, bits
    accuracy: float  # A: share of correct responses
    rejected_share: float  # R: share of the most frequent incorrect (answered) cluster
    top_incorrect_cluster: int | None  # the cluster R refers to
    # Responses whose grading a time or size bound cut (compared by string only from there).
    timeouts: int = 0

    @property
    def n(self) -> int:
        return len(self.answers)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def grade_question(
    responses: Sequence[str],
    gold: str,
    *,
    mode: GradingMode | str = "equivalence",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fallback: Fallback = "none",
) -> QuestionGrade:
    """Extract, cluster and grade the n responses of one question against its gold answer.

    ``fallback`` is the extraction policy for responses that state no final answer (see
    :data:`FALLBACKS`); an answer found by it is not ``boxed``.
    """
    if isinstance(responses, str):
        raise TypeError("responses must be a sequence of strings, not one string")
    if len(responses) == 0:
        raise ValueError("grade_question needs at least one response (got an empty list)")
    if gold is None or not str(gold).strip():
        raise ValueError("grade_question needs a non-empty gold answer")
    extracted = [extract_answer_with_source(r, fallback) for r in responses]
    answers = [a for a, _ in extracted]
    boxed = [src == "boxed" for _, src in extracted]
    ids = cluster_answers(answers, mode, timeout_s=timeout_s)
    k = max(ids) + 1
    sizes = [0] * k
    first_member: list[int] = [-1] * k
    for i, cid in enumerate(ids):
        sizes[cid] += 1
        if first_member[cid] < 0:
            first_member[cid] = i
    no_answer = next((c for c in range(k) if answers[first_member[c]] is None), None)
    if mode == "equivalence":
        cluster_correct = [
            c != no_answer and answers_equal(gold, answers[first_member[c]], timeout_s=timeout_s)
            for c in range(k)
        ]
        correct = [cluster_correct[c] for c in ids]
    else:  # string clusters are graded per response: "0.5" and "1/2" are both right
        correct = [a is not None and answers_equal(gold, a, timeout_s=timeout_s) for a in answers]
        cluster_correct = [correct[first_member[c]] for c in range(k)]
    n = len(responses)
    timeouts = _count_cut(answers, ids, first_member, gold, mode)
    wrong = [c for c in range(k) if not cluster_correct[c] and c != no_answer]
    top_wrong = max(wrong, key=lambda c: (sizes[c], -c)) if wrong else None
    return QuestionGrade(
        answers=answers,
        boxed=boxed,
        correct=correct,
        cluster_ids=ids,
        cluster_sizes=sizes,
        cluster_correct=cluster_correct,
        no_answer_cluster=no_answer,
        entropy=entropy(sizes),
        accuracy=sum(correct) / n,
        rejected_share=(sizes[top_wrong] / n) if top_wrong is not None else 0.0,
        top_incorrect_cluster=top_wrong,
        timeouts=timeouts,
    )


def _count_cut(
    answers: list[str | None], ids: list[int], first_member: list[int], gold: str, mode: str
) -> int:
    """How many responses a time or size bound may have misgraded: their parse, the gold's,
    their cluster's comparison with the gold, or their comparison with a cluster was cut."""
    if not (_eq._CUT_PARSES or _eq._CUT_PAIRS):
        return 0
    g = normalize_answer(gold)
    norms = [None if a is None else normalize_answer(a) for a in answers]
    reps = [norms[i] for i in first_member]
    count = 0
    for norm, cid in zip(norms, ids):
        if norm is None or norm == g:
            continue
        rep = reps[cid]
        with_gold = _timed_out(g, norm) or (rep is not None and _timed_out(g, rep))
        with_clusters = mode == "equivalence" and any(
            r is not None and frozenset((norm, r)) in _eq._CUT_PAIRS for r in reps
        )
        count += with_gold or with_clusters
    return count

"""Sampled-evaluation metrics (pure): unbiased pass@k and majority-vote accuracy."""

from __future__ import annotations

from math import comb

from east.grading import QuestionGrade


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per question, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(grade: QuestionGrade) -> bool:
    """Whether the most frequent answer (ties: the first seen; "no answer" never wins) is correct."""
    sizes = [(size, -cid) for cid, size in enumerate(grade.cluster_sizes) if cid != grade.no_answer_cluster]
    if not sizes:
        return False
    _, neg_cid = max(sizes)
    return grade.cluster_correct[-neg_cid]

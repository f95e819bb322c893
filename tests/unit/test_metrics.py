"""pass@k and majority vote (no torch)."""

from itertools import combinations

import pytest

from east.grading import grade_question
from east.metrics import majority_correct, pass_at_k


@pytest.mark.parametrize(("n", "c"), [(4, 0), (4, 1), (4, 2), (6, 3), (5, 5)])
def test_pass_at_k_is_the_exact_subset_probability(n, c):
    outcomes = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_rejects_impossible_requests():
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote():
    assert majority_correct(grade_question([r"\boxed{2}", r"\boxed{2}", r"\boxed{3}"], "2"))
    assert not majority_correct(grade_question([r"\boxed{2}", r"\boxed{3}", r"\boxed{3}"], "2"))
    assert not majority_correct(grade_question(["none", "none", r"\boxed{3}"], "2"))  # no-answer never wins
    assert majority_correct(grade_question(["none", "none", r"\boxed{2}"], "2"))
    assert majority_correct(grade_question([r"\boxed{2}", r"\boxed{3}"], "2"))  # tie: first seen

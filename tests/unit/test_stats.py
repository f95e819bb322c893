"""The paired statistics behind the table's Δ columns: coverage at the nominal rate on
simulated rows, a zero-width interval for identical rows, calibrated p-values."""

from __future__ import annotations

import numpy as np
import pytest

from east.stats import paired_comparison


def _simulate(rng, questions=300, seeds=3, effect=0.1):
    """Rows A and B over shared test questions: question q has difficulty p_q ~ Beta(2, 2);
    B answers it with probability p_q, A with p_q + effect·(1 - p_q); within a seed both rows
    read the same uniform draw (their answers come from the same samples, so they agree
    mostly). The true Δ over the population of questions is 100·effect·E[1 - p] = 50·effect."""
    p = rng.beta(2, 2, size=questions)
    u = rng.random((seeds, questions))
    b = u < p
    a = u < p + effect * (1 - p)
    return a, b, 50.0 * effect


@pytest.mark.parametrize("effect", [0.0, 0.1])
def test_the_95_percent_interval_covers_the_true_difference_at_its_rate(effect):
    rng = np.random.default_rng(12345)
    covered = 0
    for i in range(100):
        a, b, true = _simulate(rng, effect=effect)
        result = paired_comparison(a, b, resamples=2000, permutations=2000, seed=i)
        covered += result.low <= true <= result.high
    assert covered >= 93, f"{covered} of 100 intervals cover the true difference"


def test_p_values_reject_a_true_null_at_about_their_level():
    rng = np.random.default_rng(7)
    rejections = sum(
        paired_comparison(*_simulate(rng, effect=0.0)[:2], resamples=200, permutations=2000, seed=i).p_value
        < 0.05
        for i in range(100)
    )
    assert rejections <= 10


def test_identical_rows_give_zero_with_a_zero_width_interval():
    rng = np.random.default_rng(0)
    a = rng.random((3, 500)) < 0.4
    result = paired_comparison(a, a.copy())
    assert (result.delta, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (result.seeds, result.questions) == (3, 500)


def test_a_large_effect_is_found_and_its_interval_excludes_zero():
    a, b, true = _simulate(np.random.default_rng(1), questions=1000, effect=0.3)
    result = paired_comparison(a, b)
    assert result.low > 0 and result.p_value < 0.001
    assert result.low <= result.delta <= result.high
    assert result.delta == pytest.approx(100 * (a.mean() - b.mean()))


def test_the_exact_test_enumerates_small_cases():
    # 5 questions, A right and B wrong on every one: 2 of 32 sign patterns are as extreme.
    a, b = np.ones((1, 5)), np.zeros((1, 5))
    assert paired_comparison(a, b).p_value == pytest.approx(2 / 32)
    # One seed as a 1-D row works too.
    assert paired_comparison([1, 0, 1], [0, 0, 1]).delta == pytest.approx(100 / 3)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.ones((2, 3)), np.ones((3, 3)), "same \\(seeds, questions\\) shape"),
        (np.ones((1, 0)), np.ones((1, 0)), "at least one question"),
        (np.full((1, 2), 0.5), np.ones((1, 2)), "correctness values 0/1"),
    ],
)
def test_bad_rows_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(a, b)


def test_a_tiny_p_value_is_printed_as_a_bound_and_stored_whole(tmp_path):
    """The default's gain has p near 1e-5: the summary printed "p=0" (results.json rounded it
    to 4 decimals). Now results.json keeps it and every printout says "<0.001"."""
    from east.results import add_paired, summary_text
    from east.stats import format_p

    assert (format_p(0.0143), format_p(1.0), format_p(0.001), format_p(1e-5)) == (
        "=0.014",
        "=1",
        "=0.001",
        "<0.001",
    )

    import json
    from types import SimpleNamespace

    stages = {}  # each evaluation stage's folder, as add_paired reads it
    for which, right in (("base", 300), ("trained", 700)):
        d = tmp_path / which
        d.mkdir()
        rows = [{"id": f"q{i}", "correct": i < right} for i in range(1000)]
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        stages[("arith", which)] = SimpleNamespace(path=d)
    evals = {"arith": {"base": 0.3, "trained": 0.7, "n": 1000}}
    add_paired(evals, stages)
    p = evals["arith"]["delta"]["p_value"]
    assert 0 < p < 0.001
    run = {
        "objective": "sft",
        "mapping": "power",
        "sharpness": 1.0,
        "seed": 0,
        "model": "tiny",
        "dataset": "arith",
    }
    text = summary_text({"run": run, "data": {"kept": 0}, "seconds": 1.0, "eval": evals})
    assert "+40.0 [" in text and "p<0.001" in text

"""Filter rules with counts and the SFT / DPO / KTO record builders (no torch)."""

from __future__ import annotations

import pytest

from east.grading import grade_question
from east.objectives import get_objective
from east.selection import (
    FilterConfig,
    GradedQuestion,
    build_dpo,
    build_kto,
    build_sft,
    filter_questions,
)


def _q(qid, responses, gold="4"):
    return GradedQuestion(qid, f"question {qid}", list(responses), grade_question(responses, gold))


MIXED = [r"\boxed{4}", r"\boxed{5}", r"\boxed{5}", r"\boxed{6}", r"ok \boxed{4}", r"\boxed{5}"]


def _questions():
    return [
        _q("mixed", MIXED),
        _q("all_wrong", [r"\boxed{1}", r"\boxed{2}"]),
        _q("all_right", [r"\boxed{4}", r"\boxed{4}"]),
        _q("unboxed_right", ["#### 4", r"\boxed{5}"]),
        _q("unboxed_wrong", [r"\boxed{4}", "#### 5"]),
        _q("no_answer_wrong", [r"\boxed{4}", "no idea"]),
    ]


def test_filter_counts_each_rule():
    kept, dropped = filter_questions(_questions())
    assert [q.question_id for q in kept] == ["mixed"]
    assert dropped == {
        "all_incorrect": 1,
        "all_correct": 1,
        "no_boxed_correct": 1,
        "no_boxed_incorrect": 2,
    }


def test_filter_switches():
    cfg = FilterConfig(drop_all_correct=False, require_boxed_correct=False, require_boxed_incorrect=False)
    kept, dropped = filter_questions(_questions(), cfg)
    assert len(kept) == 5 and dropped["all_incorrect"] == 1 and sum(dropped.values()) == 1


def test_sft_picks_a_correct_response_deterministically():
    q = _q("mixed", MIXED)
    recs = build_sft([q], [1.5], seed=0)
    assert len(recs) == 1 and recs[0]["completion"] in (MIXED[0], MIXED[4])
    assert recs[0]["weight"] == 1.5 and recs[0]["question_id"] == "mixed"
    assert recs[0]["entropy"] == q.grade.entropy
    assert build_sft([q], [1.5], seed=0) == recs
    two = build_sft([q], [1.0], seed=0, k=3)
    assert sorted(r["completion"] for r in two) == sorted([MIXED[0], MIXED[4]])


def test_randomness_does_not_depend_on_order():
    qs = [_q(f"q{i}", MIXED) for i in range(20)]
    w = [1.0] * 20
    forward = {r["question_id"]: r for r in build_dpo(qs, w, seed=3)}
    backward = {r["question_id"]: r for r in build_dpo(qs[::-1], w, seed=3)}
    assert forward == backward
    other_seed = {r["question_id"]: r["chosen"] for r in build_dpo(qs, w, seed=4)}
    assert len({r["chosen"] for r in forward.values()}) == 2  # both correct responses get used
    assert other_seed != {k: r["chosen"] for k, r in forward.items()}


def test_dpo_rejected_comes_from_most_frequent_wrong_cluster():
    q = _q("mixed", MIXED)
    for seed in range(10):
        (rec,) = build_dpo([q], [1.0], seed=seed)
        assert rec["rejected"] == r"\boxed{5}"
        assert rec["chosen"] in (MIXED[0], MIXED[4])


def test_kto_is_the_pair_unpaired_with_the_same_weight():
    q = _q("mixed", MIXED)
    (pair,) = build_dpo([q], [0.7], seed=1)
    good, bad = build_kto([q], [0.7], seed=1)
    assert (good["completion"], good["label"], good["weight"]) == (pair["chosen"], True, 0.7)
    assert (bad["completion"], bad["label"], bad["weight"]) == (pair["rejected"], False, 0.7)


def test_builders_reject_bad_input():
    q = _q("mixed", MIXED)
    with pytest.raises(ValueError, match="1 questions but 2 weights"):
        build_sft([q], [1.0, 1.0], seed=0)
    with pytest.raises(ValueError, match="no correct response"):
        build_sft([_q("w", [r"\boxed{1}"])], [1.0], seed=0)
    with pytest.raises(ValueError, match="unknown objective 'ppo'.*registered: sft, dpo, kto"):
        get_objective("ppo")
    with pytest.raises(ValueError, match="2 responses but a grade for 6"):
        GradedQuestion("x", "p", ["a", "b"], q.grade)


def test_nothing_survived_names_only_switches_that_exist():
    import json

    from east.data.arith import ArithConfig, generate
    from east.selection import FILTER_SWITCHES, TINY_FORMAT, nothing_survived

    # Every question all-incorrect: the method's rule, no switch; the tiny model's format shown.
    line = nothing_survived({"all_incorrect": 42, "all_correct": 0}, 8, tiny_model=True)
    assert "none of the 42 questions correctly in 8 tries" in line and "no switch" in line
    assert TINY_FORMAT in line and "model.path" in line and "filters." not in line
    assert "relax" not in line
    line = nothing_survived({"all_incorrect": 42}, 8, tiny_model=False)
    assert "sampling.n" in line and "tiny" not in line
    line = nothing_survived({"all_incorrect": 42}, 8, tiny_model=True, embedded_task=True)
    assert "model.tiny.warmup_steps" in line and TINY_FORMAT not in line
    # Other rules: exactly the switches of the rules that dropped questions.
    line = nothing_survived({"all_incorrect": 3, "all_correct": 5, "no_boxed_incorrect": 2}, 8, False)
    assert FILTER_SWITCHES["all_correct"] in line and FILTER_SWITCHES["no_boxed_incorrect"] in line
    assert FILTER_SWITCHES["no_boxed_correct"] not in line
    # Each switch is a real config key.
    from east.selection import FilterConfig

    assert {s.split("=")[0].split(".")[1] for s in FILTER_SWITCHES.values()} <= set(
        FilterConfig.__dataclass_fields__
    )
    # The row shown is a row of the embedded task: its phrasing, its solution format.
    row = json.loads(TINY_FORMAT)
    problems = generate(ArithConfig(train_size=3, test_size=3, warmup_size=3))["train"]
    assert (row["question"], row["answer"]) == (problems[0].question, problems[0].solution)

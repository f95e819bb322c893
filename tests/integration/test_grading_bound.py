"""The grading time bound holds whatever sympy does, and every cut is counted.

Three layers: ``SIGALRM`` stops Python code inside math-verify (which catches
``Exception``, so the timeout must not be one); the magnitude guard refuses sums,
products, binomials and towers before sympy evaluates them; and the supervisor kills a
worker stuck where no signal lands (simulated here by blocking ``SIGALRM``).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from east.grading import answers_equal, extract_answer, grade_question, grade_questions
from east.grading import equivalence as A
from east.grading import pool as grading_pool


@pytest.fixture(autouse=True)
def _fresh_timeouts():
    A.forget_timeouts()
    yield
    A.forget_timeouts()


def test_a_timeout_inside_math_verify_is_not_swallowed():
    a, b = "(x+1)^{90}(x-1)^{90}", "(x^{2}-1)^{90}"
    A._parsed.cache_clear()
    start = time.perf_counter()
    assert answers_equal(a, b, timeout_s=0.001) is False  # cut, and it says so below
    assert time.perf_counter() - start < 5
    assert A._timed_out(A.normalize_answer(a), A.normalize_answer(b))
    g = grade_question([rf"\boxed{{{b}}}", r"\boxed{7}"], a, timeout_s=0.001)
    assert g.timeouts == 2  # both answers were compared with a gold that never parsed
    A.forget_timeouts()
    A._parsed.cache_clear()
    assert answers_equal(a, b, timeout_s=5.0) is True  # with time, it is equal


@pytest.mark.parametrize(
    "answer",
    [
        r"\binom{10^{9}}{5 \cdot 10^{8}}",
        r"\sum_{n=1}^{10^{12}} n^{n}",
        r"\prod_{n=1}^{10^{9}} n",
        r"9^{9^{9^{9}}}",
        r"(10^{9})!",
    ],
)
def test_the_magnitude_guard_refuses_what_sympy_would_evaluate_for_ever(answer):
    start = time.perf_counter()
    assert answers_equal(answer, "1", timeout_s=1.0) is False
    assert time.perf_counter() - start < 5
    assert A.normalize_answer(answer) in A._CUT_PARSES  # refused, and counted as cut


def test_small_sums_products_and_binomials_still_compare():
    assert answers_equal(r"\binom{10}{3}", "120")
    assert answers_equal(r"\sum_{k=1}^{10} k^2", "385")
    assert answers_equal(r"\prod_{k=1}^{5} k", "120")
    assert not A._CUT_PARSES


def test_a_plain_number_is_never_struck_out_by_slow_partners():
    for hard in (r"\binom{10^{9}}{5 \cdot 10^{8}}", r"\prod_{n=1}^{10^{9}} n", r"\sum_{n=1}^{10^{12}} n^{n}"):
        A._cut_pair(A._parsed(A.normalize_answer(hard)), A._parsed("1"))
    assert "1" not in A._CUT_PARSES
    assert answers_equal("1", "1.0")


@pytest.mark.parametrize("depth", [10_000])
def test_extraction_is_linear_in_nesting_depth(depth):
    cases = {
        "nested": "\\boxed{" * depth + "1" + "}" * depth,
        "nested, unclosed": "\\boxed{" * depth + "1",
        "nested with tails": "\\boxed{" * depth + "1" + "}x" * depth,
        "many boxes": "\\boxed{1} " * (10 * depth),
        "many brace-less boxes": "\\boxed 1 " * (10 * depth),
    }
    for name, text in cases.items():
        start = time.perf_counter()
        extract_answer(text, "last_number")
        assert time.perf_counter() - start < 2.0, name  # the quadratic version took 50 s
    assert extract_answer("\\boxed{" * depth + "7" + "}" * depth) == "7"
    assert extract_answer(r"\boxed{\boxed{5}\text{ cm}}") == "5"
    assert extract_answer(r"\boxed{\boxed{5}\boxed{6}}") == r"\boxed{5}\boxed{6}"


MB = 1_000_000
ADVERSARIAL = {
    "tower": r"9^{9^{9^{9^{9}}}}",
    "power tower of 2": r"2^{2^{2^{2^{2^{2}}}}}",
    "factorial": r"(10^{9})!",
    "double factorial": r"(10^{8})!!",
    "sum": r"\sum_{n=1}^{10^{12}} n^{n}",
    "product": r"\prod_{n=1}^{10^{9}} n",
    "binomial": r"\binom{10^{9}}{5 \cdot 10^{8}}",
    "slow polynomial": r"(x+1)^{90}(x-1)^{90}",
    "huge literal": "9" * 399,
    "huge literal, 1 MB": "9" * MB,
    "deep parentheses": "(" * 190 + "1" + ")" * 190,
    "deep fractions": r"\frac{1}{" * 40 + "2" + "}" * 40,
    "1 MB of LaTeX": r"x^{2}+\frac{1}{2}" * (MB // 16),
    "python injection": "__import__('os').system('touch EAST_PWNED')",
    "sql injection": "'); DROP TABLE parses; --",
    "latex input": r"\input{/etc/passwd}",
    "template": "{{7*7}} ${7*7}",
    "control bytes": "1\x00\x07\x1b[2J",
    "unicode": "\u221e \u00bd \U0001d7d9",
}


def test_an_adversarial_corpus_is_graded_within_a_bound_and_every_cut_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    timeout_s = 0.5
    answers = list(ADVERSARIAL.values())
    responses = [rf"\boxed{{{a}}}" for a in answers] + [r"\boxed{42}"]
    items = [(responses, "42"), ([*responses[:-1], r"\boxed{43}"], "42")]
    # Each adversarial answer as the gold too, against an honest and an equal response.
    items += [([rf"\boxed{{{a}}}", r"\boxed{42}"], a) for a in answers if len(a) < 1000]
    grading_pool.close()
    start = time.perf_counter()
    grades = grade_questions(items, timeout_s=timeout_s, processes=2, chunk_size=4, store=tmp_path)
    wall = time.perf_counter() - start
    # Worst case: every distinct answer killed at the hard deadline of the bound and of the
    # retry bound, plus start-up.
    retry = timeout_s * A.RETRY_FACTOR
    assert (
        wall < len(answers) * (grading_pool.hard_deadline(timeout_s) + grading_pool.hard_deadline(retry)) + 30
    )
    assert len(grades) == len(items)
    for (resp, _), g in zip(items, grades):
        assert len(g.correct) == len(resp)  # no answer left ungraded
    first = grades[0]
    assert first.correct[-1] is True and sum(first.correct) == 1  # only 42 is right
    assert grades[1].correct == [False] * len(responses)
    for g in grades[2:]:
        assert g.correct[0] is True  # an answer always equals its own spelling
    # Every answer a bound cut is counted: the towers, sums, products and binomials at least.
    assert first.timeouts >= 7
    assert not (tmp_path / "EAST_PWNED").exists()


def _hanging_serve(conn, since, op, limit, cut_parses, cut_pairs, slow):
    """A worker whose parse of an answer containing HANG blocks SIGALRM and sleeps (C code
    that no signal reaches), and whose parse of DIE kills the process."""
    real_parse = A._mv_parse

    def parse(text, *args, **kwargs):
        if "HANG" in text:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(120)
        if "DIE" in text:
            os._exit(3)
        return real_parse(text, *args, **kwargs)

    A._mv_parse = parse
    grading_pool._serve(conn, since, op, limit, cut_parses, cut_pairs, slow)


def test_the_supervisor_kills_a_worker_stuck_where_no_signal_lands():
    settings = grading_pool.Settings("equivalence", 0.3, "none", None)
    pool = grading_pool.Pool(1, serve=_hanging_serve)
    try:
        items = [
            ([r"\boxed{\sqrt{HANG}}", r"\boxed{\frac{1}{2}}", r"\boxed{0.5}"], "0.5"),
            ([r"\boxed{\sqrt{HANG}}", r"\boxed{\frac{2}{4}}"], r"\frac{1}{2}"),
            ([r"\boxed{\sqrt{DIE}}", r"\boxed{3}"], "3"),
            ([r"\boxed{7}", r"\boxed{\sqrt{HANG}}"], r"\sqrt{HANG}"),
        ]
        start = time.perf_counter()
        grades = pool.grade(items, settings, chunk_size=2)
        # Killed at the bound's hard deadline (1.3 s), retried by a new worker at the retry
        # bound and killed at its (2.4 s): then cut.
        assert time.perf_counter() - start < 30
        assert [g.correct for g in grades] == [
            [False, True, True],
            [False, True],
            [False, True],
            [False, True],
        ]
        # The stuck answer is counted wherever it was compared by string only.
        assert [g.timeouts for g in grades] == [1, 1, 1, 1]
        assert pool.stats.killed == 1  # cut once (after its retry), then remembered by the next worker
        assert ("parse", r"\sqrt{HANG}") in pool.slow
        assert pool.stats.crashed == 1
        assert pool.stats.ops[0] == ("parse", r"\sqrt{HANG}")
    finally:
        pool.close()


def test_an_answer_too_long_to_parse_is_counted_as_cut():
    long = "x+" * (A.MAX_PARSE_CHARS // 2) + "1"
    g = grade_question([rf"\boxed{{{long}}}", r"\boxed{3}"], "3", timeout_s=1.0)
    assert g.correct == [False, True] and g.timeouts == 1


def test_a_damaged_parse_store_is_set_aside_and_rebuilt(tmp_path, caplog):
    """A garbled store file used to kill every grading worker (reported as 'a worker died
    twice ... guard your entry point'): it is now set aside, with one warning, and rebuilt."""
    import logging

    store = A.ParseStore.in_dir(tmp_path)
    store.close()
    store.path.write_bytes(b"this is not a database" * 100)
    grading_pool.close()
    items = [([r"\boxed{\frac{1}{2}}", r"\boxed{3}"], "0.5")]
    grades = grade_questions(items, timeout_s=1.0, store=tmp_path)  # in a worker process
    assert grades[0].correct == [True, False]
    assert len(list(tmp_path.glob("parses-*.sqlite.bad-*"))) == 1  # set aside, not deleted
    grading_pool.close()
    # The same in this process, where the warning can be read.
    store.path.write_bytes(b"damaged again" * 100)
    caplog.set_level(logging.WARNING)
    A.ParseStore.in_dir(tmp_path).close()
    assert "is damaged (file is not a database): set aside as" in caplog.text
    assert len(list(tmp_path.glob("parses-*.sqlite.bad-*"))) == 2


def test_a_cut_is_retried_once_with_a_larger_bound(monkeypatch):
    """An operation the bound cuts is tried once more at RETRY_FACTOR times the bound: one
    slowed the first time only (a load spike) is graded, not cut; one slow every time is cut
    twice and counted."""
    real = A._mv_parse
    seen: dict[str, int] = {}

    def slow_once(text, *args, **kwargs):
        seen[text] = seen.get(text, 0) + 1
        if "SPIKE" in text and seen[text] == 1:
            time.sleep(0.3)  # past the 0.1 s bound, inside the 0.4 s retry
        if "ALWAYS" in text:
            time.sleep(0.6)  # past both
        return real(text, *args, **kwargs)

    monkeypatch.setattr(A, "_mv_parse", slow_once)
    g = grade_question([r"\boxed{\sqrt{SPIKE}}", r"\boxed{3}"], r"\sqrt{SPIKE}", timeout_s=0.1)
    assert g.correct == [True, False] and g.timeouts == 0
    A._parsed.cache_clear()
    g = grade_question([r"\boxed{\sqrt{ALWAYS}}", r"\boxed{3}"], "3", timeout_s=0.1)
    assert g.correct == [False, True] and g.timeouts == 1


def test_a_load_spike_changes_no_grade():
    """Answers that parse in well under the bound on a quiet machine, graded again under a CPU
    hog (2 busy processes a core, in this process's scheduler): the same grades, nothing cut
    twice (a first cut, if load causes one, is retried at RETRY_FACTOR times the bound)."""
    import multiprocessing as mp

    answers = [rf"\frac{{(x+{i})^{{12}}}}{{(x-{i})^{{7}}}} + \sqrt{{x+{i}}}" for i in range(1, 9)]
    items = [([rf"\boxed{{{a}}}", r"\boxed{7}"], a) for a in answers]
    A.configure_math_verify()  # imports, outside any timing
    A._parsed.cache_clear()
    start = time.perf_counter()
    calm = [grade_question(r, g, timeout_s=30.0) for r, g in items]
    quiet = (time.perf_counter() - start) / len(items)  # seconds per question, quiet
    timeout_s = max(0.02, 1.5 * quiet)
    hogs = [
        mp.get_context("fork").Process(target=_spin, daemon=True) for _ in range((os.cpu_count() or 2) * 2)
    ]
    for h in hogs:
        h.start()
    try:
        A._parsed.cache_clear()
        A.forget_timeouts()
        loaded = [grade_question(r, g, timeout_s=timeout_s) for r, g in items]
    finally:
        for h in hogs:
            h.kill()
    assert [g.correct for g in loaded] == [g.correct for g in calm] == [[True, False]] * len(answers)
    assert sum(g.timeouts for g in loaded) == 0


def _spin() -> None:
    while True:
        pass

"""Grading throughput: the project's path vs math-verify on every response.

Builds realistic sampled-response sets from the real GSM8K / MATH files (64 responses per
question, a few distinct answers each, as sampling produces: the gold answer in a couple
of spellings and a few wrong answers, some responses without a final answer) and grades
them two ways on one core:

  naive:   math_verify.parse + math_verify.verify on every response against the gold;
  project: east.grading.grade_questions (distinct strings parsed once, integers compared
           exactly, clusters built once), which also yields clusters and entropy.

Then the project path across processes, and the project path in a sweep: the same
questions graded again with other responses, the on-disk parse store (east.grading.
ParseStore) filled by the first pass and the in-memory cache empty, as in a sweep's next
cell. Prints one JSON line last: ``*_ratio`` is naive / project time, cold;
``*_sweep_ratio`` is naive / project time with the sweep's store.

    python experiments/benchmarks/grading.py [--questions 150] [--warmup-questions 400] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import math_verify

from east import grading as A
from east.grading import pool as grading_pool

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _spellings(gold: str) -> list[str]:
    out = [gold]
    if re.fullmatch(r"-?\d+", gold):
        out += [f"{gold}.0", f"{int(gold):,}"]
    elif "\\frac" in gold:
        out.append(gold.replace("\\frac", "\\dfrac"))
    return out


def _wrong(gold: str, rng: random.Random) -> list[str]:
    """Near misses specific to this question: other numbers, and the gold's shape with a
    digit changed (the two kinds of wrong answer sampling produces most)."""
    if re.fullmatch(r"-?\d+", gold):
        g = int(gold)
        return [str(g + rng.choice([1, 2, 10])), str(g * 2), str(max(g - 3, 0)), str(g + 7)]
    wrong = [str(rng.randint(0, 100)), str(rng.randint(0, 100))]
    digits = list(re.finditer(r"\d", gold))
    for _ in range(2):
        if digits:
            d = rng.choice(digits)
            wrong.append(gold[: d.start()] + str((int(d.group()) + rng.randint(1, 8)) % 10) + gold[d.end() :])
    return wrong


def _response(answer: str | None, rng: random.Random) -> str:
    steps = " ".join(f"Step {i}: we compute {rng.randint(2, 99)} + {rng.randint(2, 99)}." for i in range(3))
    if answer is None:
        return steps + " I am not sure."
    return f"{steps} Therefore the final answer is $\\boxed{{{answer}}}$."


def build_sets(
    dataset: str, questions: int, n: int, seed: int = 0, response_seed: int | None = None
) -> list[tuple[list[str], str]]:
    """``questions`` questions drawn with ``seed``; their responses drawn with
    ``response_seed`` (default: the same seed), so two calls can share questions only."""
    rng = random.Random(seed)
    if dataset == "gsm8k":
        rows = [json.loads(x) for x in open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8")]
        golds = [A.gold_from_gsm8k(r["answer"]) for r in rows]
    else:
        rows = [json.loads(x) for x in open(DATA / "math" / "test500.jsonl", encoding="utf-8")]
        golds = [r["answer"] for r in rows]
    items = []
    chosen = rng.sample(golds, questions)
    if response_seed is not None:
        rng = random.Random(response_seed)
    for gold in chosen:
        right, wrong = _spellings(gold), _wrong(gold, rng)
        p_right = rng.random()
        responses = []
        for _ in range(n):
            u = rng.random()
            if u < 0.05:
                responses.append(_response(None, rng))
            elif u < 0.05 + 0.95 * p_right:
                responses.append(_response(rng.choice(right), rng))
            else:
                responses.append(_response(rng.choice(wrong[: rng.randint(1, len(wrong))]), rng))
        items.append((responses, gold))
    return items


def naive(items) -> int:
    correct = 0
    for responses, gold in items:
        g = math_verify.parse("$" + gold + "$")
        for r in responses:
            correct += bool(math_verify.verify(g, math_verify.parse(r)))
    return correct


def project(items, processes: int = 1, store: str | None = None) -> int:
    grading_pool.clear_caches()  # cold in-memory caches (here and in the grading workers)
    grades = A.grade_questions(items, processes=processes, store=store)
    return sum(sum(g.correct) for g in grades)


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=150)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--warmup-questions", type=int, default=400, help="questions graded first by both paths"
    )
    args = parser.parse_args()
    if not (DATA / "gsm8k" / "test.jsonl").exists():
        sys.exit(f"real datasets not found at {DATA}")
    result: dict[str, float] = {}
    for name in ("gsm8k", "math"):
        # The LaTeX parser (antlr) builds its DFA cache as it meets new inputs, so the first
        # few hundred parses of a process are several times slower than the rest. Real runs
        # grade thousands of questions: warm both paths up on other questions first.
        warm = build_sets(name, args.warmup_questions, args.n, seed=1)
        naive(warm)
        project(warm, 1)
        items = build_sets(name, args.questions, args.n)
        total = sum(len(r) for r, _ in items)
        t_naive, c_naive = timed(naive, items)
        t_proj, c_proj = timed(project, items, 1)
        t_par, c_par = timed(project, items, args.processes)
        # A sweep: an earlier stage (another cell's evaluation, or the sampled-answer
        # grading) graded the same questions with other responses and filled the on-disk
        # parse store; this stage starts with an empty memory cache and reads the store.
        with tempfile.TemporaryDirectory() as store:
            project(build_sets(name, args.questions, args.n, response_seed=1), 1, store)
            t_sweep, c_sweep = timed(project, items, 1, store)
        assert c_sweep == c_proj, (c_sweep, c_proj)
        print(
            f"{name}: {total} responses; naive {t_naive:.2f}s ({c_naive} correct), "
            f"project {t_proj:.2f}s ({c_proj} correct), "
            f"{args.processes} processes {t_par:.2f}s, with a sweep's parse store {t_sweep:.2f}s",
            file=sys.stderr,
        )
        result[f"{name}_naive_responses_per_second"] = round(total / t_naive, 1)
        result[f"{name}_responses_per_second"] = round(total / t_proj, 1)
        result[f"{name}_ratio"] = round(t_naive / t_proj, 2)
        result[f"{name}_sweep_ratio"] = round(t_naive / t_sweep, 2)
        result[f"{name}_responses_per_second_{args.processes}proc"] = round(total / t_par, 1)
        result[f"{name}_correct_agreement"] = round(min(c_naive, c_proj) / max(c_naive, c_proj, 1), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""A synthetic arithmetic word-problem task in GSM8K's format, generated from a seed.

Each problem is a short story with ``steps`` additions / subtractions on numbers up to
``max_number``; its solution is a worked line per step (``8+12=20.``) and a final ``#### N``
line, like GSM8K. Warm-up, self-training and test splits are disjoint by question text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from east.checks import MAX_SEED, check_int, check_real
from east.data.problems import Problem

NAMES = [
    "Ann",
    "Ben",
    "Cal",
    "Dee",
    "Eli",
    "Fay",
    "Gus",
    "Ivy",
    "Jon",
    "Kim",
    "Leo",
    "Mia",
    "Ned",
    "Oli",
    "Pam",
    "Rex",
]
ITEMS = ["apples", "pens", "cards", "coins", "books", "eggs", "shells", "stamps", "cups", "balls"]
GAIN = ["gets {n} more", "buys {n} more", "finds {n} more", "is given {n} more"]
LOSS = ["gives away {n}", "loses {n}", "sells {n}", "eats {n}"]


@dataclass
class ArithConfig:
    """``dataset.arith``: difficulty knobs and split sizes (the config schema and the
    generator's argument)."""

    steps: int = 2  # operations after the starting amount
    max_number: int = 12  # numbers drawn from 1..max_number
    # A slip for self-training to mend (docs/testbed.md, "The default"): of the warm-up's
    # problems about these items, this share of solutions stop one operation short and box
    # that total. Greedy decoding then slips on those items; sampling sometimes does not.
    warmup_slip_items: list[str] = field(default_factory=lambda: ["apples", "pens", "cards", "coins"])
    warmup_short_share: float = 0.6
    warmup_size: int = 4000
    train_size: int = 1000
    test_size: int = 1000
    seed: int = 1234

    def __post_init__(self) -> None:
        check_int("dataset.arith.steps", self.steps, 1, 20)
        check_int("dataset.arith.max_number", self.max_number, 2, 1_000_000)
        check_real("dataset.arith.warmup_short_share", self.warmup_short_share, 0.0, 1.0)
        unknown = sorted(set(self.warmup_slip_items) - set(ITEMS))
        if unknown:
            raise ValueError(
                f"dataset.arith.warmup_slip_items: unknown {unknown}; the task's items are {ITEMS}"
            )
        if self.warmup_short_share and self.steps < 2:
            raise ValueError(
                f"dataset.arith.warmup_short_share={self.warmup_short_share} needs dataset.arith.steps >= 2 "
                f"(got {self.steps}): a solution one operation short must keep a worked line; "
                "with one-step problems set dataset.arith.warmup_short_share=0"
            )
        for name in ("warmup_size", "train_size", "test_size"):
            check_int(f"dataset.arith.{name}", getattr(self, name), 1, 1_000_000)
        check_int("dataset.arith.seed", self.seed, 0, MAX_SEED)


def make_problem(rng: random.Random, spec: ArithConfig) -> tuple[str, str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(1, spec.max_number)
    sentences = [f"{name} has {total} {item}."]
    lines = []
    for _ in range(spec.steps):
        n = rng.randint(1, spec.max_number)
        if total - n >= 0 and rng.random() < 0.5:
            sentences.append(f"{name} {rng.choice(LOSS).format(n=n)}.")
            lines.append(f"{total}-{n}={total - n}.")
            total -= n
        else:
            sentences.append(f"{name} {rng.choice(GAIN).format(n=n)}.")
            lines.append(f"{total}+{n}={total + n}.")
            total += n
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return question, " ".join(lines) + f"\n#### {total}", total


def generate(spec: ArithConfig) -> dict[str, list[Problem]]:
    """``{"warmup": [...], "train": [...], "test": [...]}``, deterministic in ``spec``."""
    rng = random.Random(spec.seed)
    sizes = {"test": spec.test_size, "train": spec.train_size, "warmup": spec.warmup_size}
    wanted = sum(sizes.values())
    seen: set[str] = set()
    problems: list[tuple[str, str, int]] = []
    misses = 0  # draws in a row that gave an already-seen question
    while len(problems) < wanted:
        if misses > 20_000:
            raise ValueError(
                f"arith: only {len(problems)} distinct problems for {wanted} requested; "
                "raise dataset.max_number or dataset.steps, or shrink the splits"
            )
        q, solution, answer = make_problem(rng, spec)
        if q in seen:
            misses += 1
            continue
        misses = 0
        seen.add(q)
        problems.append((q, solution, answer))
    out: dict[str, list[Problem]] = {}
    start = 0
    for split, size in sizes.items():
        out[split] = [
            Problem(id=f"arith-{split}-{i}", question=q, gold=str(a), solution=s)
            for i, (q, s, a) in enumerate(problems[start : start + size])
        ]
        start += size
    if spec.warmup_short_share:
        out["warmup"] = _stop_short(out["warmup"], spec)
    return out


def item_of(question: str) -> str:
    """The item a generated question counts ("Eli has 2 balls. ..." -> "balls")."""
    return question.split(".", 1)[0].rsplit(" ", 1)[1]


def _stop_short(warmup: list[Problem], spec: ArithConfig) -> list[Problem]:
    """Of the warm-up problems about ``warmup_slip_items``, ``round(share * their number)``,
    chosen by their own random stream (the questions stay those of the plain task), whose
    solution drops its last worked line and ends on the line before's total."""
    rng = random.Random(f"{spec.seed}-short")
    about = [i for i, p in enumerate(warmup) if item_of(p.question) in spec.warmup_slip_items]
    chosen = set(rng.sample(about, round(spec.warmup_short_share * len(about))))
    out = []
    for i, p in enumerate(warmup):
        if i in chosen:
            lines = worked_lines(p.solution or "").split(" ")[:-1]
            total = lines[-1].rstrip(".").rpartition("=")[2]
            p = Problem(
                id=p.id, question=p.question, gold=total, solution=" ".join(lines) + f"\n#### {total}"
            )
        out.append(p)
    return out


def worked_lines(text: str) -> str:
    """The worked lines of a solution or response (``8+12=20. 20-12=8.``): its text before
    any ``####`` or "The answer is", with a boxed result unwrapped."""
    for marker in ("####", "The answer is"):
        text = text.split(marker)[0]
    text = re.sub(r"\\boxed\{([^{}]*)\}", r"\1", text)
    return " ".join(text.split())


def chain_is_correct(problem: Problem, response: str) -> bool:
    """Whether a response's worked lines are the problem's derivation, line by line. A
    response can reach the right total through a wrong line (``6+7=14. 14+7=20.``); such a
    "correct" answer is weak evidence of right reasoning."""
    return worked_lines(response) == worked_lines(problem.solution or "")


def count_flawed(problem: Problem, responses: list[str], correct: list[bool]) -> tuple[int, int]:
    """(right answers, right answers whose worked lines are wrong) among a question's graded
    responses: the flawed-chain share of docs/testbed.md."""
    right = [r for r, ok in zip(responses, correct) if ok]
    return len(right), sum(not chain_is_correct(problem, r) for r in right)


def warmup_completion(problem: Problem) -> str:
    """The warm-up target: the worked lines with the last line's result boxed
    (``8+12=20. 20-12=\\boxed{8}.``). The final answer is the derivation's last result, not
    a separate statement a model could fill in without it."""
    work = worked_lines(problem.solution or "")
    head, _, last = work.rstrip(".").rpartition("=")
    return f"{head}=\\boxed{{{last}}}."

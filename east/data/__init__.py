"""Datasets as lists of :class:`Problem`: the embedded ``arith`` task and file/hub loaders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from east.data.arith import ArithConfig, generate
from east.data.loaders import DataError, DatasetConfig, load_problems
from east.data.problems import Problem

__all__ = ["ArithConfig", "DataError", "DatasetConfig", "Problem", "Splits", "load_splits"]

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: list[Problem]
    tests: dict[str, list[Problem]]
    warmup: list[Problem] = field(default_factory=list)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)


def _limit(problems: list[Problem], n: int | None) -> list[Problem]:
    return problems if n is None else problems[:n]


def load_splits(d: DatasetConfig) -> Splits:
    """Build the splits a dataset config describes (see ``conf/dataset/*.yaml``)."""
    if d.arith is not None:
        parts = generate(d.arith)
        return Splits(
            train=_limit(parts["train"], d.max_train),
            tests={"arith": _limit(parts["test"], d.max_test)},
            warmup=parts["warmup"],
        )
    train, skipped = load_problems(d, d.name, d.train_split, limit=d.max_train)
    splits = Splits(train=train, tests={}, skipped={"train": skipped})
    for name in d.test_sets or list(d.tests):
        source, split, hub_split = d.test_source(name)
        splits.tests[name], splits.skipped[name] = load_problems(
            source, name, split, hub_split=hub_split, limit=d.max_test
        )
    _check_overlap(d, splits)
    return splits


def _check_overlap(d: DatasetConfig, splits: Splits) -> None:
    """Test questions that are also training questions measure memory, not learning: a test
    set made only of them (one .jsonl file for every split) is refused unless asked for."""
    seen = {" ".join(p.question.split()) for p in splits.train}
    for name, problems in splits.tests.items():
        shared = sum(" ".join(p.question.split()) in seen for p in problems)
        if not shared:
            continue
        if shared == len(problems) and not d.allow_test_in_train:
            raise DataError(
                f"test set {name!r}: all {shared} of its questions are training questions (dataset.path="
                f"{d.path} is one file for every split?); give a folder with {d.train_split}.jsonl and "
                "test.jsonl, or set dataset.allow_test_in_train=true to evaluate on training questions"
            )
        log.warning(
            "test set %r: %d of %d questions are also training questions", name, shared, len(problems)
        )

"""Datasets as lists of :class:`Problem`: the embedded ``arith`` task and file/hub loaders."""

from __future__ import annotations

from dataclasses import dataclass, field

from east.data.arith import ArithConfig, generate
from east.data.loaders import DataError, DatasetConfig, load_problems
from east.data.problems import Problem

__all__ = ["ArithConfig", "DataError", "DatasetConfig", "Problem", "Splits", "load_splits"]


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
    return splits

"""Datasets as lists of :class:`Problem`: the embedded ``arith`` task and file/hub loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from east.data.arith import ArithSpec, generate
from east.data.loaders import DataError, SourceSpec, load_problems
from east.data.problems import Problem

__all__ = ["DataError", "Problem", "Splits", "load_splits"]

_SOURCE_KEYS = {f for f in SourceSpec.__dataclass_fields__ if f not in ("name", "skipped")}


@dataclass
class Splits:
    train: list[Problem]
    tests: dict[str, list[Problem]]
    warmup: list[Problem] = field(default_factory=list)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)


def _limit(problems: list[Problem], n: int | None) -> list[Problem]:
    return problems if n is None else problems[:n]


def load_splits(cfg: dict[str, Any]) -> Splits:
    """Build the splits a dataset config describes (see ``conf/dataset/*.yaml``)."""
    if cfg["name"] == "arith":
        spec = ArithSpec(**cfg["arith"])
        parts = generate(spec)
        return Splits(
            train=_limit(parts["train"], cfg.get("max_train")),
            tests={"arith": _limit(parts["test"], cfg.get("max_test"))},
            warmup=parts["warmup"],
        )
    base = {
        k: cfg[k] for k in _SOURCE_KEYS if cfg.get(k) is not None and k not in ("split", "limit", "hub_split")
    }
    train_spec = SourceSpec(name=cfg["name"], split=cfg["train_split"], limit=cfg.get("max_train"), **base)
    splits = Splits(train=load_problems(train_spec), tests={})
    splits.skipped["train"] = train_spec.skipped
    wanted = cfg.get("test_sets") or list(cfg["tests"])
    unknown = sorted(set(wanted) - set(cfg["tests"]))
    if unknown:
        raise ValueError(
            f"dataset.test_sets: unknown test set(s) {unknown}; allowed: {', '.join(cfg['tests'])}"
        )
    for name in wanted:
        override = cfg["tests"][name] or {}
        spec = SourceSpec(
            name=name,
            limit=cfg.get("max_test"),
            **{**base, **{k: v for k, v in override.items() if v is not None}},
        )
        splits.tests[name] = load_problems(spec)
        splits.skipped[name] = spec.skipped
    return splits

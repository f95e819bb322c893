"""Loading problems from local JSON Lines files / folders or the Hugging Face hub.

Bad input never disappears silently: a malformed line, a missing field, an empty file or a
gold answer that cannot be extracted raises an error naming the file and line, unless
``on_bad_row="skip"``, in which case the skipped rows are counted and logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from east.answers import extract_answer, gold_from_gsm8k, gold_from_math
from east.data.problems import Problem

log = logging.getLogger(__name__)

GOLD_FORMATS = ("gsm8k", "boxed", "field")


class DataError(ValueError):
    """A dataset row or file that cannot be used, with its location."""


@dataclass
class SourceSpec:
    """Where one split comes from and how its rows map to problems."""

    name: str  # e.g. "gsm8k", "math500": the key in results.json
    path: str | None = None  # local .jsonl file, or folder holding {split}.jsonl
    split: str = "test"
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None  # the split's name on the hub, when it differs from `split`
    question_field: str = "question"
    solution_field: str | None = None
    answer_field: str | None = None
    gold_format: str = "field"  # gsm8k: after ####; boxed: last \boxed{} of the solution; field: answer_field
    id_field: str | None = None
    limit: int | None = None
    on_bad_row: str = "error"  # or "skip" (counted in the log)
    skipped: dict[str, int] = field(default_factory=dict)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; errors name the file and line."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    empty = True
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            empty = False
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record
    if empty:
        raise DataError(f"{path}: the file is empty")


def _rows(spec: SourceSpec) -> Iterable[tuple[str, int, dict[str, Any]]]:
    if spec.path:
        path = Path(spec.path).expanduser()
        if path.is_dir():
            path = path / f"{spec.split}.jsonl"
        for lineno, record in read_jsonl(path):
            yield str(path), lineno, record
        return
    if not spec.hub_id:
        raise DataError(f"dataset {spec.name!r}: set a local path (dataset.path=...) or a hub id")
    import datasets

    split = spec.hub_split or spec.split
    ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split)
    for i, record in enumerate(ds):
        yield f"{spec.hub_id}[{split}]", i + 1, dict(record)


def _gold(spec: SourceSpec, record: dict[str, Any]) -> str:
    if spec.gold_format == "gsm8k":
        return gold_from_gsm8k(str(record[spec.answer_field or "answer"]))
    if spec.gold_format == "boxed":
        return gold_from_math(str(record[spec.solution_field or "solution"]))
    if spec.gold_format == "field":
        value = record[spec.answer_field or "answer"]
        gold = str(value).strip() if value is not None else ""
        if not gold:
            raise ValueError("empty answer field")
        return extract_answer(gold) or gold if "\\boxed" in gold else gold
    raise ValueError(f"unknown gold_format {spec.gold_format!r}; allowed: {', '.join(GOLD_FORMATS)}")


def load_problems(spec: SourceSpec) -> list[Problem]:
    if spec.on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {spec.on_bad_row!r}")
    problems: list[Problem] = []
    skipped: dict[str, int] = {}
    for where, lineno, record in _rows(spec):
        try:
            question = record[spec.question_field]
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"field {spec.question_field!r} is empty or not text")
            gold = _gold(spec, record)
            solution = record.get(spec.solution_field) if spec.solution_field else None
            pid = record.get(spec.id_field) if spec.id_field else None
        except KeyError as e:
            reason = f"missing field {e.args[0]!r}"
        except ValueError as e:
            reason = str(e).split(":")[0]
            if spec.on_bad_row == "error":
                raise DataError(f"{where}:{lineno}: {e}") from None
        else:
            problems.append(Problem(id=str(pid or f"{spec.name}-{spec.split}-{lineno}"), question=question.strip(),
                                    gold=gold, solution=solution))  # fmt: skip
            if spec.limit is not None and len(problems) >= spec.limit:
                break
            continue
        if spec.on_bad_row == "error":
            raise DataError(f"{where}:{lineno}: {reason} (have: {', '.join(sorted(record))})")
        skipped[reason] = skipped.get(reason, 0) + 1
    if skipped:
        log.warning("%s: skipped %d bad rows: %s", spec.name, sum(skipped.values()), skipped)
    spec.skipped = skipped
    if not problems:
        raise DataError(f"dataset {spec.name!r} ({spec.path or spec.hub_id}): no usable problems")
    return problems

"""Loading problems from local JSON Lines files / folders or the Hugging Face hub.

Bad input never disappears silently: a malformed line, a missing field, an empty file or a
gold answer that cannot be extracted raises an error naming the file and line, unless
``on_bad_row="skip"``, in which case the skipped rows are counted and logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from east.checks import check_choice, check_int, fail, unset
from east.data.arith import ArithConfig
from east.data.problems import Problem
from east.errors import UserError
from east.grading import extract_answer, gold_from_gsm8k, gold_from_math

log = logging.getLogger(__name__)

GOLD_FORMATS = ("gsm8k", "boxed", "field")
#: What a test set's entry in ``dataset.tests`` may override.
_TEST_KEYS = {
    "split",
    "hub_split",
    "path",
    "hub_id",
    "hub_config",
    "question_field",
    "solution_field",
    "answer_field",
    "gold_format",
    "id_field",
}


class DataError(UserError):
    """A dataset row or file that cannot be used, with its location."""


class OnBadRow(StrEnum):
    error = "error"  # a bad row stops the run, naming file and line
    skip = "skip"  # bad rows are skipped and counted by kind in the log and results.json


@dataclass
class DatasetConfig:
    """``dataset``: where the problems come from and how rows map to them (the config schema
    and the loaders' argument). ``tests`` names the test sets, each overriding ``split``,
    ``hub_split`` or any field below for itself."""

    name: str = MISSING  # e.g. "gsm8k": the key in results.json
    path: str | None = None  # local folder ({split}.jsonl) or .jsonl file; None: hub_id
    hub_id: str | None = None
    hub_config: str | None = None
    train_split: str = "train"
    # test set name -> overrides of the fields below (split, hub_split, path, answer_field, ...)
    tests: dict[str, Any] = field(default_factory=dict)
    test_sets: list[str] | None = None  # which entries of tests to evaluate on (None: all)
    question_field: str = "question"
    solution_field: str | None = None
    answer_field: str | None = None
    # gsm8k: after ####; boxed: last \boxed{} of the solution; field: answer_field as given
    gold_format: str = "field"
    id_field: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    on_bad_row: OnBadRow = OnBadRow.error
    # A test set made only of training questions (one .jsonl file for both) is refused unless
    # this is true; a partial overlap is a warning with its count.
    allow_test_in_train: bool = False
    # A longer question is a bad row (refused or counted): GSM8K's and MATH's longest are
    # under 5,000 characters, and a 20 MB one would allocate gigabytes in tokenization.
    max_question_chars: int = 20_000
    arith: ArithConfig | None = None  # the embedded task (name: arith), generated, no files

    def __post_init__(self) -> None:
        check_choice("dataset.gold_format", self.gold_format, GOLD_FORMATS)
        check_int("dataset.max_train", self.max_train, 1, optional=True)
        check_int("dataset.max_test", self.max_test, 1, optional=True)
        check_int("dataset.max_question_chars", self.max_question_chars, 1, 10_000_000)
        for name, override in (self.tests or {}).items():
            unknown = sorted(set(override or {}) - _TEST_KEYS)
            if unknown:
                fail(
                    f"dataset.tests.{name}",
                    dict(override),
                    f"unknown key(s) {unknown}; allowed: {sorted(_TEST_KEYS)}",
                )
            if override and override.get("gold_format") is not None:
                check_choice(f"dataset.tests.{name}.gold_format", override["gold_format"], GOLD_FORMATS)
        if self.test_sets is not None:
            unknown = sorted(set(self.test_sets) - set(self.tests or {}))
            if unknown or not self.test_sets:
                fail(
                    "dataset.test_sets",
                    list(self.test_sets),
                    f"allowed: a non-empty subset of {', '.join(self.tests or {})}",
                )
        if self.arith is not None and not unset(self.name) and self.name != "arith":
            # A preset's sizes for the embedded task (debug=fast sets dataset.arith) stay on the
            # node when another dataset is chosen: they never replace the user's data.
            log.info("dataset.arith does not apply to dataset %s: ignored", self.name)
            self.arith = None
        if self.arith is not None and self.path and not unset(self.path):
            fail(
                "dataset.path",
                self.path,
                "the embedded arith task reads no file; add dataset=jsonl to train on your own data "
                "(README: Your own data)",
            )
        if self.path and not unset(self.path) and not Path(self.path).expanduser().exists():
            fail(
                "dataset.path",
                self.path,
                "no such file or folder (set paths.data_dir or dataset.path to local copies)",
            )
        if self.arith is None and not unset(self.name) and not self.path and not self.hub_id:
            fail("dataset.path", self.path, "a local path or dataset.hub_id is required")

    def test_source(self, name: str) -> tuple[DatasetConfig, str, str | None]:
        """(this config with test set ``name``'s overrides, its split, its hub split)."""
        override = {k: v for k, v in (self.tests[name] or {}).items() if v is not None}
        split, hub_split = override.pop("split", "test"), override.pop("hub_split", None)
        return dataclasses.replace(self, **override), split, hub_split


class RowError(ValueError):
    """One row that cannot be used; ``reason`` is its short, countable kind."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """(line number, record or the :class:`RowError` that line is) for every non-blank line.

    A byte-order mark is ignored; a line that is not UTF-8, not JSON or not a JSON object is
    yielded as an error for the caller to raise or count. A missing or empty file raises.
    """
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a .jsonl file (or a folder holding {{split}}.jsonl)")
    if not path.is_file():  # a FIFO or a device would block the read, or never end
        raise DataError(f"{path}: not a regular file (a pipe, socket or device); expected a .jsonl file")
    empty = True
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                empty = False
                yield lineno, RowError("not valid UTF-8", f"byte {raw[e.start]:#04x} at column {e.start + 1}")
                continue
            line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            empty = False
            try:
                # A JSON number keeps its text: 0.00001 read as a float would be written 1e-05,
                # and 20000000000000000.0 as 2e+16, and a model's \boxed{0.00001} would not match.
                record = json.loads(line, parse_float=str)
            except json.JSONDecodeError as e:
                yield lineno, RowError("malformed JSON", e.msg)
                continue
            if not isinstance(record, dict):
                yield lineno, RowError("not a JSON object", f"got {type(record).__name__}")
                continue
            yield lineno, record
    if empty:
        raise DataError(f"{path}: the file is empty")


def _rows(
    spec: DatasetConfig, name: str, split: str, hub_split: str | None
) -> Iterable[tuple[str, int, dict[str, Any] | RowError]]:
    if spec.path:
        path = Path(spec.path).expanduser()
        if path.is_dir():
            path = path / f"{split}.jsonl"
        for lineno, record in read_jsonl(path):
            yield str(path), lineno, record
        return
    if not spec.hub_id:
        raise DataError(f"dataset {name!r}: set a local path (dataset.path=...) or a hub id")
    import datasets

    split = hub_split or split
    ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split)
    for i, record in enumerate(ds):
        yield f"{spec.hub_id}[{split}]", i + 1, dict(record)


#: Characters that print nothing (zero-width spaces and joiners, word joiner, BOM, soft
#: hyphen): a field of only these and white space is empty.
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"


def _text(record: dict[str, Any], key: str, what: str) -> str:
    """A field that must hold text (or a finite number, for answers)."""
    if key not in record:
        raise RowError(f"missing field {key!r}", f"have: {', '.join(sorted(record))}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(
            f"{what} field {key!r} is not text", f"got {type(value).__name__}: {str(value)[:60]!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):  # JSON NaN, Infinity, 1e999
        raise RowError(f"{what} field {key!r} is not a finite number", f"got {value!r}")
    text = str(value).strip()
    if not text.strip(_INVISIBLE + " \t\n\r\f\v"):
        raise RowError(f"{what} field {key!r} is empty", f"got {text[:20]!r}" if text else "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud800" in JSON: a lone surrogate no tokenizer can read
        raise RowError(
            f"{what} field {key!r} is not valid Unicode", f"{e.reason} at character {e.start}"
        ) from None
    return text


def _finite_gold(gold: str) -> str:
    """A gold answer that a number parser reads as NaN or infinite is no answer."""
    try:
        number = float(gold)
    except ValueError:
        return gold
    if not math.isfinite(number):
        raise RowError("gold answer is not a finite number", f"got {gold[:60]!r}")
    return gold


def _gold(spec: DatasetConfig, record: dict[str, Any]) -> str:
    try:
        if spec.gold_format == "gsm8k":
            return gold_from_gsm8k(_text(record, spec.answer_field or "answer", "answer"))
        if spec.gold_format == "boxed":
            return gold_from_math(_text(record, spec.solution_field or "solution", "solution"))
    except RowError:
        raise
    except ValueError as e:
        reason, _, detail = str(e).partition(": ")
        raise RowError(reason, detail) from None
    if spec.gold_format == "field":
        gold = _text(record, spec.answer_field or "answer", "answer")
        if "\\boxed" in gold or "\\fbox" in gold:
            boxed = extract_answer(gold)
            if boxed is None:
                raise RowError("no gold answer", f"unbalanced \\boxed{{}} in {gold[:60]!r}")
            return boxed
        return gold
    raise ValueError(f"unknown gold_format {spec.gold_format!r}; allowed: {', '.join(GOLD_FORMATS)}")


def _row_id(spec: DatasetConfig, name: str, split: str, record: dict[str, Any], lineno: int) -> str:
    if not spec.id_field:
        return f"{name}-{split}-{lineno}"
    return _text(record, spec.id_field, "id")


def load_problems(
    spec: DatasetConfig, name: str, split: str, *, hub_split: str | None = None, limit: int | None = None
) -> tuple[list[Problem], dict[str, int]]:
    """The problems of one split named ``name`` (at most ``limit``), and the bad rows skipped
    by kind. Every row-level problem (bad bytes, bad JSON, a missing or non-text field, no
    extractable gold, a duplicate id) is a ``file:line`` error, or with ``on_bad_row=skip`` a
    skip counted by kind here and in the log."""
    problems: list[Problem] = []
    skipped: dict[str, int] = {}
    seen: dict[str, int] = {}  # id -> line it was first seen on
    for where, lineno, record in _rows(spec, name, split, hub_split):
        try:
            if isinstance(record, RowError):
                raise record
            question = _text(record, spec.question_field, "question")
            if len(question) > spec.max_question_chars:
                raise RowError(
                    "question too long",
                    f"{len(question):,} characters > dataset.max_question_chars={spec.max_question_chars:,}",
                )
            gold = _finite_gold(_gold(spec, record))
            solution = record.get(spec.solution_field) if spec.solution_field else None
            pid = _row_id(spec, name, split, record, lineno)
            if pid in seen:
                raise RowError("duplicate id", f"{pid!r} is also on line {seen[pid]}")
        except RowError as e:
            if spec.on_bad_row == "error":
                raise DataError(
                    f"{where}:{lineno}: {e} (dataset.on_bad_row=skip skips and counts such rows)"
                ) from None
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            continue
        seen[pid] = lineno
        problems.append(Problem(id=pid, question=question, gold=gold, solution=solution))
        if limit is not None and len(problems) >= limit:
            break
    if skipped:
        log.warning("%s: skipped %d bad rows: %s", name, sum(skipped.values()), skipped)
    if not problems:
        raise DataError(f"dataset {name!r} ({spec.path or spec.hub_id}): no usable problems")
    return problems, skipped

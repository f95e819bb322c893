"""Equivalence of two final answers: math-verify, bounded in time and size, cached.

math-verify is restricted to its LaTeX parser (its plain-expression parser calls sympy's
``parse_expr``, which ``eval``s transformed text; model output never reaches it here). Every
call is bounded in time by a ``SIGALRM`` timer, so it must run in the main thread of a
process (:mod:`east.grading.pool` supervises worker processes). Numbers too large to
evaluate are refused before sympy sees them.

Cost model: parsing is expensive (~1 ms), ``verify`` is cheap, and a sampled answer set
has few distinct strings. So every distinct normalised string is parsed once (an LRU cache
per process, and the on-disk :class:`ParseStore` across processes and runs) and plain
decimal numbers are compared exactly without parsing.

Nothing happens at import: :func:`configure_math_verify` quiets math-verify's own timeout
logging the first time a parse runs.
"""

from __future__ import annotations

import cmath
import contextlib
import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from east.grading.extract import _numbers_equal, _percent_equal, _plain_number, normalize_answer
from east.grading.magnitude import MAX_DIGITS, _closed_statement, _magnitude_ok
from east.grading.parse_store import ParseStore

__all__ = ["DEFAULT_TIMEOUT_S", "MAX_DIGITS", "GradingTimeout", "ParseStore", "answers_equal", "parse_store"]

#: Answers longer than this are never parsed: compared by string only, and counted as cut
#: (the time bound protects everything shorter).
MAX_PARSE_CHARS = 10_000
#: Default wall-clock bound, in seconds, for one parse or one comparison.
DEFAULT_TIMEOUT_S = 1.0
#: A parse or comparison cut by its bound is tried once more with this many times the bound
#: before it counts as cut: a load spike, or whether a parse store already held the answer,
#: then changes no grade; only answers cut twice (or too large to evaluate) depend on the
#: machine.
RETRY_FACTOR = 4


@lru_cache(maxsize=1)
def configure_math_verify() -> tuple[Any, Any, list]:
    """math-verify's ``parse``, ``verify`` and the LaTeX-only extraction config, imported on
    first use. math-verify logs every timeout and warns once when its own timers are
    disabled (we bound time ourselves and count the cuts), so both are quieted here. Called
    before any bounded operation: an import must never count against an answer's bound."""
    import math_verify
    from math_verify import LatexExtractionConfig

    _percent()  # sympy, imported here too
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    for name in ("parser", "grader"):
        module = getattr(math_verify, name, None)
        if module is not None and hasattr(module, "TIMEOUT_WARNING_SHOWN"):
            module.TIMEOUT_WARNING_SHOWN = True
    extraction = [LatexExtractionConfig(boxed_match_priority=0)]
    math_verify.parse("$1$", extraction_config=extraction, parsing_timeout=None)  # its lazy imports
    return math_verify.parse, math_verify.verify, extraction


def _mv_parse(*args: Any, **kwargs: Any) -> Any:
    return configure_math_verify()[0](*args, **kwargs)


def _mv_verify(*args: Any, **kwargs: Any) -> Any:
    return configure_math_verify()[1](*args, **kwargs)


class GradingTimeout(BaseException):
    """A parse or comparison ran past its time bound.

    A ``BaseException``: math-verify and sympy catch ``Exception`` around their own work,
    which would swallow the timeout and let a cut comparison read as "not equal"."""


class _Watch:
    """Where a supervisor (east.grading.pool) watches the bounded operation in progress:
    a shared-memory start time, its bound and a description of the operation, so that it can
    kill a worker stuck in C code (big integers) that no signal interrupts, and knows what to
    retry or mark as timed out in the worker it starts instead."""

    def __init__(self, since: Any, op: Any, limit: Any):
        self.since, self.op, self.limit = since, op, limit

    def begin(self, op: tuple[str, ...], seconds: float) -> None:
        self.op.value = json.dumps(op).encode()[: len(self.op) - 1]
        self.limit.value = seconds
        self.since.value = time.monotonic()

    def end(self) -> None:
        self.since.value = 0.0


_WATCH: _Watch | None = None


@contextlib.contextmanager
def _time_limit(seconds: float, op: tuple[str, ...]) -> Iterator[None]:
    """Bound one operation (``("parse", norm)`` or ``("verify", norm_a, norm_b)``) by
    ``seconds`` with ``SIGALRM``; under a supervisor, also announce it (see :class:`_Watch`)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "east.grading grades with a SIGALRM time bound, which only works in the main "
            "thread; use processes (grade_questions(..., processes=N)) instead of threads"
        )

    def _raise(signum: int, frame: Any) -> None:
        raise GradingTimeout

    previous = signal.signal(signal.SIGALRM, _raise)
    if _WATCH is not None:
        _WATCH.begin(op, seconds)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if _WATCH is not None:
            _WATCH.end()


# --------------------------------------------------------------------------- parsed answers

#: Operations cut by a time bound in this process: strings whose parse was cut (they compare
#: by string only from then on) and pairs whose comparison was cut (never retried). A
#: supervisor seeds both with what it killed workers for (:func:`mark_timed_out`).
_CUT_PARSES: set[str] = set()
_CUT_PAIRS: set[frozenset[str]] = set()
#: Operations a supervisor killed once at the first bound: tried at the retry bound only.
_SLOW: set[tuple[str, ...]] = set()
#: Cut comparisons per string: a string that has cut this many is parsed no more.
_STRIKES: dict[str, int] = {}
MAX_STRIKES = 2


def mark_timed_out(
    parses: Iterable[str] = (), pairs: Iterable[Iterable[str]] = (), slow: Iterable[Iterable[str]] = ()
) -> None:
    """Record operations that ran out of time elsewhere (a killed worker): cut ones are not
    tried again here, and every answer they touch is counted as timed out; ``slow`` ones were
    killed once and get the retry bound at once."""
    _CUT_PARSES.update(parses)
    for pair in pairs:
        _CUT_PAIRS.add(frozenset(pair))
    _SLOW.update(tuple(op) for op in slow)


def forget_timeouts() -> None:
    """Forget every operation cut by a time bound in this process (tests, benchmarks)."""
    _CUT_PARSES.clear()
    _CUT_PAIRS.clear()
    _STRIKES.clear()
    _SLOW.clear()


def _bounded(op: tuple[str, ...], timeout_s: float, fn: Any) -> Any:
    """``fn()`` under ``timeout_s``, and once more under ``RETRY_FACTOR`` times it when the
    first bound cuts it; raises :class:`GradingTimeout` when both do."""
    budgets = (timeout_s * RETRY_FACTOR,) if op in _SLOW else (timeout_s, timeout_s * RETRY_FACTOR)
    for budget in budgets:
        try:
            with _time_limit(budget, op):
                return fn()
        except GradingTimeout:
            continue
    raise GradingTimeout


def _cut_pair(a: _Parsed, b: _Parsed) -> None:
    """A comparison ran out of time: never retried. Its non-numeric sides take a strike (a
    plain number is never what makes sympy slow, so a gold like ``2`` is never struck)."""
    _CUT_PAIRS.add(frozenset((a.norm, b.norm)))
    for norm in (p.norm for p in (a, b) if p.number is None):
        _STRIKES[norm] = _STRIKES.get(norm, 0) + 1
        if _STRIKES[norm] >= MAX_STRIKES:
            _CUT_PARSES.add(norm)


def _timed_out(a: str, b: str | None = None) -> bool:
    """Whether a time bound cut the parse of ``a`` (or ``b``), or their comparison."""
    return a in _CUT_PARSES or (b is not None and (b in _CUT_PARSES or frozenset((a, b)) in _CUT_PAIRS))


@dataclass
class _Parsed:
    """A normalised answer string and, lazily, its math-verify parse."""

    norm: str
    number: tuple[Fraction, int] | None  # plain numbers: (value, places), see _plain_number
    expr: list | None = None  # math-verify parse; [] = not parseable
    value: complex | None = None  # value of an expression at the probe point (see _probe)
    constant: bool = False  # the expression has no free symbols: `value` is its exact value
    scalar: bool = False  # a sympy expression (not a tuple, set, matrix, relation, ...)
    items: int = 0  # entries of a tuple / set / matrix answer (0 for a scalar expression)
    interval: bool = False  # an interval or a union of intervals

    def parse(self, timeout_s: float) -> list:
        if self.norm in _CUT_PARSES:
            return []  # cut once: compared by string only from then on
        if self.expr is not None:
            if _STORE is not None and self.norm:
                # Parsed in memory before this store was opened (a grading worker lives
                # across calls, and a sweep's cells name different stores): it gets it too.
                _STORE.add(self)
            return self.expr
        self.expr = []
        if len(self.norm) > MAX_PARSE_CHARS:
            _CUT_PARSES.add(self.norm)  # too long to parse: by string only, counted as cut
            return self.expr
        if not self.norm or (_STORE is not None and _STORE.restore(self)):
            return self.expr
        configure_math_verify()  # imports math-verify and sympy outside the bound
        try:
            self.expr = _bounded(("parse", self.norm), timeout_s, self._parse_once)
        except GradingTimeout:
            _CUT_PARSES.add(self.norm)
            self.expr = []
            return self.expr
        if self.expr and not all(_magnitude_ok(e) for e in self.expr):
            _CUT_PARSES.add(self.norm)  # too large to evaluate: a bound, counted as one
            self.expr = []
            return self.expr
        if self.expr and _closed_statement(self.expr[0]):
            # "0.56 = 56\\%": compared by math-verify's matched string, not truth value.
            self.expr = [e for e in self.expr if isinstance(e, str)]
        if not self._probe(timeout_s):
            return []
        if _STORE is not None:
            _STORE.add(self)  # a timed-out parse depends on the bound: never stored
        return self.expr

    def _parse_once(self) -> list:
        # As inline math first (math-verify reads "18%" and units there), then boxed (it reads
        # "\\frac{24}{5}." there): the answer is whichever parses. math-verify's parse is
        # [expression, matched string]; verify compares both, so both are kept (the string
        # equates "05:00" with "05:00 cm"). Where neither wrapping yields an expression,
        # math-verify compares the matched strings ("\\sin^2 t" and "\\sin^2 t cm" both
        # match "\\sin^2").
        strings: list = []
        for wrapped in ("$" + self.norm + "$", "\\boxed{" + self.norm + "}"):
            parsed = _mv_parse(
                wrapped,
                extraction_config=configure_math_verify()[2],
                parsing_timeout=None,
                fallback_mode="first_match",
            )
            if any(not isinstance(e, str) for e in parsed):
                return list(parsed)
            strings = strings or list(parsed)
        return strings

    def _probe(self, timeout_s: float) -> bool:
        """Facts used only to skip ``verify`` where its answer is certain: expressions that
        differ at one point are not equal as functions, and neither a collection of two or
        more items nor an interval is ever one number. False when the probe ran out of time."""
        import sympy

        first = self.expr[0] if self.expr else None
        self.interval = isinstance(first, sympy.Interval) or (
            isinstance(first, sympy.Union) and all(isinstance(a, sympy.Interval) for a in first.args)
        )
        if isinstance(first, sympy.Tuple | sympy.FiniteSet):
            self.items = len(first.args)
        elif isinstance(first, sympy.MatrixBase):
            self.items = first.rows * first.cols
        elif isinstance(first, sympy.Expr) and first.has(_percent()):
            # math-verify's percentages equal both X and X/100: only its verify decides them.
            self.scalar = True
        elif isinstance(first, sympy.Expr):
            self.scalar = True
            try:
                self.value, self.constant = _bounded(
                    ("parse", self.norm), timeout_s, lambda: _value_at_probe(first)
                )
            except GradingTimeout:
                _CUT_PARSES.add(self.norm)
                self.expr = []
                return False
        return True


@lru_cache(maxsize=1)
def _percent() -> Any:
    import sympy

    return sympy.UnevaluatedExpr(sympy.Rational(1, 100))  # latex2sympy's "X%" = X * this


def _probe_point(name: str) -> float:
    """A fixed, irrational-looking value per symbol name, shared by every expression."""
    digest = hashlib.sha256(name.encode()).digest()
    return 1.1 + int.from_bytes(digest[:4], "little") / 2**32 * 1.7


def _value_at_probe(e: Any) -> tuple[complex | None, bool]:
    """(value at the probe point, whether ``e`` is a constant) of a sympy expression."""
    point = {s: _probe_point(s.name) for s in e.free_symbols}
    try:
        value = complex((e.subs(point) if point else e).evalf(30))
    except (TypeError, ValueError, OverflowError, ArithmeticError, AttributeError):
        return None, not point
    return (value if cmath.isfinite(value) else None), not point


_STORE: ParseStore | None = None


@contextlib.contextmanager
def parse_store(directory: str | Path | None) -> Iterator[ParseStore | None]:
    """Use (and fill) the on-disk parse store in ``directory`` for the calls inside;
    ``None`` uses none. Parses already held in this process's memory stay valid."""
    global _STORE
    if directory is None:
        yield None
        return
    previous, _STORE = _STORE, ParseStore.in_dir(directory)
    try:
        yield _STORE
    finally:
        store, _STORE = _STORE, previous
        store.close()


@lru_cache(maxsize=200_000)
def _parsed(norm: str) -> _Parsed:
    return _Parsed(norm, _plain_number(norm))


def _equal_parsed(a: _Parsed, b: _Parsed, timeout_s: float) -> bool:
    if a.norm == b.norm:
        return True
    if a.norm.endswith("%") or b.norm.endswith("%"):
        return _percent_equal(a.norm, b.norm)
    if a.number is not None and b.number is not None:
        decided = _numbers_equal(a.number, b.number)
        if decided is not None:
            return decided
    if _timed_out(a.norm, b.norm):
        return False  # a time bound cut one of them, or this comparison, before
    pa, pb = a.parse(timeout_s), b.parse(timeout_s)
    if not pa or not pb:
        return False
    if a.value is not None and b.value is not None:
        scale = max(1.0, abs(a.value), abs(b.value))
        if abs(a.value - b.value) > 1e-6 * scale:
            # They differ at the probe point: not equal, no symbolic verify. (No shortcut the
            # other way: values close at 30 digits are not equal integers or rationals, such
            # as 2^{64} and 18446744073709551615; math-verify compares those exactly and floats
            # by its own rounding.)
            return False
    if (a.items >= 2 and b.scalar) or (b.items >= 2 and a.scalar):
        return False  # a tuple / set / matrix of several items is never one number
    if (a.interval and b.scalar and b.constant) or (b.interval and a.scalar and a.constant):
        return False  # an interval is never a number
    try:
        return bool(
            _bounded(
                ("verify", a.norm, b.norm),
                timeout_s,
                lambda: _mv_verify(pa, pb, timeout_seconds=None) or _mv_verify(pb, pa, timeout_seconds=None),
            )
        )
    except GradingTimeout:
        _cut_pair(a, b)  # never paid twice; a string that cuts MAX_STRIKES is parsed no more
        return False


def answers_equal(a: str | None, b: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether two final answers are mathematically equivalent (math-verify).

    Symmetric: true when ``verify`` holds in either direction. ``None`` equals nothing.
    Each parse and the comparison are bounded by ``timeout_s`` (main thread only); an
    answer that cannot be parsed in time compares by normalised string only.
    """
    if a is None or b is None:
        return False
    return _equal_parsed(_parsed(normalize_answer(a)), _parsed(normalize_answer(b)), timeout_s)

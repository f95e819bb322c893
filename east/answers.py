"""Final-answer extraction, equivalence grading and answer clustering.

Pure Python: no torch, no Hydra, no file I/O. Equivalence goes through math-verify,
restricted to its LaTeX parser (its plain-expression parser calls sympy's ``parse_expr``,
which ``eval``s transformed text; model output never reaches it here). Every call is
bounded in time by a ``SIGALRM`` timer, so it must run in the main thread of a process:
use processes (``grade_questions(..., processes=N)``), not threads, for parallelism.

Cost model: parsing is expensive (~1 ms), ``verify`` is cheap, and a sampled answer set
has few distinct strings. So every distinct normalised string is parsed once (an LRU
cache per process) and plain decimal numbers are compared exactly without parsing.
"""

from __future__ import annotations

import cmath
import contextlib
import hashlib
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import math_verify
from math_verify import LatexExtractionConfig
from math_verify import parse as _mv_parse
from math_verify import verify as _mv_verify

from east.weighting import entropy

__all__ = [
    "FALLBACKS",
    "ClusterMode",
    "QuestionGrade",
    "answers_equal",
    "cluster_answers",
    "extract_answer",
    "extract_answer_with_source",
    "gold_from_gsm8k",
    "gold_from_math",
    "grade_question",
    "grade_questions",
    "normalize_answer",
]

ClusterMode = Literal["equivalence", "string"]
CLUSTER_MODES: tuple[str, ...] = ("equivalence", "string")

#: Answers longer than this are never parsed (they compare by string only).
MAX_PARSE_CHARS = 400
#: Default wall-clock bound, in seconds, for one parse or one comparison.
DEFAULT_TIMEOUT_S = 1.0

# math-verify logs every timeout and warns once when its own timers are disabled
# (we bound time ourselves); keep the log readable, we count timeouts instead.
logging.getLogger("math_verify").setLevel(logging.CRITICAL)
for _module in ("parser", "grader"):
    _mod = getattr(math_verify, _module, None)
    if _mod is not None and hasattr(_mod, "TIMEOUT_WARNING_SHOWN"):
        _mod.TIMEOUT_WARNING_SHOWN = True

_LATEX_ONLY = [LatexExtractionConfig(boxed_match_priority=0)]


# --------------------------------------------------------------------------- extraction

_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
_PHRASE_RE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE)


_BOX_RE = re.compile(r"\\(?:boxed|fbox)")
_TOKEN_RE = re.compile(r"[^\s$]+")
_BRACE_RE = re.compile(r"[{}]")


def _box_at(text: str, pos: int, end: int) -> tuple[int, int, int] | None:
    """The box whose command starts at ``pos``: ``(content start, content end, box end)``,
    or ``None`` when it is unbalanced (nothing after it can be a matched box either). A
    command without content (``\\fbox 5``, ``\\boxed$``) gives ``content start = -1``.

    ``\\boxed 5`` (no braces) takes the next token up to whitespace or ``$``.
    """
    m = _BOX_RE.match(text, pos, end)
    assert m is not None
    j = m.end()
    while j < end and text[j] == " ":
        j += 1
    if j >= end:
        return None
    if text[j] != "{":
        t = _TOKEN_RE.match(text, j, end)
        if t is None or m.group(0) != "\\boxed":
            return (-1, j, j)  # "\\fbox 5" or "\\boxed$": no content, keep scanning after it
        return (j, t.end(), t.end())
    depth = 0
    for brace in _BRACE_RE.finditer(text, j, end):
        if brace.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return (j + 1, brace.start(), brace.end())
    return None


def _boxed_spans(text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the contents of the top-level, brace-matched ``\\boxed{..}`` /
    ``\\fbox{..}`` in ``text[start:end]``, in order. One left-to-right pass: linear time."""
    end = len(text) if end is None else end
    i = start
    while True:
        m = _BOX_RE.search(text, i, end)
        if m is None:
            return
        box = _box_at(text, m.start(), end)
        if box is None:
            return  # unbalanced: nothing after this point can be a matched box
        lo, hi, after = box
        if lo >= 0:
            yield lo, hi
        i = max(after, m.end())


def _boxed_contents(text: str) -> Iterator[str]:
    """Contents of the top-level, brace-matched ``\\boxed{..}`` / ``\\fbox{..}`` in order."""
    for lo, hi in _boxed_spans(text):
        yield text[lo:hi]


def _last_box(text: str) -> str | None:
    """The content of the last top-level box, with nested boxes that are the whole content
    unwrapped (``\\boxed{\\boxed{x}}`` is ``x``; ``\\boxed{\\boxed{5}\\text{ cm}}`` is ``5``).
    Linear: each unwrapping step only looks at characters that it drops."""
    span = None
    for last in _boxed_spans(text):
        span = last
    if span is None:
        return None
    lo, hi = span
    close_of: dict[int, int] | None = None  # brace matching inside the span, built once
    while True:
        while lo < hi and text[lo].isspace():
            lo += 1
        m = _BOX_RE.match(text, lo, hi)
        if m is None:
            break
        j = m.end()
        while j < hi and text[j] == " ":
            j += 1
        if j < hi and text[j] == "{":
            if close_of is None:
                close_of = _brace_pairs(text, lo, hi)
            if j not in close_of:
                break
            inner_lo, inner_hi, after = j + 1, close_of[j], close_of[j] + 1
        else:
            box = _box_at(text, lo, hi)
            if box is None or box[0] < 0:
                break
            inner_lo, inner_hi, after = box
        if _BOX_RE.search(text, after, hi) is not None:
            break  # a second box beside the first: keep the whole content
        lo, hi = inner_lo, inner_hi
    return text[lo:hi].strip()


def _brace_pairs(text: str, lo: int, hi: int) -> dict[int, int]:
    """Position of each ``{`` in ``text[lo:hi]`` -> its matching ``}`` (one pass)."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for brace in _BRACE_RE.finditer(text, lo, hi):
        if brace.group() == "{":
            stack.append(brace.start())
        elif stack:
            pairs[stack.pop()] = brace.start()
    return pairs


Fallback = Literal["none", "last_number"]
#: What to take from a response that states no final answer (no box, no "####", no "the
#: answer is"): ``none`` counts it as unanswered; ``last_number`` takes the last number in
#: the text, as the Qwen2.5-Math evaluation toolkit (the paper's evaluator) does.
FALLBACKS: tuple[str, ...] = ("none", "last_number")
_NUMBER_RE = re.compile(r"-?\d*\.?\d+")
_DIGIT_COMMA_RE = re.compile(r"(?<=\d),(?=\d)")


def extract_answer_with_source(
    text: str | None, fallback: Fallback = "none"
) -> tuple[str | None, str | None]:
    """Like :func:`extract_answer`, also saying where the answer came from.

    The source is ``"boxed"``, ``"gsm8k"`` (a ``#### N`` line), ``"phrase"`` ("the answer
    is X"), ``"last_number"`` (the fallback) or ``None`` when nothing was found.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown extraction fallback {fallback!r}; allowed: {', '.join(FALLBACKS)}")
    if not text:
        return None, None
    boxed = _last_box(text)
    if boxed is not None:
        return (boxed or None), ("boxed" if boxed else None)
    matches = _GSM8K_RE.findall(text)
    if matches:
        answer = matches[-1].strip().replace(",", "")
        return (answer or None), ("gsm8k" if answer else None)
    matches = _PHRASE_RE.findall(text[-2000:])
    if matches:
        answer = matches[-1].strip().strip("$").strip()
        return (answer or None), ("phrase" if answer else None)
    if fallback == "last_number":
        numbers = _NUMBER_RE.findall(_DIGIT_COMMA_RE.sub("", text[-2000:]))
        if numbers:
            return numbers[-1], "last_number"
    return None, None


def extract_answer(text: str | None, fallback: Fallback = "none") -> str | None:
    """The final answer of a response or solution, or ``None``.

    In order: the content of the last brace-matched ``\\boxed{}`` (or ``\\fbox{}``),
    else the text after the last ``####`` (GSM8K, commas removed), else a
    "the answer is X" / "final answer is X" phrase, else (``fallback="last_number"``) the
    last number in the text.
    """
    return extract_answer_with_source(text, fallback)[0]


#: Every GSM8K gold (train and test) is an integer, decimal or integer fraction.
_GSM8K_GOLD_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def gold_from_gsm8k(solution: str) -> str:
    """GSM8K gold answer: the number after ``####`` with thousands separators removed."""
    m = _GSM8K_RE.findall(solution)
    if not m or not m[-1].strip():
        raise ValueError(f"GSM8K solution has no '#### <answer>' line: {solution[-120:]!r}")
    gold = m[-1].strip().replace(",", "")
    if not _GSM8K_GOLD_RE.fullmatch(gold):
        raise ValueError(f"GSM8K gold after '####' is not a number: {gold[:60]!r}")
    return gold


def gold_from_math(solution: str) -> str:
    """MATH gold answer: the content of the last ``\\boxed{}`` of the reference solution."""
    last = None
    for content in _boxed_contents(solution):
        last = content
    if last is None or not last.strip():
        raise ValueError(f"MATH solution has no brace-matched \\boxed{{}}: {solution[-120:]!r}")
    return last.strip()


# --------------------------------------------------------------------------- normalisation

# Order matters: "\\$" and "\\%" go before the bare "$" (what models write: \\$18, 25\\%).
# math-verify reads "25\\%" as 25 and "\\$6" as 6; a bare "%" it reads as a percentage
# (18% equals both 18 and 0.18 there), so that one is left for it to decide.
_STRIP_TOKENS = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "\\$", "\\%", "$")
_THOUSANDS_RE = re.compile(r"(?<=\d)(?:,|\{,\})(?=\d{3}(?:\D|$))")
_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def normalize_answer(answer: str) -> str:
    """Light, purely textual normalisation used for string clustering and cache keys.

    Removes spacing commands, ``\\left``/``\\right``, dollar signs, thousands separators,
    a trailing period and whitespace (keeping one space where a command meets a letter); ``\\dfrac``/``\\tfrac`` become ``\\frac``.
    Units and ``\\text{}`` stay: math-verify's own normalisation handles them. Nothing is
    evaluated.
    """
    s = answer
    for tok in _STRIP_TOKENS:
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _THOUSANDS_RE.sub("", s)
    s = _SPACE_RE.sub(_space, s).strip()
    s = s.rstrip(".")
    if s.endswith("%") and not _PLAIN_NUMBER_RE.fullmatch(s[:-1]):
        s = s[:-1]  # a unit mark after an expression, as "\\%" is (see _percent_equal)
    return s


# Whitespace goes, except one space between a command and a letter ("\\sin x" is not "\\sinx")
# and after a comma before a digit ("81, 256" is a list; "81,256" would read as 81256).
_SPACE_RE = re.compile(r"(\\[A-Za-z]+|,)?\s+(?=([A-Za-z0-9])?)")


def _space(m: re.Match[str]) -> str:
    before, after = m.group(1), m.group(2)
    if before == ",":
        return ", " if after and after.isdigit() else ","
    return f"{before} " if before and after and after.isalpha() else (before or "")


_FRACTION_RE = re.compile(r"([+-]?)(?:\\frac\{([+-]?\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def _plain_number(norm: str) -> tuple[Fraction, int] | None:
    """``(value, places)`` for a plain integer, decimal or integer fraction, else ``None``.

    ``places`` is the number of decimal places of a non-integral decimal, 0 otherwise.
    math-verify compares numbers after rounding to 6 places, so two plain numbers are
    decided here without parsing when that rounding cannot make them equal (see
    :func:`_numbers_equal`).
    """
    if len(norm) > 60:
        return None
    if _PLAIN_NUMBER_RE.fullmatch(norm):
        try:
            value = Fraction(Decimal(norm))
        except (InvalidOperation, ValueError):
            return None
        places = 0 if value.denominator == 1 else len(norm.partition(".")[2])
        return value, places
    m = _FRACTION_RE.fullmatch(norm)
    if m:
        sign, num, den = m.group(1), m.group(2) or m.group(4), m.group(3) or m.group(5)
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return (-value if sign == "-" else value), 0
    return None


def _numbers_equal(a: tuple[Fraction, int], b: tuple[Fraction, int]) -> bool | None:
    """Equality of two plain numbers, or ``None`` where math-verify's tolerance decides."""
    (va, pa), (vb, pb) = a, b
    if va == vb:
        return True
    exact_a, exact_b = pa == 0, pb == 0
    integral_a, integral_b = va.denominator == 1, vb.denominator == 1
    if exact_a and exact_b:
        return False  # two different rationals
    if (integral_a or 0 < pa <= 6) and (integral_b or 0 < pb <= 6):
        return False  # decimals with <= 6 places (and integers) survive rounding unchanged
    return None


def _percent_number(norm: str) -> tuple[Fraction, bool] | None:
    """``(N, N is written as a decimal)`` for a bare percentage ``N%`` of a plain number."""
    if not norm.endswith("%") or not _PLAIN_NUMBER_RE.fullmatch(norm[:-1]) or len(norm) > 60:
        return None
    try:
        return Fraction(Decimal(norm[:-1])), "." in norm
    except (InvalidOperation, ValueError):
        return None


def _percent_equal(a: str, b: str) -> bool:
    """math-verify's reading of a bare ``N%``, without its ``eval``-based expression parser.

    It parses ``N%`` as N * (1/100) and then compares: two whole percentages by N, a whole
    percentage with an integer by N or by N/100 (``18%`` = 18, ``100%`` = 1), and otherwise
    N/100 with the other number, to 6 decimal places where either side is written as a
    decimal (``18%`` = 0.18).
    A percentage never equals a non-number here (math-verify would try sympy; we do not).
    """
    pa, pb = _percent_number(a), _percent_number(b)
    if pa is None and pb is None:
        return False  # a "%" after something that is not a plain number
    if pa is None:
        a, b, pa, pb = b, a, pb, pa
    assert pa is not None
    n, n_decimal = pa
    if pb is not None:
        m, m_decimal = pb
        if not (n_decimal or m_decimal):
            return n == m
        return round(n / 100, 6) == round(m / 100, 6)
    other = _plain_number(b)
    if other is None:
        return False
    value = other[0]
    b_decimal = "." in b
    if n_decimal or b_decimal:
        return round(n / 100, 6) == round(value, 6)
    if n.denominator == 1 and value.denominator == 1 and n == value:
        return True
    return n / 100 == value


# --------------------------------------------------------------------------- time bound


class GradingTimeout(BaseException):
    """A parse or comparison ran past its time bound.

    A ``BaseException``: math-verify and sympy catch ``Exception`` around their own work,
    which would swallow the timeout and let a cut comparison read as "not equal"."""


class _Watch:
    """Where a supervisor (east.grading_pool) watches the bounded operation in progress:
    a shared-memory start time and a description of the operation, so that it can kill a
    worker stuck in C code (big integers) that no signal interrupts, and knows what to
    mark as timed out in the worker it starts instead."""

    def __init__(self, since: Any, op: Any):
        self.since, self.op = since, op

    def begin(self, op: tuple[str, ...]) -> None:
        self.op.value = json.dumps(op).encode()[: len(self.op) - 1]
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
            "east.answers grades with a SIGALRM time bound, which only works in the main "
            "thread; use processes (grade_questions(..., processes=N)) instead of threads"
        )

    def _raise(signum: int, frame: Any) -> None:
        raise GradingTimeout

    previous = signal.signal(signal.SIGALRM, _raise)
    if _WATCH is not None:
        _WATCH.begin(op)
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
#: Cut comparisons per string: a string that has cut this many is parsed no more.
_STRIKES: dict[str, int] = {}
MAX_STRIKES = 2


def mark_timed_out(parses: Iterable[str] = (), pairs: Iterable[Iterable[str]] = ()) -> None:
    """Record operations that ran out of time elsewhere (a killed worker): they are not tried
    again here, and every answer they touch is counted as timed out."""
    _CUT_PARSES.update(parses)
    for pair in pairs:
        _CUT_PAIRS.add(frozenset(pair))


def forget_timeouts() -> None:
    """Forget every operation cut by a time bound in this process (tests, benchmarks)."""
    _CUT_PARSES.clear()
    _CUT_PAIRS.clear()
    _STRIKES.clear()


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


#: Largest number of decimal digits any subterm may reach before an answer is refused
#: symbolic comparison. Big-integer arithmetic runs in C, where no signal can stop it,
#: so ``9^{9^{9^{9}}}`` must be caught before sympy tries to evaluate it.
MAX_DIGITS = 10_000


#: Largest number of terms of a sum or product that is evaluated: sympy adds them one by one.
MAX_TERMS_LOG10 = 6


def _log10_bound(expr: Any, env: dict | None = None) -> float:
    """An upper bound on log10 |value| of a sympy expression, without evaluating it.

    ``env``: bounds of the summation / product variables in scope. ``inf`` also stands for
    "too costly to evaluate" (a sum or product of more than 10^MAX_TERMS_LOG10 terms).
    """
    import math

    import sympy

    env = env or {}
    bound = _log10_bound
    if isinstance(expr, sympy.Integer | sympy.Rational):
        # 2**bits > |p|: a bound within a factor 2 (digit counts are 10x loose, which
        # refused 3^{2007} once it sat inside an equation).
        p, q = int(expr.p), int(expr.q)
        return max(abs(p).bit_length(), q.bit_length()) * math.log10(2)
    if isinstance(expr, sympy.Float):
        return max(0.0, math.log10(abs(float(expr)) + 1.0))
    if isinstance(expr, sympy.Symbol):
        return env.get(expr, 1.0)
    if isinstance(expr, sympy.Pow):
        base, exp = bound(expr.base, env), bound(expr.exp, env)
        if exp > 300:
            return math.inf
        return max(base, 1.0) * 10.0**exp
    if isinstance(expr, sympy.Mul):
        return sum(max(bound(a, env), 0.0) for a in expr.args)
    if isinstance(expr, sympy.factorial | sympy.gamma | sympy.factorial2 | sympy.binomial):
        n = bound(expr.args[0], env)  # binomial(n, k) <= 2^n <= n!-sized: same bound
        return math.inf if n > 300 else 10.0**n * max(n, 1.0)
    if isinstance(expr, sympy.Sum | sympy.Product):
        inner = dict(env)
        count = 0.0
        for var, *ends in expr.limits:
            top = max((bound(e, env) for e in ends), default=1.0)
            if top > MAX_TERMS_LOG10:
                return math.inf
            inner[var] = top
            count += top
        term = bound(expr.function, inner)
        if isinstance(expr, sympy.Sum):
            return term + count
        return math.inf if term * 10.0**count > 1e300 else max(term, 0.0) * 10.0**count
    if not getattr(expr, "args", ()):
        return 1.0  # constants (pi, E, I, oo)
    return max(bound(a, env) for a in expr.args) + math.log10(len(expr.args) + 1)


def _magnitude_ok(expr: Any) -> bool:
    import sympy

    if not isinstance(expr, sympy.Basic):
        return True
    try:
        return _log10_bound(expr) <= MAX_DIGITS
    except (RecursionError, TypeError, ValueError, OverflowError):
        return False


def _closed_statement(expr: Any) -> bool:
    """An equation or inequality between constants, such as ``0.56 = 56`` once a trailing
    ``\\%`` is read as a unit. math-verify would compare such answers by truth value (any two
    false statements are then "equal"), so they are compared by its matched strings instead."""
    import sympy

    return isinstance(expr, sympy.logic.boolalg.Boolean) and not getattr(expr, "free_symbols", True)


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
        if self.expr is None:
            self.expr = []
            if self.norm and len(self.norm) <= MAX_PARSE_CHARS:
                if _STORE is not None and _STORE.restore(self):
                    return self.expr
                try:
                    with _time_limit(timeout_s, ("parse", self.norm)):
                        # As inline math first (math-verify reads "18%" and units there), then
                        # boxed (it reads "\\frac{24}{5}." there): the answer is whichever parses.
                        # math-verify's parse is [expression, matched string]; verify compares
                        # both, so both are kept (the string equates "05:00" with "05:00 cm").
                        # Where neither wrapping yields an expression, math-verify compares the
                        # matched strings ("\\sin^2 t" and "\\sin^2 t cm" both match "\\sin^2").
                        strings: list = []
                        for wrapped in ("$" + self.norm + "$", "\\boxed{" + self.norm + "}"):
                            parsed = _mv_parse(
                                wrapped,
                                extraction_config=_LATEX_ONLY,
                                parsing_timeout=None,
                                fallback_mode="first_match",
                            )
                            if any(not isinstance(e, str) for e in parsed):
                                self.expr = list(parsed)
                                break
                            strings = strings or list(parsed)
                        else:
                            self.expr = strings
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
        elif isinstance(first, sympy.Expr) and first.has(_PERCENT):
            # math-verify's percentages equal both X and X/100: only its verify decides them.
            self.scalar = True
        elif isinstance(first, sympy.Expr):
            self.scalar = True
            try:
                with _time_limit(timeout_s, ("parse", self.norm)):
                    self.value, self.constant = _value_at_probe(first)
            except GradingTimeout:
                _CUT_PARSES.add(self.norm)
                self.expr = []
                return False
        return True


def _percent() -> Any:
    import sympy

    return sympy.UnevaluatedExpr(sympy.Rational(1, 100))  # latex2sympy's "X%" = X * this


_PERCENT = _percent()


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


class ParseStore:
    """Parsed answers on disk, shared by every grading call that names the same file.

    A sweep grades the same gold answers, and largely the same model answers, in every
    cell's evaluation and in every round; parsing (math-verify's antlr LaTeX front end) is
    the cost. The store keeps each normalised string's parse and probe facts in SQLite
    (concurrent readers and writers from several processes are safe). The file name carries
    the versions of this module's parser setup and of math-verify, so a change in either
    starts a new file. Timed-out parses are never stored. Entries are pickled sympy
    objects: keep the file where you keep your checkpoints.
    """

    VERSION = 2
    _FIELDS = ("expr", "value", "constant", "scalar", "items", "interval")

    def __init__(self, path: str | Path):
        import sqlite3

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS parses (norm TEXT PRIMARY KEY, facts BLOB)")
        self._pending: dict[str, bytes] = {}
        self.hits = 0

    @classmethod
    def in_dir(cls, directory: str | Path) -> ParseStore:
        from importlib.metadata import version as installed

        version = installed("math-verify")
        return cls(Path(directory) / f"parses-v{cls.VERSION}-math-verify-{version}.sqlite")

    def restore(self, parsed: _Parsed) -> bool:
        import pickle

        row = self._db.execute("SELECT facts FROM parses WHERE norm = ?", (parsed.norm,)).fetchone()
        if row is None:
            return False
        try:
            facts = pickle.loads(row[0])
        except Exception:  # an entry written by another sympy version: parse again
            return False
        for name, value in zip(self._FIELDS, facts, strict=True):
            setattr(parsed, name, value)
        self.hits += 1
        return True

    def add(self, parsed: _Parsed) -> None:
        import pickle

        # An object sympy cannot pickle is simply parsed again next time.
        with contextlib.suppress(Exception):
            self._pending[parsed.norm] = pickle.dumps(tuple(getattr(parsed, f) for f in self._FIELDS))

    def flush(self) -> None:
        if self._pending:
            with self._db:
                self._db.executemany(
                    "INSERT OR IGNORE INTO parses (norm, facts) VALUES (?, ?)", list(self._pending.items())
                )
            self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._db.close()


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
        gap = abs(a.value - b.value)
        if gap > 1e-6 * scale:
            return False  # they differ at the probe point: not equal, no symbolic verify
        if a.constant and b.constant and gap <= 1e-12 * max(abs(a.value), abs(b.value)):
            # Two constants equal to 12 significant digits at 30-digit precision (relative:
            # 1/29322216 and 1/29322316 differ by 1e-13 absolutely and are not equal).
            return True
    if (a.items >= 2 and b.scalar) or (b.items >= 2 and a.scalar):
        return False  # a tuple / set / matrix of several items is never one number
    if (a.interval and b.scalar and b.constant) or (b.interval and a.scalar and a.constant):
        return False  # an interval is never a number
    try:
        with _time_limit(timeout_s, ("verify", a.norm, b.norm)):
            return bool(_mv_verify(pa, pb, timeout_seconds=None) or _mv_verify(pb, pa, timeout_seconds=None))
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


# --------------------------------------------------------------------------- clustering


def cluster_answers(
    answers: Sequence[str | None],
    mode: ClusterMode = "equivalence",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[int]:
    """Cluster ids (0, 1, ... in order of first appearance) for a list of answers.

    ``equivalence``: answers share an id when :func:`answers_equal` holds with the
    cluster's first member. ``string``: identical normalised strings share an id (the
    reference implementation's behaviour). All ``None`` answers share one cluster.
    Each distinct string is parsed and compared once.
    """
    if mode not in CLUSTER_MODES:
        raise ValueError(f"unknown cluster mode {mode!r}; allowed: {', '.join(CLUSTER_MODES)}")
    by_norm: dict[str, int] = {}
    representatives: list[_Parsed | None] = []  # cluster id -> first member (None = no answer)
    none_cluster: int | None = None
    ids: list[int] = []
    for answer in answers:
        if answer is None:
            if none_cluster is None:
                none_cluster = len(representatives)
                representatives.append(None)
            ids.append(none_cluster)
            continue
        norm = normalize_answer(answer)
        if norm in by_norm:
            ids.append(by_norm[norm])
            continue
        cid = None
        if mode == "equivalence":
            p = _parsed(norm)
            for k, rep in enumerate(representatives):
                if rep is not None and _equal_parsed(rep, p, timeout_s):
                    cid = k
                    break
        if cid is None:
            cid = len(representatives)
            representatives.append(_parsed(norm))
        by_norm[norm] = cid
        ids.append(cid)
    return ids


# --------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class QuestionGrade:
    """Everything EAST needs to know about one question's n sampled responses."""

    answers: list[str | None]  # extracted final answer per response
    boxed: list[bool]  # the answer came from \boxed{} / \fbox{}
    correct: list[bool]  # equivalent to the gold answer
    cluster_ids: list[int]  # per response, 0.. in order of first appearance
    cluster_sizes: list[int]  # per cluster id
    cluster_correct: list[bool]  # per cluster id
    no_answer_cluster: int | None  # the id of the "no answer" cluster, if any
    entropy: float  # H of the cluster distribution, bits
    accuracy: float  # A: share of correct responses
    rejected_share: float  # R: share of the most frequent incorrect (answered) cluster
    top_incorrect_cluster: int | None  # the cluster R refers to
    # Responses whose grading a time or size bound cut (compared by string only from there).
    timeouts: int = 0

    @property
    def n(self) -> int:
        return len(self.answers)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def grade_question(
    responses: Sequence[str],
    gold: str,
    *,
    mode: ClusterMode = "equivalence",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fallback: Fallback = "none",
) -> QuestionGrade:
    """Extract, cluster and grade the n responses of one question against its gold answer.

    ``fallback`` is the extraction policy for responses that state no final answer (see
    :data:`FALLBACKS`); an answer found by it is not ``boxed``.
    """
    if isinstance(responses, str):
        raise TypeError("responses must be a sequence of strings, not one string")
    if len(responses) == 0:
        raise ValueError("grade_question needs at least one response (got an empty list)")
    if gold is None or not str(gold).strip():
        raise ValueError("grade_question needs a non-empty gold answer")
    extracted = [extract_answer_with_source(r, fallback) for r in responses]
    answers = [a for a, _ in extracted]
    boxed = [src == "boxed" for _, src in extracted]
    ids = cluster_answers(answers, mode, timeout_s=timeout_s)
    k = max(ids) + 1
    sizes = [0] * k
    first_member: list[int] = [-1] * k
    for i, cid in enumerate(ids):
        sizes[cid] += 1
        if first_member[cid] < 0:
            first_member[cid] = i
    no_answer = next((c for c in range(k) if answers[first_member[c]] is None), None)
    if mode == "equivalence":
        cluster_correct = [
            c != no_answer and answers_equal(gold, answers[first_member[c]], timeout_s=timeout_s)
            for c in range(k)
        ]
        correct = [cluster_correct[c] for c in ids]
    else:  # string clusters are graded per response: "0.5" and "1/2" are both right
        correct = [a is not None and answers_equal(gold, a, timeout_s=timeout_s) for a in answers]
        cluster_correct = [correct[first_member[c]] for c in range(k)]
    n = len(responses)
    timeouts = _count_cut(answers, ids, first_member, gold, mode)
    wrong = [c for c in range(k) if not cluster_correct[c] and c != no_answer]
    top_wrong = max(wrong, key=lambda c: (sizes[c], -c)) if wrong else None
    return QuestionGrade(
        answers=answers,
        boxed=boxed,
        correct=correct,
        cluster_ids=ids,
        cluster_sizes=sizes,
        cluster_correct=cluster_correct,
        no_answer_cluster=no_answer,
        entropy=entropy(sizes),
        accuracy=sum(correct) / n,
        rejected_share=(sizes[top_wrong] / n) if top_wrong is not None else 0.0,
        top_incorrect_cluster=top_wrong,
        timeouts=timeouts,
    )


def _count_cut(
    answers: list[str | None], ids: list[int], first_member: list[int], gold: str, mode: str
) -> int:
    """How many responses a time or size bound may have misgraded: their parse, the gold's,
    their cluster's comparison with the gold, or their comparison with a cluster was cut."""
    if not (_CUT_PARSES or _CUT_PAIRS):
        return 0
    g = normalize_answer(gold)
    norms = [None if a is None else normalize_answer(a) for a in answers]
    reps = [norms[i] for i in first_member]
    count = 0
    for norm, cid in zip(norms, ids):
        if norm is None or norm == g:
            continue
        rep = reps[cid]
        with_gold = _timed_out(g, norm) or (rep is not None and _timed_out(g, rep))
        with_clusters = mode == "equivalence" and any(
            r is not None and frozenset((norm, r)) in _CUT_PAIRS for r in reps
        )
        count += with_gold or with_clusters
    return count


def grade_questions(
    items: Sequence[tuple[Sequence[str], str]],
    *,
    mode: ClusterMode = "equivalence",
    processes: int = 1,
    chunk_size: int = 16,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fallback: Fallback = "none",
    store: str | Path | None = None,
) -> list[QuestionGrade]:
    """Grade many ``(responses, gold)`` pairs, in order, in ``processes`` worker processes.

    The workers are supervised (:mod:`east.grading_pool`): an operation that outlives its
    bound in C code, where ``SIGALRM`` cannot stop it, is killed, and the answers it
    touched are compared by string only and counted in ``QuestionGrade.timeouts``. Each
    worker keeps its own parse cache for the life of the process. ``store``: a folder for
    the on-disk :class:`ParseStore` shared across calls (a sweep's cache dir).
    """
    from east import grading_pool

    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown extraction fallback {fallback!r}; allowed: {', '.join(FALLBACKS)}")
    if mode not in CLUSTER_MODES:
        raise ValueError(f"unknown cluster mode {mode!r}; allowed: {', '.join(CLUSTER_MODES)}")
    items = list(items)
    if not items:
        return []
    settings = grading_pool.Settings(mode, float(timeout_s), fallback, None if store is None else str(store))
    return grading_pool.pool(processes).grade(items, settings, chunk_size)

"""Final answers out of model text: extraction (``\\boxed{}``, ``####``, "the answer is",
the last-number fallback), gold answers out of reference solutions, and normalisation.

Pure Python, linear in the text's length; no math-verify, no sympy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction

__all__ = [
    "FALLBACKS",
    "Fallback",
    "extract_answer",
    "extract_answer_with_source",
    "gold_from_gsm8k",
    "gold_from_math",
    "normalize_answer",
]

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


class Fallback(StrEnum):
    """What to take from a response that states no final answer (no box, no "####", no "the
    answer is"): ``none`` counts it as unanswered; ``last_number`` takes the last number in
    the text, as the Qwen2.5-Math evaluation toolkit (the paper's evaluator) does."""

    none = "none"
    last_number = "last_number"


FALLBACKS: tuple[str, ...] = tuple(f.value for f in Fallback)
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

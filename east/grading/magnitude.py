"""How large an answer's numbers may grow before sympy evaluates them: an upper bound on the
decimal digits of every subterm, computed without evaluating (part of east.grading.equivalence,
which refuses symbolic comparison beyond ``MAX_DIGITS``)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_DIGITS"]


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

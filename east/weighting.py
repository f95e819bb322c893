"""Mapping functions that turn a per-question uncertainty signal into training weights.

Pure NumPy. A mapping is registered by name with the per-question statistic it reads
(``entropy``, ``accuracy`` or ``rejected``; see :class:`east.grading.QuestionGrade`) and
returns non-negative weights whose mean over the given training set is exactly 1:

    f(s_i) = g(s_i; a) / mean_j g(s_j; a)

The normaliser is always computed from the data of the run (the reference code divided by
a constant typed into its shell scripts). Adding a mapping is one decorated function::

    @register_mapping("my_mapping", signal="entropy")
    def my_mapping(h: np.ndarray, a: float) -> np.ndarray:
        return np.log1p(h) ** a
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from east.errors import UserError

__all__ = [
    "MAPPINGS",
    "SIGNALS",
    "MappingSpec",
    "WeightingError",
    "canonical",
    "compute_weights",
    "entropy",
    "get_mapping",
    "is_vanilla",
    "normalize",
    "register_mapping",
]

#: Per-question statistics a mapping may read: the first three are fields of
#: :class:`east.grading.QuestionGrade`; token_entropy is recorded by the sampler.
SIGNALS: dict[str, str] = {
    "entropy": "H, bits, of the answer-cluster distribution (QuestionGrade.entropy)",
    "accuracy": "A, share of correct responses (QuestionGrade.accuracy)",
    "rejected": "R, share of the most frequent incorrect answer (QuestionGrade.rejected_share)",
    "token_entropy": "mean token-level entropy of the sampled responses (the sampler's record)",
}


class WeightingError(UserError):
    """Weights that cannot be computed from this run's data and mapping (a degenerate signal, a
    mapping that returns no valid weights): the run's to fix, reported in one line."""


@dataclass(frozen=True)
class MappingSpec:
    name: str
    signal: str
    raw: Callable[[np.ndarray, float], np.ndarray]  # un-normalised g(s; a)
    doc: str
    # Declared, not assumed: sharpness 0 gives every question weight 1, so a run at a = 0 is
    # vanilla (tabled as such, and it reuses the uniform run's records and model).
    uniform_at_zero: bool = False

    def __call__(self, signal: Sequence[float] | np.ndarray, sharpness: float) -> np.ndarray:
        s = _check_signal(signal, self.name, self.signal)
        a = _check_sharpness(sharpness)
        what = f"mapping {self.name!r} (sharpness {a:g})"
        try:
            raw = self.raw(s, a)
        except WeightingError:
            raise
        except Exception as e:  # a mapping of the user's: its own error, named, in one line
            raise WeightingError(f"{what} raised {type(e).__name__}: {e}") from e
        return normalize(_check_raw(raw, s.shape, what), what=what)


MAPPINGS: dict[str, MappingSpec] = {}


def register_mapping(name: str, *, signal: str = "entropy", uniform_at_zero: bool = False) -> Callable:
    """Register ``fn(signal, sharpness) -> raw weights`` under ``name``; it is normalised to
    mean 1 and its input and output are checked by the registry (one finite, non-negative
    weight per question), so ``fn`` holds only the formula.

    ``uniform_at_zero=True`` declares that sharpness 0 gives every question the same weight
    (as ``power``'s h^0 does): a run at a = 0 is then vanilla, tabled as such, and reuses the
    uniform run's cached records and model without calling ``fn``. Off by default: at a = 0 a
    mapping of yours runs its formula like at any other sharpness."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; allowed: {', '.join(SIGNALS)}")

    def decorator(fn: Callable[[np.ndarray, float], np.ndarray]) -> MappingSpec:
        if name in MAPPINGS:
            raise ValueError(f"mapping {name!r} is already registered")
        spec = MappingSpec(name, signal, fn, (fn.__doc__ or "").strip(), uniform_at_zero)
        MAPPINGS[name] = spec
        return spec

    return decorator


def get_mapping(name: str) -> MappingSpec:
    try:
        return MAPPINGS[name]
    except KeyError:
        raise ValueError(f"unknown mapping {name!r}; allowed: {', '.join(sorted(MAPPINGS))}") from None


def is_vanilla(mapping: str, sharpness: float) -> bool:
    """Whether a run with this weighting is vanilla self-training (every weight 1): the
    ``uniform`` mapping, or any mapping registered as uniform at sharpness 0 with a = 0. The
    one rule the results table and the figures share."""
    spec = MAPPINGS.get(mapping)
    return mapping == "uniform" or (spec is not None and spec.uniform_at_zero and float(sharpness) == 0.0)


def canonical(mapping: str, sharpness: float) -> tuple[str, float]:
    """The weighting a run's training records depend on: ``("uniform", 0.0)`` for every
    vanilla run (``power`` at a = 0 trains exactly what ``uniform`` trains, so a sharpness
    sweep through 0 reuses the uniform run's cached records and model), else its own."""
    return ("uniform", 0.0) if is_vanilla(mapping, sharpness) else (mapping, sharpness)


# --------------------------------------------------------------------------- checks


def _check_sharpness(a: float) -> float:
    try:
        a = float(a)
    except (TypeError, ValueError):
        raise WeightingError(f"sharpness must be a finite number, got {a!r}") from None
    if not math.isfinite(a):
        raise WeightingError(f"sharpness must be finite, got {a}")
    return a


def _check_signal(signal: Sequence[float] | np.ndarray, mapping: str, kind: str) -> np.ndarray:
    s = np.asarray(signal, dtype=np.float64)
    if s.ndim != 1:
        raise WeightingError(f"mapping {mapping!r}: the {kind} signal must be 1-D, got shape {s.shape}")
    if s.size == 0:
        raise WeightingError(f"mapping {mapping!r}: empty training set (no {kind} values)")
    _finite_non_negative(s, f"mapping {mapping!r}", kind)
    return s


def _finite_non_negative(values: np.ndarray, what: str, kind: str) -> None:
    """Raise naming the first value of ``values`` that is not finite, or negative."""
    for bad, word in ((~np.isfinite(values), "non-finite"), (values < 0, "negative")):
        found = np.flatnonzero(bad)
        if found.size:
            i = int(found[0])
            raise WeightingError(f"{what}: {word} {kind} at index {i}: {values[i]:g}")


def _check_raw(raw: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A mapping's raw weights: one finite, non-negative number per question."""
    try:
        w = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise WeightingError(f"{what} returned {type(raw).__name__}, not an array of numbers") from None
    if w.shape != shape:
        raise WeightingError(
            f"{what} returned shape {w.shape} for {shape[0]} questions: it must return one weight per question"
        )
    return w


def normalize(raw: np.ndarray, *, what: str = "weights") -> np.ndarray:
    """Divide by the mean so the weights average exactly 1 over this set."""
    raw = np.asarray(raw, dtype=np.float64)
    _finite_non_negative(raw, what, "raw weight")
    mean = raw.mean()
    if mean <= 0:
        raise WeightingError(f"{what}: every raw weight is zero, so they cannot be normalised to mean 1")
    w = raw / mean
    # One correction step removes the last-ulp drift of the division.
    return w / w.mean()


def _zero_with_negative_power(s: np.ndarray, a: float, mapping: str, what: str) -> None:
    if a < 0 and np.any(s == 0):
        i = int(np.flatnonzero(s == 0)[0])
        raise WeightingError(
            f"mapping {mapping!r}: sharpness {a} < 0 is undefined for a zero {what} "
            f"(index {i}); keep the all-correct filter on or use a >= 0"
        )


# --------------------------------------------------------------------------- mappings


@register_mapping("power", signal="entropy", uniform_at_zero=True)
def _power(h: np.ndarray, a: float) -> np.ndarray:
    """The paper's mapping: h^a / mean(h^a). a > 0 favours uncertain questions."""
    if a == 0:
        return np.ones_like(h)
    _zero_with_negative_power(h, a, "power", "entropy")
    return h**a


@register_mapping("uniform", signal="entropy", uniform_at_zero=True)
def _uniform(h: np.ndarray, a: float) -> np.ndarray:
    """Vanilla self-training: every kept question weighs 1 (power with a = 0)."""
    return np.ones_like(h)


@register_mapping("accuracy", signal="accuracy", uniform_at_zero=True)
def _accuracy(acc: np.ndarray, a: float) -> np.ndarray:
    """Paper baseline: (1 - A)^a, A = share of correct responses."""
    if np.any(acc > 1):
        i = int(np.flatnonzero(acc > 1)[0])
        raise WeightingError(f"mapping 'accuracy': accuracy above 1 at index {i}: {acc[i]}")
    if a == 0:
        return np.ones_like(acc)
    err = 1.0 - acc
    _zero_with_negative_power(err, a, "accuracy", "error rate (1 - accuracy)")
    return err**a


@register_mapping("rejected", signal="rejected", uniform_at_zero=True)
def _rejected(r: np.ndarray, a: float) -> np.ndarray:
    """Paper baseline: R^a, R = share of the most frequent incorrect answer."""
    if a == 0:
        return np.ones_like(r)
    _zero_with_negative_power(r, a, "rejected", "rejected share")
    return r**a


@register_mapping("local_uncertainty", signal="token_entropy", uniform_at_zero=True)
def _local_uncertainty(u: np.ndarray, a: float) -> np.ndarray:
    """Paper baseline ("local uncertainty"): u^a normalised, u = mean token entropy of the
    question's sampled responses under the sampling model (recorded while sampling)."""
    if a == 0:
        return np.ones_like(u)
    _zero_with_negative_power(u, a, "local_uncertainty", "token entropy")
    return u**a


@register_mapping("exponential", signal="entropy", uniform_at_zero=True)
def _exponential(h: np.ndarray, a: float) -> np.ndarray:
    """e^{a h}: defined at h = 0 for every a, bounded for a < 0 (softmax-like tilt)."""
    z = a * h
    return np.exp(z - z.max())  # shift for overflow safety; cancels in the normalisation


# --------------------------------------------------------------------------- helpers


def entropy(cluster_sizes: Sequence[int]) -> float:
    """Shannon entropy, in bits, of the distribution proportional to ``cluster_sizes``."""
    sizes = np.asarray(cluster_sizes, dtype=np.float64)
    if sizes.size == 0 or sizes.sum() <= 0 or np.any(sizes < 0):
        raise ValueError(f"entropy needs non-negative cluster sizes with a positive sum: {cluster_sizes}")
    p = sizes[sizes > 0] / sizes.sum()
    h = float(-(p * np.log2(p)).sum())
    return h if h > 0 else 0.0  # one cluster: exactly 0.0, not -0.0


def compute_weights(values: Sequence[float] | np.ndarray, mapping: str, sharpness: float) -> np.ndarray:
    """Weights for a training set: the mapping ``mapping`` applied to the per-question values
    of the signal it reads (``get_mapping(mapping).signal``, e.g. each question's entropy)."""
    return get_mapping(mapping)(values, sharpness)

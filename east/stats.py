"""Paired comparisons of two rows of the results table: how much does a weighting change
accuracy, and how sure are we.

Both rows are evaluated on the same test questions with the same seeds, so the comparison
is paired: for seed s and question q, d[s, q] = correct_A[s, q] - correct_B[s, q] (each 0
or 1). The estimate is the mean difference in accuracy points,

    Δ = 100 · mean_s mean_q d[s, q],

its uncertainty a paired bootstrap over test questions, and its p-value a paired sign-flip
permutation test. The resampled unit is the question, drawn once for every seed: all seeds
answer the same test questions, so a question's difficulty is shared by the seeds, and
drawing questions independently per seed would treat those shared draws as independent
and give intervals that are too narrow. Within that draw every seed keeps its own pairing,
and the seeds are pooled by the mean. ``tests/unit/test_stats.py`` checks the coverage on
simulated rows.

Pure NumPy: no torch, no Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

__all__ = ["PairedComparison", "accuracy_interval", "paired_comparison"]


@dataclass(frozen=True)
class PairedComparison:
    """Δ (accuracy points, A minus B), its 95% (or ``level``) bootstrap interval, the
    two-sided p-value, and what they rest on."""

    delta: float
    low: float
    high: float
    p_value: float
    seeds: int
    questions: int
    level: float = 0.95

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def paired_comparison(
    a: np.ndarray | list[list[bool]],
    b: np.ndarray | list[list[bool]],
    *,
    resamples: int = 10_000,
    permutations: int = 20_000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two rows from their per-seed, per-question correctness.

    ``a`` and ``b``: arrays of shape (seeds, questions), row s of each from the same seed and
    column q from the same question (align them by question id first). Returns Δ = 100 ·
    mean(a - b) with a percentile bootstrap interval (questions resampled with replacement,
    the same draw for every seed) and the p-value of a sign-flip permutation test (under the
    null, swapping A and B on a question changes nothing; exact when at most 16 questions
    differ, else ``permutations`` random flips).
    """
    a, b = _check(a, b)
    seeds, questions = a.shape
    # Per question, the difference averaged over seeds: the bootstrap's and the test's unit.
    per_question = (a - b).mean(axis=0)
    delta = 100.0 * float(per_question.mean())
    rng = np.random.default_rng(seed)
    draws = _resampled_means(per_question, resamples, rng)
    tail = (1.0 - level) / 2.0
    low, high = (100.0 * float(q) for q in np.quantile(draws, [tail, 1.0 - tail]))
    # Rounding noise must not open an interval around an exact zero difference.
    if np.all(per_question == 0):
        low = high = 0.0
    p_value = _sign_flip_p(per_question, permutations, rng)
    return PairedComparison(delta, low, high, p_value, seeds, questions, level)


def accuracy_interval(
    correct: np.ndarray | list[list[bool]], *, resamples: int = 4000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """One row's accuracy (points) over seeds and questions, and its percentile bootstrap
    interval (questions resampled, the same draw for every seed): the band of the
    accuracy-vs-sharpness figure."""
    a, _ = _check(correct, correct)
    per_question = a.mean(axis=0)
    draws = _resampled_means(per_question, resamples, np.random.default_rng(seed))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return 100.0 * float(per_question.mean()), 100.0 * float(low), 100.0 * float(high)


def _check(a: np.ndarray | list, b: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1 and b.ndim == 1:  # one seed
        a, b = a[None, :], b[None, :]
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"paired rows need the same (seeds, questions) shape, got {a.shape} and {b.shape}")
    if a.shape[1] == 0:
        raise ValueError("paired rows need at least one question")
    for name, x in (("a", a), ("b", b)):
        if not np.all((x == 0) | (x == 1)):
            raise ValueError(f"row {name} must hold correctness values 0/1 (or booleans)")
    return a, b


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = values.size
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def format_p(p: float) -> str:
    """A p-value as tables and summaries print it: ``=0.014``, or ``<0.001`` below 0.001 (a
    Monte Carlo p-value is never 0; its digits down there are the resampling's)."""
    return f"={p:.2g}" if p >= 0.001 else "<0.001"


def _sign_flip_p(values: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of the sign-flip test on the sum of ``values``."""
    nonzero = values[values != 0]
    observed = abs(nonzero.sum())
    if nonzero.size == 0:
        return 1.0
    tol = 1e-9 * max(1.0, float(np.abs(nonzero).sum()))
    if nonzero.size <= 16:  # exact: every assignment of signs
        signs = np.array(list(product((1.0, -1.0), repeat=nonzero.size)))
        return float(np.mean(np.abs(signs @ nonzero) >= observed - tol))
    hits = 0
    chunk = max(1, 2_000_000 // nonzero.size)
    for start in range(0, permutations, chunk):
        size = min(chunk, permutations - start)
        signs = rng.choice((-1.0, 1.0), size=(size, nonzero.size))
        hits += int(np.sum(np.abs(signs @ nonzero) >= observed - tol))
    return (hits + 1) / (permutations + 1)

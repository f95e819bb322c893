"""Paired timing: two variants of one operation, interleaved, with an interval for their ratio.

On a shared machine, load drifts over seconds; timing A for a while and then B confounds the
drift with the difference. Here each repetition times A and B back to back (their order
alternating), the statistic is the geometric mean of the per-pair ratios A/B, and a 95%
bootstrap interval over the pairs says how sure it is. A ratio whose interval holds 1.0
is no measurable difference.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable


def paired_times(
    a: Callable[[], object],
    b: Callable[[], object],
    reps: int,
    warmup: int = 3,
    sync: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """``reps`` (time of a, time of b) pairs after ``warmup`` untimed pairs; ``sync`` (e.g.
    torch.cuda.synchronize) runs before and after each timed call."""
    sync = sync or (lambda: None)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(warmup + reps):
        order = ((a, ta), (b, tb)) if i % 2 else ((b, tb), (a, ta))
        for fn, sink in order:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                sink.append(time.perf_counter() - start)
    return ta, tb


def ratio_with_interval(
    ta: list[float], tb: list[float], resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Geometric-mean ratio a/b over the pairs and its 95% percentile-bootstrap interval."""
    logs = [math.log(x / y) for x, y in zip(ta, tb, strict=True)]
    rng = random.Random(seed)
    n = len(logs)
    means = sorted(sum(rng.choice(logs) for _ in range(n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    return {
        "ratio": round(math.exp(sum(logs) / n), 4),
        "ci_low": round(math.exp(low), 4),
        "ci_high": round(math.exp(high), 4),
        "pairs": n,
        "a_ms": round(1000 * sorted(ta)[n // 2], 2),
        "b_ms": round(1000 * sorted(tb)[n // 2], 2),
    }

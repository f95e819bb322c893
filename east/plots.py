"""Figures: the mapping functions, per-run entropy/weight plots, accuracy vs sharpness.

Each function writes a PNG and returns its path (matplotlib, headless Agg backend).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from east.weighting import get_mapping


def plot_mappings(
    path: str | Path,
    mapping: str = "power",
    sharpness: tuple[float, ...] = (-2, -1, 0, 0.5, 1, 2, 3),
    n: int = 8,
) -> Path:
    """Weight vs entropy for several sharpness values (the paper's overview figure), computed
    by the registered mapping over entropies spread evenly on (0, log2 n]."""
    h = np.linspace(np.log2(n) / 50, np.log2(n), 50)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for a in sharpness:
        ax.plot(h, get_mapping(mapping)(h, a), label=f"a = {a:g}")
    ax.set(xlabel="entropy h (bits)", ylabel="weight f(h)", title=f"{mapping} mapping (weights average 1)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_run(histograms: dict[str, list[float]], out_dir: str | Path) -> list[Path]:
    """Histogram of the training questions' entropies; weight vs entropy of the kept ones."""
    out_dir = Path(out_dir)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = shared_bins(histograms["entropy"], histograms["kept_entropy"])  # one bar width for both
    ax.hist(histograms["entropy"], bins=bins, color="tab:blue", alpha=0.8, label="all questions")
    ax.hist(histograms["kept_entropy"], bins=bins, color="tab:orange", alpha=0.6, label="kept")
    ax.set(xlabel="entropy (bits)", ylabel="questions", title="answer entropy of training questions")
    ax.legend()
    first = _save(fig, out_dir / "entropy_hist.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(histograms["kept_entropy"], histograms["weight"], s=10)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="entropy (bits)", ylabel="weight", title="weight vs entropy (kept questions)")
    return [first, _save(fig, out_dir / "weight_vs_entropy.png")]


def shared_bins(*series: list[float], bins: int = 20) -> np.ndarray:
    """Bin edges spanning every series, so that histograms drawn over each other compare bar
    for bar (each series binned on its own range would not)."""
    values = np.concatenate([np.asarray(s, dtype=float) for s in series if len(s)] or [np.zeros(1)])
    low, high = float(values.min()), float(values.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def sharpness_series(
    runs: list[dict[str, Any]],
) -> dict[tuple[str, str, str], dict[float, list[dict[str, Any]]]]:
    """(objective, mapping, test set) -> sharpness -> the trained runs there: one line per
    mapping of the sweep (every mapping, baselines too), each starting from the vanilla runs
    at a = 0 of its objective; vanilla runs alone make a ``uniform`` line."""
    from east.weighting import is_vanilla

    vanilla: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    lines: dict[tuple[str, str, str], dict[float, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in runs:
        run = r["run"]
        if run["objective"] == "none":
            continue
        for test, e in r["eval"].items():
            if e.get("trained") is None:
                continue
            if is_vanilla(run["mapping"], run["sharpness"]) or run.get("weights_uniform"):
                vanilla[(run["objective"], test)].append(r)
            else:
                lines[(run["objective"], run["mapping"], test)][float(run["sharpness"])].append(r)
    for (objective, test), at_zero in vanilla.items():
        mine = [k for k in lines if (k[0], k[2]) == (objective, test)]
        for key in mine or [(objective, "uniform", test)]:
            lines[key][0.0] = at_zero
    return dict(lines)


def plot_accuracy_vs_sharpness(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Trained accuracy vs sharpness per objective, mapping and test set (the paper's Figure 3
    for power; every other mapping of the sweep as its own labelled line), each from the
    vanilla runs at a = 0. Each point is the mean over seeds and questions; the band is its
    95% bootstrap interval over test questions where the runs stored predictions (else error
    bars: the seeds' standard deviation). A dashed line per test set marks the base model's
    accuracy (before self-training)."""
    from east.stats import accuracy_interval

    points = {(f"{o} {m}", t): by_a for (o, m, t), by_a in sharpness_series(runs).items()}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bases: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        for test, e in r["eval"].items():
            if e.get("base") is not None and any(t == test for _, t in points):
                bases[test].append(100 * e["base"])
    for test, values in sorted(bases.items()):  # greedy: the same under every seed
        ax.axhline(float(np.mean(values)), color="grey", ls="--", lw=1, label=f"base model / {test}")
    for (objective, test), by_a in sorted(points.items()):
        xs = sorted(by_a)
        stats = [_band(by_a[x], test, "trained", accuracy_interval) for x in xs]
        means = np.array([m for m, _, _ in stats])
        line = ax.plot(xs, means, marker="o", label=f"{objective} / {test}")[0]
        if all(lo is not None for _, lo, _ in stats):
            ax.fill_between(
                xs, [lo for _, lo, _ in stats], [hi for _, _, hi in stats], color=line.get_color(), alpha=0.2
            )
        else:
            spread = [
                np.std([100 * r["eval"][test]["trained"] for r in by_a[x]], ddof=1)
                if len(by_a[x]) > 1
                else 0.0
                for x in xs
            ]
            ax.errorbar(xs, means, yerr=spread, fmt="none", ecolor=line.get_color(), capsize=3)
    ax.set(
        xlabel="sharpness a",
        ylabel="accuracy (%)",
        title="accuracy vs sharpness (band: 95% CI over questions)",
    )
    if points:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy_vs_round(runs: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Accuracy after each round of iterative self-training (the paper's Figure 4), per
    objective, weighting and test set: the mean over seeds with its 95% band over test
    questions (round 0: the base model). None when no run has more than one round."""
    from east.stats import accuracy_interval
    from east.weighting import is_vanilla

    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if len(r.get("rounds") or []) > 1:
            run = r["run"]
            vanilla = is_vanilla(run["mapping"], run["sharpness"])
            label = run["objective"] + ("" if vanilla else f" + {run['mapping']} a={run['sharpness']:g}")
            for test in r["eval"]:
                series[(label, test)].append(r)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (label, test), group in sorted(series.items()):
        rounds = min(len(r["rounds"]) for r in group)
        xs, stats = [0], [_band(group, test, "base", accuracy_interval)]
        for k in range(1, rounds + 1):
            xs.append(k)
            stats.append(_band(group, test, f"round{k}", accuracy_interval, per_round=k - 1))
        line = ax.plot(xs, [m for m, _, _ in stats], marker="o", label=f"{label} / {test}")[0]
        if all(lo is not None for _, lo, _ in stats):
            ax.fill_between(
                xs, [lo for _, lo, _ in stats], [hi for _, _, hi in stats], color=line.get_color(), alpha=0.2
            )
    ax.set(
        xlabel="round", ylabel="accuracy (%)", title="iterative self-training (band: 95% CI over questions)"
    )
    ax.set_xticks(xs)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _band(
    runs: list[dict[str, Any]], test: str, which: str, interval: Any, per_round: int | None = None
) -> tuple[float, float | None, float | None]:
    """(mean, low, high) accuracy of ``which`` (base, trained, roundN) over ``runs``."""
    from east.runs import align, predictions_of

    preds = [predictions_of(r).get((test, which)) for r in runs]
    if all(preds) and (matrix := align(preds)):
        return interval(matrix)
    if per_round is not None:
        values = [100 * r["rounds"][per_round]["eval"][test] for r in runs]
    else:
        values = [100 * r["eval"][test][which] for r in runs]
    return float(np.mean(values)), None, None


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

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
    ax.hist(histograms["entropy"], bins=20, color="tab:blue", alpha=0.8, label="all questions")
    ax.hist(histograms["kept_entropy"], bins=20, color="tab:orange", alpha=0.6, label="kept")
    ax.set(xlabel="entropy (bits)", ylabel="questions", title="answer entropy of training questions")
    ax.legend()
    first = _save(fig, out_dir / "entropy_hist.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(histograms["kept_entropy"], histograms["weight"], s=10)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="entropy (bits)", ylabel="weight", title="weight vs entropy (kept questions)")
    return [first, _save(fig, out_dir / "weight_vs_entropy.png")]


def plot_accuracy_vs_sharpness(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Trained accuracy vs sharpness per objective and test set, mean and seed spread (the
    paper's Figure 3), for runs of the paper's mapping (power) and vanilla runs (at a = 0)."""
    from east.weighting import is_vanilla

    series: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r["run"]["objective"] == "none":
            continue
        if is_vanilla(r["run"]["mapping"], r["run"]["sharpness"]):
            a = 0.0
        elif r["run"]["mapping"] == "power":
            a = float(r["run"]["sharpness"])
        else:
            continue
        for test, e in r["eval"].items():
            if e.get("trained") is not None:
                series[(r["run"]["objective"], test)][a].append(100 * e["trained"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (objective, test), points in sorted(series.items()):
        xs = sorted(points)
        means = np.array([np.mean(points[x]) for x in xs])
        stds = np.array([np.std(points[x], ddof=1) if len(points[x]) > 1 else 0.0 for x in xs])
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=f"{objective} / {test}")
    ax.set(xlabel="sharpness a", ylabel="accuracy (%)", title="accuracy vs sharpness (mean ± std over seeds)")
    if series:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""What the data say about why EAST does or does not beat vanilla on a sweep of the testbed:
per seed, the entropy distribution of the kept training questions and the spread of EAST's
weights, and, per objective, on how many test questions EAST and vanilla disagree.

    python experiments/testbed/why.py --cache CACHE_DIR SWEEP_DIR

Prints readable lines and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from east.cache import read_json
from east.data.arith import count_flawed
from east.runs import collect_runs, graded_samples, predictions_of, stage_path
from east.weighting import is_vanilla


def _flawed_by_entropy(cache: Path, run: dict) -> list[float | None]:
    """Share of right-answer samples with wrong lines, among the questions with at least one
    right and one wrong answer, in their lowest, middle and highest third of entropy (None
    for a third with no question: fewer than three such questions)."""
    rows = []
    for problem, responses, g in graded_samples(cache, run):
        if 0 < g["accuracy"] < 1:
            right, flawed = count_flawed(problem, responses, g["correct"])
            rows.append((g["entropy"], flawed, right))
    rows.sort()
    thirds = np.array_split(np.arange(len(rows)), 3)
    return [
        round(sum(rows[i][1] for i in t) / sum(rows[i][2] for i in t), 3) if t.size else None for t in thirds
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    runs = collect_runs(args.sweep)
    out: dict = {"entropy": {}, "disagreement": {}}
    for r in runs:
        if r["run"]["mapping"] != "power" or r["run"]["objective"] != "sft":
            continue
        stats = read_json(stage_path(args.cache, r, "build") / "stats.json")
        h, w = np.asarray(stats["kept_entropy_values"]), np.asarray(stats["weight_values"])
        levels, counts = np.unique(np.round(h, 3), return_counts=True)
        out["entropy"][r["run"]["seed"]] = {
            "kept": int(h.size),
            "entropy_quartiles_bits": [round(float(q), 3) for q in np.quantile(h, [0.25, 0.5, 0.75])],
            "distinct_entropy_values": int(levels.size),
            "most_common_entropy_bits": [
                [float(v), int(c)] for v, c in sorted(zip(levels, counts), key=lambda x: -x[1])[:4]
            ],
            "weight_min_max": [round(float(w.min()), 3), round(float(w.max()), 3)],
            "weight_share_of_top_quarter": round(float(np.sort(w)[-len(w) // 4 :].sum() / w.sum()), 3),
            "flawed_share_by_entropy_tercile": _flawed_by_entropy(args.cache, r),
        }
    by: dict = defaultdict(dict)
    for r in runs:
        key = (r["run"]["objective"], r["run"]["seed"])
        preds = predictions_of(r).get(("arith", "trained"))
        if preds is not None:
            by[key]["vanilla" if is_vanilla(r["run"]["mapping"], r["run"]["sharpness"]) else "east"] = preds
    for (objective, seed), p in sorted(by.items()):
        if {"vanilla", "east"} <= set(p):
            ids = sorted(p["vanilla"])
            e_only = sum(p["east"][i] and not p["vanilla"][i] for i in ids)
            v_only = sum(p["vanilla"][i] and not p["east"][i] for i in ids)
            out["disagreement"][f"{objective}/{seed}"] = {
                "east_only_right": e_only,
                "vanilla_only_right": v_only,
                "questions": len(ids),
            }
    for section, values in out.items():
        for k, v in values.items():
            print(section, k, v)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

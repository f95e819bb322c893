"""Does EAST's weight go where training gains? Per seed of an SFT sweep on the testbed, the
base model, vanilla SFT and EAST (power) are decoded greedily on the *training* questions
they were trained on; for every kept question this gives vanilla's gain and EAST's gain
(trained correct - base correct, each -1, 0 or 1). The script reports:

- the rank correlation of EAST's weight with vanilla's gain (does uniform training already
  gain most where EAST would put more weight?) and with EAST's gain over vanilla (does the
  extra weight buy extra accuracy on the questions that receive it?);
- the mean gains by quarter of EAST's weight, lowest to highest, and EAST's gain minus
  vanilla's on all kept questions and per quarter with its 95% paired interval and p-value.

    python experiments/testbed/gain_vs_weight.py --cache CACHE_DIR SWEEP_DIR [--set KEY=VALUE ...]

SWEEP_DIR: a sweep with objective=sft, mapping=uniform and mapping=power runs (e.g.
experiments/testbed_table.sh's); CACHE_DIR: the stage cache it ran with. The greedy
evaluations on the training questions are cached there as ``evaluate`` stages (test set
``arith_train``). ``--set``: the overrides the sweep ran with beyond ``scale=testbed``. Prints
readable lines and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from east.cache import StageResult, read_jsonl
from east.runs import collect_runs, stage_path
from east.stats import paired_comparison
from east.weighting import is_vanilla


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _paired(east: np.ndarray, vanilla: np.ndarray) -> list[float]:
    """EAST's accuracy minus vanilla's on the same questions, points: [Δ, 95% low, high, p]
    (paired bootstrap and sign-flip test of east.stats)."""
    p = paired_comparison(east, vanilla)
    return [round(p.delta, 1), round(p.low, 1), round(p.high, 1), round(p.p_value, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], help="a Hydra override (repeatable)")
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from east.config import register_configs
    from east.data import load_splits
    from east.pipeline import stages_for
    from east.validate import validate

    runs = [r for r in collect_runs(args.sweep) if r["run"]["objective"] == "sft"]
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        which = "vanilla" if is_vanilla(r["run"]["mapping"], r["run"]["sharpness"]) else "east"
        if which == "east" and r["run"]["mapping"] != "power":
            continue
        by_seed.setdefault(r["run"]["seed"], {})[which] = r
    seeds = sorted(s for s, v in by_seed.items() if {"vanilla", "east"} <= set(v))
    if not seeds:
        raise SystemExit(f"{args.sweep}: no seed with both a vanilla and a power-mapping SFT run")

    register_configs()
    overrides = ["scale=testbed", "logger=none", f"paths.cache_dir={args.cache}", "paths.output_dir=/tmp/x"]
    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"
    ):
        c = validate(compose(config_name="config", overrides=[*overrides, *args.set]))
    stages = stages_for(c)
    train = load_splits(c.dataset).train

    def correct(run: dict, stage: str) -> dict[str, bool]:
        """Greedy correctness on the training questions of the run's base or trained model."""
        model = StageResult(stage, run["stages"][stage]["key"], stage_path(args.cache, run, stage), True, 0.0)
        result = stages.evaluate(model, "arith_train", train, f"evaluate_{stage}")
        return {p["id"]: bool(p["correct"]) for p in read_jsonl(result.path / "predictions.jsonl")}

    out: dict = {"seeds": {}}
    for seed in seeds:
        v, e = by_seed[seed]["vanilla"], by_seed[seed]["east"]
        base, van, east = correct(v, "base_model"), correct(v, "train"), correct(e, "train")
        records = read_jsonl(stage_path(args.cache, e, "build") / "records.jsonl")
        weight = {r["question_id"]: r["weight"] for r in records}  # one weight per question
        ids = sorted(weight)
        w = np.array([weight[i] for i in ids])
        c_base, c_van, c_east = (np.array([m[i] for i in ids], dtype=float) for m in (base, van, east))
        g_van, g_east = c_van - c_base, c_east - c_base
        quarters = np.array_split(np.argsort(w, kind="stable"), 4)
        row = {
            "kept": len(ids),
            "base_accuracy_on_kept": round(100 * c_base.mean(), 1),
            "vanilla_gain_on_kept": round(100 * g_van.mean(), 1),
            "east_gain_on_kept": round(100 * g_east.mean(), 1),
            "spearman_weight_vs_vanilla_gain": round(_spearman(w, g_van), 3),
            "spearman_weight_vs_east_minus_vanilla": round(_spearman(w, g_east - g_van), 3),
            "weight_by_quarter": [round(float(w[q].mean()), 2) for q in quarters],
            "vanilla_gain_by_quarter": [round(100 * float(g_van[q].mean()), 1) for q in quarters],
            "east_gain_by_quarter": [round(100 * float(g_east[q].mean()), 1) for q in quarters],
            # EAST's gain minus vanilla's = EAST's accuracy minus vanilla's (the base cancels).
            "east_minus_vanilla_on_kept": _paired(c_east, c_van),
            "east_minus_vanilla_by_quarter": [_paired(c_east[q], c_van[q]) for q in quarters],
        }
        out["seeds"][seed] = row
        print(f"seed {seed}:", json.dumps(row))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

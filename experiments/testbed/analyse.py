"""What a testbed run's samples say: the base model's spread of per-question accuracy, the
share of "correct" samples whose worked lines are wrong, and the gain of the trained model.

    python experiments/testbed/analyse.py --cache CACHE_DIR RUN_DIR [RUN_DIR ...]

Reads each run's results.json and the sample/grade artifacts its stage keys name. Prints a
line per run, then all of them as one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from east.data.arith import count_flawed
from east.runs import graded_samples


def analyse(run_dir: Path, cache: Path) -> dict[str, Any]:
    results = json.loads((run_dir / "results.json").read_text())
    out: dict[str, Any] = {"run": str(run_dir), **results["run"], "seconds": results["seconds"]}
    for test, e in results["eval"].items():
        out[f"{test}_base"] = None if e.get("base") is None else 100 * e["base"]
        out[f"{test}_trained"] = None if e.get("trained") is None else 100 * e["trained"]
        if e.get("base") is not None and e.get("trained") is not None:
            out[f"{test}_gain"] = round(100 * (e["trained"] - e["base"]), 2)
    stages = results["stages"]
    if "sample" not in stages:
        return out
    correct = flawed = 0
    accuracy = []
    for problem, responses, grade in graded_samples(cache, results):
        accuracy.append(grade["accuracy"])
        right, wrong_lines = count_flawed(problem, responses, grade["correct"])
        correct += right
        flawed += wrong_lines
    acc = np.asarray(accuracy)
    out.update(
        {
            "sample_accuracy": round(100 * float(acc.mean()), 2),
            "questions_all_wrong": round(100 * float(np.mean(acc == 0)), 1),
            "questions_all_right": round(100 * float(np.mean(acc == 1)), 1),
            "questions_mixed": round(100 * float(np.mean((acc > 0) & (acc < 1))), 1),
            "accuracy_quartiles": [round(float(q), 3) for q in np.quantile(acc, [0.25, 0.5, 0.75])],
            "correct_samples": correct,
            "flawed_chain_share": round(100 * flawed / correct, 2) if correct else None,
            "kept": results["data"]["kept"],
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    rows = [analyse(run, args.cache) for run in args.runs]
    for row in rows:
        print({k: v for k, v in row.items() if k != "run"})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

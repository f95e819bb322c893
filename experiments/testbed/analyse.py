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

from east.cache import read_jsonl
from east.data.arith import chain_is_correct
from east.data.problems import Problem


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
    samples = read_jsonl(cache / "sample" / stages["sample"]["key"] / "samples.jsonl")
    grades = {g["id"]: g for g in read_jsonl(cache / "grade" / stages["grade"]["key"] / "grades.jsonl")}
    correct = flawed = 0
    accuracy = []
    for row in samples:
        grade = grades[row["id"]]
        problem = Problem(row["id"], row["question"], row["gold"], row.get("solution"))
        accuracy.append(grade["accuracy"])
        for response, ok in zip(row["responses"], grade["correct"]):
            if ok:
                correct += 1
                flawed += not chain_is_correct(problem, response)
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

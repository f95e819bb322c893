"""Cold wall time of `python run.py` (the default, from an empty cache): this checkout
against a baseline checkout, run alternately on the same machine (old, new, old, new, ...),
median of N each. The ratio is what counts on a shared machine.

    git worktree add /tmp/baseline <commit>
    python experiments/benchmarks/default_cold_start.py --baseline /tmp/baseline --runs 3

Both checkouts run with this interpreter (its installed packages). Prints a line per run and,
last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cold_run(checkout: Path) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EAST_CACHE_DIR": f"{tmp}/cache", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "run.py", "logger=none", f"hydra.run.dir={tmp}/run"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: run.py failed\n{proc.stderr[-2000:]}")
    summary = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("EAST", "  ")))
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    for i in range(args.runs):
        for name, checkout in (("baseline", args.baseline), ("this", ROOT)):
            seconds, summary = cold_run(checkout)
            times[name].append(round(seconds, 1))
            print(f"run {i + 1} {name}: {seconds:.1f} s\n{summary}", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "baseline_seconds": times["baseline"],
                "this_seconds": times["this"],
                "baseline_median_s": medians["baseline"],
                "this_median_s": medians["this"],
                "ratio_this_over_baseline": round(medians["this"] / medians["baseline"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()

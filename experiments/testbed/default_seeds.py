"""The default (``python run.py``) over seeds of its tiny model's initialisation and warm-up
data order (``model.tiny.seed``): what another machine's arithmetic would move. Per seed:
the warm-up's wall time, questions kept, base and trained accuracy, and the gain with its 95%
paired interval and p-value, from each run's results.json (docs/testbed.md, "The default").

    python experiments/testbed/default_seeds.py --seeds 0 1 2 3 4 [--set model.tiny.warmup_steps=1000]

Runs ``python run.py -m logger=none model.tiny.seed=...`` (one cache: ``EAST_CACHE_DIR``, or a
fresh temporary one with ``--fresh``), prints a line per seed and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], help="a Hydra override (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="the sweep folder (default: a temporary one)")
    parser.add_argument("--fresh", action="store_true", help="a fresh cache (cold runs)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="default_seeds-"))
    env = dict(os.environ)
    if args.fresh:
        env["EAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="default_seeds-cache-")
    seeds = ",".join(str(s) for s in args.seeds)
    start = time.perf_counter()
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "logger=none",
        f"model.tiny.seed={seeds}",
        *args.set,
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    rows = []
    from east.runs import collect_runs

    for r in sorted(collect_runs(out), key=lambda r: int(Path(r["_path"]).name)):
        e = next(iter(r["eval"].values()))
        d = e["delta"]
        row = {
            "seed": args.seeds[int(Path(r["_path"]).name)],  # job i ran the i-th seed
            "warmup_s": round(r["stages"]["base_model"]["seconds"], 1),
            "run_s": round(r["seconds"], 1),
            "kept": r["data"]["kept"],
            "questions": r["data"]["questions"],
            "base": round(100 * e["base"], 1),
            "trained": round(100 * e["trained"], 1),
            # results.json gives the paired difference in points already
            "gain": round(d["delta"], 1),
            "low": round(d["low"], 1),
            "high": round(d["high"], 1),
            "p": d["p_value"],
        }
        rows.append(row)
        print(
            f"seed {row['seed']}: kept {row['kept']}/{row['questions']}, {row['base']} -> {row['trained']}, "
            f"{row['gain']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}] p={row['p']:.4f}, warm-up {row['warmup_s']} s"
        )
    clear = sum(1 for r in rows if r["low"] > 0)
    print(
        json.dumps(
            {
                "overrides": args.set,
                "seeds": rows,
                "intervals_clear_of_0": f"{clear}/{len(rows)}",
                "wall_s": round(time.perf_counter() - start, 1),
                "sweep": str(out),
            }
        )
    )


if __name__ == "__main__":
    main()

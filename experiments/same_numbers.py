"""Run the same experiments at two revisions of this repository and compare their numbers.

A refactor must leave every number a run reports unchanged: this runs each experiment (a
single run or a sweep, as ``run.py`` arguments) once with the code of BASE and once with the
code of HEAD (default: the working tree, uncommitted edits included), each with a cache of
its own, and compares every results.json they write, field by field, leaving out what
names a place or a time (paths, cache keys, seconds, the command line). Cache keys may move
when code moves (they hold the code's digest); the numbers may not.

    python experiments/same_numbers.py HEAD~3                  # the checks below
    python experiments/same_numbers.py v0.4 HEAD --run "debug=fast objective=dpo"

Default experiments: the default run (the tiny model on the embedded task, about 2 minutes
here), and a debug=fast sweep over SFT, DPO and KTO at sharpness 0 and 1. Prints each
difference, then one JSON line: {"same": ..., "results": n, "differences": [...]}. Exit
status 1 when any number differs or a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: What a run's results.json holds that names a place or a time, not a number of the method.
NOT_NUMBERS = frozenset({"seconds", "paths", "key", "overrides"})
DEFAULT_RUNS = ("", "-m debug=fast objective=sft,dpo,kto east.sharpness=0,1")


def comparable(value: Any) -> Any:
    """``value`` without the fields that name a place or a time (at any depth)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in NOT_NUMBERS}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Each place where ``a`` and ``b`` differ, as ``path: a -> b``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}")
            else:
                out += differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where or '/'}: {a!r} -> {b!r}"]


def compare_folders(base: Path, head: Path) -> tuple[int, list[str]]:
    """(results compared, differences) between the results.json files under two folders,
    matched by their path below each."""
    found = {
        side: {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("results.json"))}
        for side, root in (("base", base), ("head", head))
    }
    out = [
        f"{rel}: only in {side}"
        for side, other in (("base", "head"), ("head", "base"))
        for rel in sorted(set(found[side]) - set(found[other]))
    ]
    for rel in sorted(set(found["base"]) & set(found["head"])):
        a, b = (comparable(json.loads(found[side][rel].read_text())) for side in ("base", "head"))
        out += [f"{rel}{d}" for d in differences(a, b)]
    return len(set(found["base"]) | set(found["head"])), out


def checkout(revision: str, into: Path) -> Path:
    """A tree with the code of ``revision`` (a detached git worktree, removed at the end)."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(into), revision], cwd=ROOT, check=True
    )
    return into


def run_all(tree: Path, runs: list[str], out: Path, cache: Path) -> None:
    """Each of ``runs`` (run.py's arguments) with the code of ``tree``, into ``out/<i>``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),  # its east, not the installed one
        "EAST_CACHE_DIR": str(cache),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    for i, args in enumerate(runs):
        argv = shlex.split(args)
        folder = out / str(i)
        where = (
            f"hydra.sweep.dir={folder}" if "-m" in argv or "--multirun" in argv else f"hydra.run.dir={folder}"
        )
        cmd = [sys.executable, "run.py", *argv, where]
        print(f"{tree.name}: {' '.join(cmd[1:])}", file=sys.stderr)
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(
                f"{tree}: `python run.py {args}` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="a git revision: the code before")
    parser.add_argument("head", nargs="?", default=None, help="a git revision (default: the working tree)")
    parser.add_argument(
        "--run", action="append", default=None, help="run.py's arguments for one experiment (repeatable)"
    )
    args = parser.parse_args()
    runs = args.run if args.run is not None else list(DEFAULT_RUNS)
    work = Path(tempfile.mkdtemp(prefix="same-numbers-"))
    trees = []
    try:
        base = checkout(args.base, work / "base")
        trees.append(base)
        head = ROOT if args.head is None else checkout(args.head, work / "head")
        if args.head is not None:
            trees.append(head)
        for side, tree in (("base", base), ("head", head)):
            run_all(tree, runs, work / "out" / side, work / "cache" / side)
        n, diffs = compare_folders(work / "out" / "base", work / "out" / "head")
    finally:
        for tree in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    for d in diffs:
        print(d)
    print(
        json.dumps(
            {
                "base": args.base,
                "head": args.head or "working tree",
                "same": not diffs and n > 0,
                "results": n,
                "differences": diffs[:50],
            }
        )
    )
    sys.exit(0 if not diffs and n > 0 else 1)


if __name__ == "__main__":
    main()

"""Finished runs read back: their ``results.json`` from a sweep folder (or a W&B project, where
each run stores it in its summary) and their per-question predictions."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = [
    "align",
    "collect_runs",
    "collect_wandb",
    "graded_samples",
    "missing_cells",
    "predictions_of",
    "stage_path",
]

#: What a sweep job that failed leaves in its folder instead of results.json (run.py).
FAILED = "failed.json"


def resolve_sweep_dir(sweep_dir: str | Path) -> Path:
    """A sweep folder as a person means it: an absolute path as is; a relative one against the
    current folder, else against the repository root (a notebook's kernel runs in
    ``notebooks/``, where ``multirun/...`` is not). Raises FileNotFoundError naming where it
    looked."""
    path = Path(sweep_dir).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        root = Path(__file__).resolve().parents[1]
        candidates = [Path.cwd() / path]
        if (root / "run.py").exists() and root != Path.cwd():
            candidates.append(root / path)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"no sweep folder {str(sweep_dir)!r}: looked in {', '.join(map(str, candidates))}"
    )


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` below ``sweep_dir`` (sorted by path)."""
    paths = sorted(Path(sweep_dir).rglob("results.json"))
    runs = []
    for p in paths:
        r = json.loads(p.read_text())
        r["_path"] = str(p.parent)
        runs.append(r)
    return runs


def missing_cells(sweep_dir: str | Path, expected: list[str] | None = None) -> list[dict[str, str]]:
    """The cells of a sweep with no results: jobs (folders Hydra made, with ``.hydra/``) that
    left no ``results.json`` (nor, for a phase-A job, ``shared.json``), and with ``expected``
    experiment names, those no run reports. Each: ``cell``, ``folder`` and ``reason`` (the
    recorded error of a failed job; else that it never finished)."""
    sweep = Path(sweep_dir)
    failed = {}
    for f in sorted(sweep.rglob(FAILED)):
        record = json.loads(f.read_text())
        failed[str(f.parent)] = record
    out = []
    done = set()
    for job in sorted(p.parent for p in sweep.rglob(".hydra") if p.is_dir()):
        if (job / "results.json").exists() or (job / "shared.json").exists():
            if (job / "results.json").exists():
                done.add(json.loads((job / "results.json").read_text())["run"].get("experiment"))
            continue
        record = failed.get(str(job))
        cell = (record or {}).get("experiment") or job.name
        reason = f"failed: {record['error']}" if record else "no result (killed, or never ran)"
        out.append({"cell": cell, "folder": str(job), "reason": reason})
    for name in expected or []:
        if name not in done and not any(m["cell"] == name for m in out):
            out.append({"cell": name, "folder": str(sweep), "reason": "no result (not run)"})
    return out


def collect_wandb(
    project: str, entity: str | None = None, filters: dict | None = None
) -> list[dict[str, Any]]:
    """Runs of a W&B project (needs network and an API key)."""
    import wandb

    api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    runs = []
    for run in api.runs(path, filters=filters or {}):
        text = run.summary.get("results_json")
        if text:
            runs.append({**json.loads(text), "_path": run.url})
    return runs


def predictions_of(run: dict[str, Any]) -> dict[tuple[str, str], dict[str, bool]]:
    """(test set, ``base`` or ``trained``) -> {question id: correct} from the run folder's
    predictions.jsonl (empty for runs without one, e.g. collected from W&B)."""
    path = Path(str(run.get("_path", ""))) / "predictions.jsonl"
    if "_predictions" not in run:
        out: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
        if path.is_file():
            for line in path.read_text().splitlines():
                r = json.loads(line)
                out[(r["test"], r["model"])][r["id"]] = bool(r["correct"])
        run["_predictions"] = dict(out)
    return run["_predictions"]


def align(rows: list[dict[str, bool]]) -> list[list[bool]]:
    """Per-question correctness of several rows (each {question id: correct}, as
    ``predictions_of`` gives them) on the questions they all answered, in one id order: the
    (rows, questions) matrix the paired statistics take. Empty when no question is shared."""
    if not rows:
        return []
    ids = sorted(set.intersection(*(set(r) for r in rows)))
    return [[r[i] for i in ids] for r in rows] if ids else []


def stage_path(cache_dir: str | Path, run: dict[str, Any], stage: str) -> Path:
    """The artifact folder of one of a finished run's stages (``sample``, ``grade``,
    ``build``, ``train``, ``base_model``: the first round's) in the cache it ran with."""
    from east.cache import StageCache

    key = run["stages"][stage]["key"]
    path = StageCache(cache_dir).path(stage, key)
    if not path.is_dir():
        raise FileNotFoundError(f"{stage} stage {key} of {run.get('_path', 'a run')} is not in {cache_dir}")
    return path


def graded_samples(cache_dir: str | Path, run: dict[str, Any]) -> list[tuple[Any, list[str], dict[str, Any]]]:
    """A finished run's sampled training questions with their grades, from the cache it ran
    with: (problem, responses, grade row) per question, joined by question id."""
    from east.cache import StageResult, join_by_id, read_jsonl
    from east.data.problems import Problem

    sample, grade = (
        StageResult(name, run["stages"][name]["key"], stage_path(cache_dir, run, name), True, 0.0)
        for name in ("sample", "grade")
    )
    rows = read_jsonl(sample.path / "samples.jsonl")
    grades = join_by_id(rows, read_jsonl(grade.path / "grades.jsonl"), sample, grade)
    return [
        (Problem(r["id"], r["question"], r["gold"], r.get("solution")), r["responses"], g)
        for r, g in zip(rows, grades)
    ]

"""A run's results: ``results.json`` assembled from its stages' artifacts, the per-run
figures, what goes to the experiment logger (W&B), and the summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from east.cache import StageResult, read_json, read_jsonl, write_jsonl
from east.config import Config
from east.data import Splits
from east.stats import format_p

#: The data statistics of a run that trains nothing (evaluation.only).
NO_TRAINING_STATS = {
    "questions": 0,
    "kept": 0,
    "dropped": {},
    "records": 0,
    **{
        k: {"mean": None, "min": None, "max": None}
        for k in ("entropy", "weight", "entropy_all", "accuracy_all")
    },
    "entropy_values": [],
    "kept_entropy_values": [],
    "weight_values": [],
}


def training_stats(records: StageResult | None) -> dict[str, Any]:
    """The build stage's ``stats.json`` (entropies, weights, kept and dropped counts), or
    empty statistics when the run only evaluates (``records`` None)."""
    return NO_TRAINING_STATS if records is None else read_json(records.path / "stats.json")


def assemble(
    c: Config,
    splits: Splits,
    stages: dict[str, StageResult],
    evals: dict[str, dict[str, Any]],
    per_round: list[dict[str, Any]],
    stats: dict[str, Any],
    model: StageResult | None,
    seconds: float,
    overrides: list[str] = (),
) -> dict[str, Any]:
    """The run's ``results.json`` (``stats``: the last round's ``training_stats``; ``model``:
    its trained model, None when the run only evaluates; ``overrides``: the job's command
    line)."""
    from east.report import paper_number

    stage_summary = {k: v.summary() for k, v in stages.items()}
    # The stage names the schema promises, whatever test sets there are.
    stage_summary["evaluate"] = _merge([v for k, v in stages.items() if k.startswith("evaluate_")])
    run = {
        "objective": "none" if model is None else str(c.objective.name),
        "mapping": c.east.mapping,
        "sharpness": c.east.sharpness,
        "model": c.model.name,
        "dataset": c.dataset.name,
        "seed": c.seed,
        "experiment": c.experiment_name,
        # The job's command line: what tells it apart from its sweep's other cells (east.report).
        "overrides": list(overrides),
        # Every weight came out equal: vanilla self-training, whatever the mapping (east.report).
        "weights_uniform": bool(stats.get("weights_uniform", False)),
    }
    return {
        "run": run,
        "stages": stage_summary,
        "data": {
            **{k: stats[k] for k in ("questions", "kept", "dropped", "records", "entropy", "weight")},
            **{k: stats[k] for k in ("entropy_all", "accuracy_all")},
            "skipped_rows": splits.skipped,
        },
        "train": None if model is None else read_json(model.path / "train_info.json"),
        "grading": {
            "mode": c.grading.mode,
            "fallback": c.grading.fallback,
            "timeout_s": c.grading.timeout_s,
            "timeouts": grading_timeouts(stages),
        },
        "eval": evals,
        "rounds": per_round,
        "paper": paper_number(run),
        "seconds": round(seconds, 2),
        "paths": {"trained_model": None if model is None else str(model.path / "model")},
    }


def add_paired(evals: dict[str, dict[str, Any]], evaluated: dict[tuple[str, str], StageResult]) -> None:
    """Per test set with both evaluations, ``delta``: trained minus base on the same questions,
    in accuracy points, with its 95% paired bootstrap interval and sign-flip p-value
    (:func:`east.stats.paired_comparison`)."""
    from east.stats import paired_comparison

    for name, entry in evals.items():
        if (name, "base") not in evaluated or (name, "trained") not in evaluated:
            continue
        base, trained = (
            {r["id"]: bool(r["correct"]) for r in _predictions(evaluated[(name, w)])}
            for w in ("base", "trained")
        )
        ids = sorted(base.keys() & trained.keys())
        if not ids:
            continue
        d = paired_comparison([[trained[i] for i in ids]], [[base[i] for i in ids]])
        # Rounded for reading, but not the p-value: 4 decimals made a p of 1e-5 a 0.
        entry["delta"] = {
            k: round(v, 4) if isinstance(v, float) and k != "p_value" else v for k, v in d.to_dict().items()
        }


def _predictions(stage: StageResult) -> list[dict[str, Any]]:
    return read_jsonl(stage.path / "predictions.jsonl")


def write_predictions(path: Path, evaluated: dict[tuple[str, str], StageResult]) -> None:
    """Every greedy prediction of the run, a row per (test set, model, question): what
    east.report pairs question by question to compare two rows of the table."""
    rows = []
    for (test, which), stage in evaluated.items():
        for r in read_jsonl(stage.path / "predictions.jsonl"):
            rows.append(
                {
                    "test": test,
                    "model": which,
                    "id": r["id"],
                    "correct": bool(r["correct"]),
                    "answer": r["answer"],
                }
            )
    write_jsonl(path, rows)


def histograms(stats: dict[str, Any]) -> dict[str, list[float]]:
    """Per-question values (of ``training_stats``) behind the run's figures and W&B histograms."""
    return {
        "entropy": stats["entropy_values"],
        "kept_entropy": stats["kept_entropy_values"],
        "weight": stats["weight_values"],
    }


def grading_timeouts(stages: dict[str, StageResult]) -> dict[str, int | None]:
    """Responses cut by the grading bound, per grading stage of this run (None: an artifact
    written before the count existed)."""
    out: dict[str, int | None] = {}
    for label, stage in stages.items():
        if stage.name == "grade":
            out[label] = read_json(stage.path / "stats.json").get("timeouts")
        elif stage.name in ("evaluate", "evaluate_sampled"):
            out[label] = read_json(stage.path / "metrics.json").get("grading_timeouts")
    return out


def accuracy(stage: StageResult) -> float:
    return read_json(stage.path / "metrics.json")["accuracy"]


def _merge(results: list[StageResult]) -> dict[str, Any]:
    return {
        "cached": all(r.cached for r in results),
        "seconds": round(sum(r.seconds for r in results), 3),
        "key": ",".join(r.key for r in results),
    }


def log_results(
    logger: Any, results: dict[str, Any], hists: dict[str, list[float]], images: list[Path]
) -> None:
    """Figures, histograms, flat metrics, and the whole results.json in the run's summary (so
    east.report can rebuild the table from a W&B project)."""
    for image in images:
        logger.image(f"plots/{image.stem}", image)
    for name, values in hists.items():
        logger.histogram(f"data/{name}", values)
    data = results["data"]
    flat = {f"eval/{t}/{k}": v for t, e in results["eval"].items() for k, v in e.items()}
    flat.update({f"data/{k}/{s}": v for k in ("entropy", "weight") for s, v in data[k].items()})
    flat.update({"data/questions": data["questions"], "data/kept": data["kept"]})
    flat.update({f"data/dropped/{k}": v for k, v in data["dropped"].items()})
    logger.log(flat)
    logger.summary({**flat, "results_json": json.dumps(results)})


def print_summary(results: dict[str, Any], logged: list[tuple[str, str]] = ()) -> None:
    """What a person reads at the end of a run: what ran, on what data, the accuracies with the
    paired change and its interval, and where the run folder, the trained model and the W&B
    log are (``logged``: the logger's :meth:`where`)."""
    print(summary_text(results, logged))


def summary_text(results: dict[str, Any], logged: list[tuple[str, str]] = ()) -> str:
    r, d = results["run"], results["data"]
    lines = [
        f"EAST {r['objective']} mapping={r['mapping']} a={r['sharpness']:g} seed={r['seed']} "
        f"({r['model']} on {r['dataset']}, {results['seconds']:.0f}s)"
    ]
    if d["kept"]:
        w, h = d["weight"], d["entropy"]
        lines.append(
            f"  kept {d['kept']}/{d['questions']} questions; weights {w['min']:.2f} to {w['max']:.2f} "
            f"(mean 1 by construction); entropy {h['min']:.2f} to {h['max']:.2f} bits, mean {h['mean']:.2f}"
        )
        loss = (results.get("train") or {}).get("loss") or {}
        if loss.get("diverged"):
            lines.append(
                f"  WARNING: training diverged: loss {loss['first']:.3g} at the start, {loss['last']:.3g} at "
                "the end (train.loss.diverged in results.json); lower objective.trainer.learning_rate"
            )
        if r.get("weights_uniform") and r["mapping"] != "uniform":
            lines.append("  every weight is equal: this run is vanilla self-training, tabled as such")
    lines.append("  accuracy in % of test questions (results.json holds fractions):")
    lines.append(f"  {'test set':<12}{'base':>7}{'trained':>9}  {'trained - base [95% CI]':<30}{'n':>6}")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    for name, e in results["eval"].items():
        delta = e.get("delta")
        change = "-"
        if delta:
            change = f"{delta['delta']:+.1f} [{delta['low']:+.1f}, {delta['high']:+.1f}] p{format_p(delta['p_value'])}"
        lines.append(
            f"  {name:<12}{pct(e.get('base')):>7}{pct(e.get('trained')):>9}  {change:<30}{e['n']:>6}"
        )
    paths = results.get("paths", {})
    for label, value in (
        ("run folder", paths.get("run")),
        ("trained model", paths.get("trained_model")),
        *logged,
    ):
        if value:
            lines.append(f"  {label + ':':<16}{value}")
    return "\n".join(lines)

"""Finished runs -> the paper's results table and the sweep plots.

Runs come from the ``results.json`` files under a sweep folder (works offline) or from a W&B
project (each run stores its results.json in its summary). The table has the paper's rows
(default, SFT, +EAST, DPO, +EAST, KTO, +EAST) per model, a column per test set and AVG; each
cell is mean ± std over seeds with the seed count; the paper's number sits beside it with
our difference. Missing cells stay missing (never zero).

    python -m east.report multirun/2026-11-26/10-00-00   # writes table.md, table.csv, the figure
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from east.objectives import OBJECTIVES
from east.runs import align, collect_runs, collect_wandb, predictions_of, resolve_sweep_dir
from east.tables import missing_section, reference_row, to_csv, to_markdown

__all__ = [
    "PAPER",
    "build_table",
    "collect_runs",
    "collect_wandb",
    "paper_number",
    "resolve_sweep_dir",
    "row_label",
    "run_caption",
    "setting_of",
    "table_rows",
    "to_markdown",
    "write_report",
]

#: docs/method.md §3, accuracy % (GSM8K / MATH): the one copy of the paper's numbers.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "llama-3.2-1b": {
        "default": {"gsm8k": 46.2, "math": 28.5},
        "sft": {"gsm8k": 50.1, "math": 28.4},
        "sft_east": {"gsm8k": 51.8, "math": 29.4},
        "dpo": {"gsm8k": 50.2, "math": 28.7},
        "dpo_east": {"gsm8k": 51.9, "math": 29.7},
        "kto": {"gsm8k": 53.0, "math": 28.8},
        "kto_east": {"gsm8k": 53.0, "math": 29.9},
    },
    "llama-3.1-8b": {
        "default": {"gsm8k": 82.8, "math": 50.4},
        "sft": {"gsm8k": 85.0, "math": 50.0},
        "sft_east": {"gsm8k": 86.1, "math": 51.2},
        "dpo": {"gsm8k": 84.6, "math": 50.1},
        "dpo_east": {"gsm8k": 85.4, "math": 50.9},
        "kto": {"gsm8k": 83.9, "math": 48.9},
        "kto_east": {"gsm8k": 85.1, "math": 51.0},
    },
}


def table_rows(trained: Iterable[str] = ()) -> list[str]:
    """The table's rows: ``default`` (the base model), then per objective its vanilla row and
    its EAST row (``<name>_east``): the registered objectives in their order, then any other
    objective the runs trained (one of yours not imported here), so that no run is dropped."""
    names = [*OBJECTIVES, *sorted(set(trained) - set(OBJECTIVES))]
    return ["default", *(row for name in names for row in (name, f"{name}_east"))]


def row_label(row: str) -> str:
    """``default``, ``+EAST`` for an EAST row, else the objective's label (its name in capitals
    when it is not registered here)."""
    if row == "default":
        return row
    if row.endswith("_east"):
        return "+EAST"
    return OBJECTIVES[row].label if row in OBJECTIVES else row.upper()


def setting_of(run: dict[str, Any]) -> str:
    """The table row of a run: ``default``, ``sft`` / ``dpo`` / ``kto`` (vanilla: uniform
    weights: see :func:`east.weighting.is_vanilla`, or a run whose weights all came out
    equal) or ``<objective>_east`` (any other weighting). ``run``: a results.json, or its ``run`` section."""
    from east.weighting import is_vanilla

    r = run.get("run", run)
    if r["objective"] == "none":
        return "default"
    vanilla = is_vanilla(r["mapping"], r["sharpness"]) or r.get("weights_uniform", False)
    return r["objective"] if vanilla else f"{r['objective']}_east"


def is_baseline(mapping: str) -> bool:
    """Whether a weighting is one of the paper's baselines (it reads another signal than the
    answer entropy: accuracy, rejected, local_uncertainty), not an EAST variant."""
    from east.weighting import MAPPINGS

    spec = MAPPINGS.get(mapping)
    return spec is not None and spec.signal != "entropy"


def paper_number(run: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's accuracy for a run's (model, setting, dataset), or None where the paper
    has no such cell (a baseline weighting is never compared with the paper's EAST number).
    ``run``: results.json's ``run`` section."""
    setting = setting_of(run)
    if setting.endswith("_east") and is_baseline(run["mapping"]):
        return None
    accuracy = PAPER.get(run["model"], {}).get(setting, {}).get(run["dataset"])
    if accuracy is None:
        return None
    return {"model": run["model"], "setting": setting, "test_set": run["dataset"], "accuracy": accuracy}


def weighting_of(run: dict[str, Any]) -> str:
    """The weighting of an EAST run, e.g. ``power a=2``; empty for vanilla and default rows."""
    if not setting_of(run).endswith("_east"):
        return ""
    return f"{run['run']['mapping']} a={run['run']['sharpness']:g}"


def run_caption(run: dict[str, Any]) -> str:
    """One line naming a run for a figure's caption: experiment (if any), model, dataset,
    objective, weighting, seed and its folder."""
    r = run["run"]
    what = "base model" if r["objective"] == "none" else r["objective"]
    weighting = weighting_of(run) or ("" if r["objective"] == "none" else "vanilla")
    parts = [r.get("experiment"), f"{r['model']} on {r['dataset']}", what, weighting, f"seed {r['seed']}"]
    folder = run.get("_path")
    return " · ".join(str(p) for p in parts if p) + (f" ({folder})" if folder else "")


#: Overrides the table already shows (its row, model and column) or that do not change a
#: number (where files go, the logger); any other override that differs between a model's
#: runs on one dataset names their rows apart.
_SHOWN = ("objective", "mapping", "east.mapping", "east.sharpness", "seed", "experiment", "model", "dataset")
_NO_NUMBERS = ("hydra.", "paths.", "logger", "resources.", "isolate_stages", "imports")


def overrides_of(run: dict[str, Any]) -> dict[str, str]:
    """A run's command-line overrides as key -> value: results.json's ``run.overrides``, else
    (results written before it was recorded) its Hydra job folder's ``.hydra/overrides.yaml``."""
    listed = run["run"].get("overrides")
    if listed is None and run.get("_path"):
        saved = Path(run["_path"]) / ".hydra" / "overrides.yaml"
        if saved.exists():
            import yaml

            listed = yaml.safe_load(saved.read_text()) or []
    out = {}
    for item in listed or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _label_variants(runs: list[dict[str, Any]]) -> None:
    """Give each run its ``_variant``: its weighting (``weighting_of``) and every override
    that differs between the runs of its model and dataset, so that a sweep over a field the
    table does not name (``objective.trainer.learning_rate=1e-6,1.0``) has one row per value
    rather than one row whose later run overwrites the earlier. Two runs still alike (the
    same cell run twice) are told apart by their folders."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["run"]["model"], run["run"]["dataset"])].append(run)
    for group in groups.values():
        found = [overrides_of(r) for r in group]
        keys = sorted(
            k
            for k in set().union(*found)
            if k not in _SHOWN and not k.startswith(_NO_NUMBERS) and len({o.get(k) for o in found}) > 1
        )
        for run, o in zip(group, found, strict=True):
            fields = ", ".join(f"{k}={o.get(k, '(default)')}" for k in keys)
            run["_variant"] = " ".join(filter(None, [weighting_of(run), fields]))
    seen: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if setting_of(run) != "default":
            seen[
                (
                    run["run"]["model"],
                    run["run"]["dataset"],
                    setting_of(run),
                    run["_variant"],
                    run["run"]["seed"],
                )
            ].append(run)
    for alike in seen.values():
        if len(alike) > 1:
            for run in alike:
                where = run["run"].get("experiment") or Path(run.get("_path") or "?").name
                run["_variant"] = " ".join(filter(None, [run["_variant"], f"run {where}"]))


def variant_of(run: dict[str, Any]) -> str:
    """A run's weighting variant and the fields that tell it apart from its sweep's other runs
    (see :func:`_label_variants`); its weighting only when it was not labelled."""
    return run.get("_variant", weighting_of(run))


def _cells(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[int, float]]:
    """(model, row, variant, test set) -> {seed: accuracy %}. The base model fills the default row."""
    cells: dict[tuple[str, str, str, str], dict[int, float]] = defaultdict(dict)
    for run in runs:
        model, seed = run["run"]["model"], run["run"]["seed"]
        row, variant = setting_of(run), variant_of(run)
        for test, e in run["eval"].items():
            if e.get("base") is not None:  # greedy, seed-free: one evaluation, not one per seed
                cells[(model, "default", "", test)][0] = 100 * e["base"]
            if row != "default" and e.get("trained") is not None:
                cells[(model, row, variant, test)][seed] = 100 * e["trained"]
    return cells


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def build_table(runs: list[dict[str, Any]], paper: dict = PAPER) -> list[dict[str, Any]]:
    """One record per (model, row, weighting variant): per test set and AVG, mean/std/seeds and
    the paper's value. An EAST row appears once per (mapping, sharpness) the runs used.

    AVG is the mean over test sets of the per-seed mean, present only when every test set is.
    """
    _label_variants(runs)
    cells = _cells(runs)
    models = sorted({k[0] for k in cells})
    # The paper's test sets are columns for its models even where no run covers them yet.
    found = {k[3] for k in cells} | {t for m in models for row in paper.get(m, {}).values() for t in row}
    tests = sorted(found, key=lambda t: (t not in ("gsm8k", "math"), t))
    table = []
    for model in models:
        trained = {k[1].removesuffix("_east") for k in cells if k[0] == model and k[1] != "default"}
        for row in table_rows(trained):
            variants = sorted({k[2] for k in cells if k[0] == model and k[1] == row}) or [""]
            for variant in variants:
                label = row_label(row) + (f" ({variant})" if len(variants) > 1 and variant else "")
                baseline = bool(variant) and "=" not in variant.split()[0] and is_baseline(variant.split()[0])
                if baseline:
                    label = f"+baseline ({variant})"
                paper_row = {} if baseline else paper.get(model, {}).get(row, {})
                rec: dict[str, Any] = {"model": model, "row": row, "variant": variant, "label": label}
                means = []
                for test in tests:
                    seeds = cells.get((model, row, variant, test), {})
                    ref = paper_row.get(test)
                    if seeds:
                        m, s = _mean_std(list(seeds.values()))
                        means.append(m)
                        rec[test] = {
                            "mean": m,
                            "std": s,
                            "seeds": len(seeds),
                            "paper": ref,
                            "diff": None if ref is None else m - ref,
                        }
                    else:
                        rec[test] = {"mean": None, "std": None, "seeds": 0, "paper": ref, "diff": None}
                refs = [paper_row.get(t) for t in tests]
                avg_ref = sum(refs) / len(refs) if refs and all(r is not None for r in refs) else None
                avg = sum(means) / len(means) if len(means) == len(tests) and means else None
                rec["AVG"] = {
                    "mean": avg,
                    "std": None,
                    "seeds": None,
                    "paper": avg_ref,
                    "diff": None if avg is None or avg_ref is None else avg - avg_ref,
                }
                if any(rec[t]["mean"] is not None for t in tests) or avg_ref is not None:
                    table.append(rec)
    _add_paired(table, runs, tests)
    return table


def _row_predictions(
    runs: list[dict[str, Any]], model: str, row: str, variant: str, test: str
) -> dict[int, dict[str, bool]]:
    """seed -> {question id: correct} of one table row on one test set (the default row: the
    base model's, under seed 0: greedy decoding does not depend on the seed)."""
    out: dict[int, dict[str, bool]] = {}
    for run in runs:
        if run["run"]["model"] != model:
            continue
        preds = predictions_of(run)
        if row == "default":
            if (test, "base") in preds:
                out[0] = preds[(test, "base")]
        elif setting_of(run) == row and variant_of(run) == variant and (test, "trained") in preds:
            out[run["run"]["seed"]] = preds[(test, "trained")]
    return out


def _add_paired(table: list[dict[str, Any]], runs: list[dict[str, Any]], tests: list[str]) -> None:
    """Per row and test set, ``paired``: Δ vs the reference row with its 95% paired bootstrap
    interval, p-value, and the seeds and questions behind it (None where either row has no
    stored predictions)."""
    from east.stats import paired_comparison

    for rec in table:
        ref = reference_row(rec["row"])
        for test in tests:
            rec[test]["paired"] = None
            if ref is None:
                continue
            ours = _row_predictions(runs, rec["model"], rec["row"], rec["variant"], test)
            theirs = _row_predictions(runs, rec["model"], ref, "", test)
            if ref == "default" and 0 in theirs:  # the base model, the same under every seed
                theirs = dict.fromkeys(ours, theirs[0])
            seeds = sorted(set(ours) & set(theirs))
            if not seeds:
                continue
            matrix = align([ours[s] for s in seeds] + [theirs[s] for s in seeds])
            if not matrix:
                continue
            a, b = matrix[: len(seeds)], matrix[len(seeds) :]
            rec[test]["paired"] = {"vs": ref, **paired_comparison(a, b).to_dict()}


def write_report(
    runs: list[dict[str, Any]],
    out_dir: str | Path,
    name: str = "table",
    missing: list[dict[str, str]] | None = None,
) -> dict[str, Path]:
    """The table (Markdown and CSV), the accuracy-vs-sharpness figure and, for iterative runs,
    the accuracy-vs-round figure of ``runs``, written into ``out_dir``: what the sweep
    callback, ``python -m east.report`` and the notebook all produce. ``missing``
    (:func:`east.runs.missing_cells`) is listed under the table. Returns the paths by kind."""
    from east.plots import plot_accuracy_vs_round, plot_accuracy_vs_sharpness

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_table(runs)
    paths = {"markdown": out_dir / f"{name}.md", "csv": out_dir / f"{name}.csv"}
    paths["markdown"].write_text(to_markdown(table) + missing_section(missing or []))
    to_csv(table, paths["csv"])
    paths["figure"] = plot_accuracy_vs_sharpness(runs, out_dir / "accuracy_vs_sharpness.png")
    rounds = plot_accuracy_vs_round(runs, out_dir / "accuracy_vs_round.png")
    if rounds is not None:
        paths["rounds_figure"] = rounds
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the EAST results table from a sweep folder.")
    parser.add_argument("sweep_dir")
    parser.add_argument(
        "--out", default=None, help="folder for table.md, table.csv and the figure (default: sweep_dir)"
    )
    parser.add_argument(
        "--expect", default="", help="comma-separated experiment names the sweep should have run"
    )
    args = parser.parse_args(argv)
    from east.runs import missing_cells

    try:
        sweep = resolve_sweep_dir(args.sweep_dir)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    runs = collect_runs(sweep)
    missing = missing_cells(sweep, [e for e in args.expect.split(",") if e])
    if not runs and not missing:
        raise SystemExit(f"no results.json under {sweep}")
    paths = write_report(runs, args.out or sweep, missing=missing)
    print(paths["markdown"].read_text())
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    if missing:
        raise SystemExit(f"{len(missing)} cell(s) have no results: see the end of {paths['markdown']}")


if __name__ == "__main__":
    main()

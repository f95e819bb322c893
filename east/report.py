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
from east.stats import format_p

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


def reference_row(row: str) -> str | None:
    """What a row's paired Δ compares with: an EAST row with its vanilla row, a vanilla row
    with the base model (the default row)."""
    if row.endswith("_east"):
        return row.removesuffix("_east")
    return None if row == "default" else "default"


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


def table_columns(table: list[dict[str, Any]]) -> list[str]:
    """The table's value columns: the test sets, then AVG."""
    skip = {"model", "row", "variant", "label"}
    return [k for k in table[0] if k not in skip] if table else []


def _fmt(cell: dict[str, Any]) -> str:
    if cell["mean"] is None:
        return "–"
    if cell.get("seeds") is None:
        return f"{cell['mean']:.1f}"
    if cell["seeds"] == 1:  # one seed has no spread to show
        return f"{cell['mean']:.1f} (n=1)"
    return f"{cell['mean']:.1f} ± {cell['std']:.1f} (n={cell['seeds']})"


def _fmt_paired(cell: dict[str, Any]) -> str:
    p = cell.get("paired")
    if not p:
        return "–"
    return (
        f"{_signed(p['delta'])} [{_signed(p['low'])}, {_signed(p['high'])}] p{format_p(p['p_value'])} "
        f"({p['seeds']}×{p['questions']})"
    )


def _signed(x: float) -> str:
    return f"{round(x, 1) or 0.0:+.1f}"  # never "-0.0"


def to_markdown(table: list[dict[str, Any]]) -> str:
    """The table: per test set our mean ± std (seeds), the paired Δ vs the reference row
    (EAST vs vanilla, vanilla vs base) with its 95% interval, p-value and seeds×questions,
    then the paper's number and our difference from it."""
    cols = table_columns(table)
    tests = [c for c in cols if c != "AVG"]
    # The paper's columns only where the paper has a number for a model in the table.
    with_paper = any(rec[c]["paper"] is not None for rec in table for c in cols)
    head = [
        "model",
        "setting",
        *cols,
        *(f"paired Δ {c} [95% CI]" for c in tests),
        *((f"paper {c}" for c in cols) if with_paper else ()),
        *((f"vs paper {c}" for c in cols) if with_paper else ()),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rec in table:
        ours = [_fmt(rec[c]) for c in cols]
        paired = [_fmt_paired(rec[c]) for c in tests]
        paper = ["–" if rec[c]["paper"] is None else f"{rec[c]['paper']:.1f}" for c in cols]
        diff = ["–" if rec[c]["diff"] is None else f"{rec[c]['diff']:+.1f}" for c in cols]
        extra = [*paper, *diff] if with_paper else []
        lines.append("| " + " | ".join([rec["model"], rec["label"], *ours, *paired, *extra]) + " |")
    note = (
        "\nPaired Δ: accuracy points of the row minus its reference (an EAST or baseline row: its "
        "vanilla row; a vanilla row: the base model), on the same questions and seeds; 95% paired "
        "bootstrap interval over test questions, sign-flip permutation p-value, seeds×questions.\n"
    )
    return "\n".join(lines) + "\n" + note + _unpaired_note(table, tests)


def _unpaired_note(table: list[dict[str, Any]], tests: list[str]) -> str:
    """What a row whose paired Δ is empty lacks: its reference row's run (the same objective
    with mapping=uniform, or the base model's evaluation), with predictions, on the same seeds."""
    lines = []
    for rec in table:
        ref = reference_row(rec["row"])
        if ref is None or not any(rec[t]["mean"] is not None for t in tests):
            continue
        if all(not rec[t].get("paired") for t in tests):
            need = (
                "the base model's evaluation (evaluation.base=true)"
                if ref == "default"
                else f"a {ref.upper()} run with mapping=uniform on the same seeds"
            )
            lines.append(f"- {rec['model']} {rec['label']}: no paired Δ without {need} in the sweep")
    return ("\nRows without a paired Δ:\n" + "\n".join(lines) + "\n") if lines else ""


def to_csv(table: list[dict[str, Any]], path: str | Path) -> None:
    import csv

    cols = table_columns(table)
    fields = ("mean", "std", "seeds", "paper", "diff")
    paired = ("vs", "delta", "low", "high", "p_value", "seeds", "questions")
    tests = [c for c in cols if c != "AVG"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "setting", "label", "variant"]
            + [f"{c}_{k}" for c in cols for k in fields]
            + [f"{c}_paired_{k}" for c in tests for k in paired]
        )
        for rec in table:
            values = ["" if rec[c][k] is None else rec[c][k] for c in cols for k in fields]
            pairs = [("" if not rec[c].get("paired") else rec[c]["paired"][k]) for c in tests for k in paired]
            w.writerow([rec["model"], rec["row"], rec["label"], rec["variant"], *values, *pairs])


def missing_section(missing: list[dict[str, str]]) -> str:
    """The table's list of cells without results, with why and where."""
    if not missing:
        return ""
    lines = [f"\n**Missing: {len(missing)} cell(s) without results.**\n"]
    lines += [f"- {m['cell']}: {m['reason']} ({m['folder']})" for m in missing]
    return "\n".join(lines) + "\n"


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

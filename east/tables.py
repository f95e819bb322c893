"""A built results table (east.report.build_table) as Markdown and CSV: cells as mean ± std
with the seed count, paired differences with their interval and p-value, and the note on rows
that could not be paired (part of east.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from east.stats import format_p

__all__ = ["missing_section", "reference_row", "table_columns", "to_csv", "to_markdown"]


def reference_row(row: str) -> str | None:
    """What a row's paired Δ compares with: an EAST row with its vanilla row, a vanilla row
    with the base model (the default row)."""
    if row.endswith("_east"):
        return row.removesuffix("_east")
    return None if row == "default" else "default"


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

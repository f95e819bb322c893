"""The table's paired columns: each EAST row against its vanilla row (and vanilla against
the base model) question by question from the runs' predictions.jsonl."""

from __future__ import annotations

import json

import numpy as np
import pytest

from east.report import build_table, to_csv, to_markdown, write_report


def _write_run(folder, objective, mapping, sharpness, seed, trained, base):
    """A finished run folder: results.json and predictions.jsonl (``trained``/``base``: the
    per-question correctness of the trained and base models on test set 'arith')."""
    folder.mkdir(parents=True)
    run = {
        "objective": objective,
        "mapping": mapping,
        "sharpness": sharpness,
        "model": "tiny",
        "dataset": "arith",
        "seed": seed,
    }
    results = {
        "run": run,
        "eval": {
            "arith": {"n": len(trained), "base": float(np.mean(base)), "trained": float(np.mean(trained))}
        },
        "rounds": [],
    }
    (folder / "results.json").write_text(json.dumps(results))
    rows = [
        {"test": "arith", "model": m, "id": f"q{i}", "correct": bool(c), "answer": None}
        for m, values in (("base", base), ("trained", trained))
        for i, c in enumerate(values)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**results, "_path": str(folder)}


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.3
    out = []
    for seed in range(3):
        vanilla = base | (rng.random(400) < 0.2)  # vanilla fixes some of the base's errors
        east = vanilla | (rng.random(400) < 0.05)  # EAST fixes a few more
        out.append(_write_run(tmp_path / f"v{seed}", "sft", "uniform", 0.0, seed, vanilla, base))
        out.append(_write_run(tmp_path / f"e{seed}", "sft", "power", 1.0, seed, east, base))
        out.append(_write_run(tmp_path / f"same{seed}", "sft", "accuracy", 1.0, seed, vanilla, base))
    return out


def test_east_rows_are_paired_with_their_vanilla_row_and_vanilla_with_the_base(runs):
    table = {(r["row"], r["variant"]): r for r in build_table(runs)}
    east = table[("sft_east", "power a=1")]["arith"]["paired"]
    expected = (
        np.mean(
            [
                runs[3 * s + 1]["eval"]["arith"]["trained"] - runs[3 * s]["eval"]["arith"]["trained"]
                for s in range(3)
            ]
        )
        * 100
    )
    assert east["vs"] == "sft" and east["delta"] == pytest.approx(expected)
    assert east["low"] <= east["delta"] <= east["high"] and east["delta"] > 0
    assert (east["seeds"], east["questions"]) == (3, 400)
    vanilla = table[("sft", "")]["arith"]["paired"]
    assert vanilla["vs"] == "default" and vanilla["low"] > 0 and vanilla["p_value"] < 0.001
    # A baseline whose predictions equal vanilla's: Δ = 0 with a zero-width interval.
    same = table[("sft_east", "accuracy a=1")]["arith"]["paired"]
    assert (same["delta"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert table[("default", "")]["arith"]["paired"] is None


def test_markdown_csv_and_figure_show_the_paired_columns(runs, tmp_path):
    md = to_markdown(build_table(runs))
    assert "paired Δ arith [95% CI]" in md and "+0.0 [+0.0, +0.0] p=1 (3×400)" in md
    to_csv(build_table(runs), tmp_path / "t.csv")
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert "arith_paired_delta" in header and "arith_paired_p_value" in header
    paths = write_report(runs, tmp_path / "report")
    assert paths["figure"].exists() and "paired Δ" in paths["markdown"].read_text()


def test_runs_without_predictions_leave_the_paired_cells_empty(runs):
    for r in runs:
        r["_path"] = "https://wandb.example/run"  # collected from W&B: no predictions file
        r.pop("_predictions", None)
    assert all(rec["arith"]["paired"] is None for rec in build_table(runs))


@pytest.mark.parametrize("objective", ["orpo", "simpo"])
def test_an_objective_beyond_the_paper_gets_its_rows_and_paired_intervals(objective, tmp_path):
    """ORPO and SimPO are registered like the paper's three: their vanilla and EAST rows are
    in the table under their spec's label, each paired with its reference."""
    from east.objectives import get_objective

    rng = np.random.default_rng(1)
    base = rng.random(300) < 0.4
    runs = []
    for seed in range(2):
        vanilla = base | (rng.random(300) < 0.1)
        runs.append(_write_run(tmp_path / f"v{seed}", objective, "uniform", 0.0, seed, vanilla, base))
        runs.append(_write_run(tmp_path / f"e{seed}", objective, "power", 1.0, seed, vanilla, base))
    table = {r["row"]: r for r in build_table(runs)}
    assert table[objective]["label"] == get_objective(objective).label
    assert table[f"{objective}_east"]["label"] == "+EAST"
    assert table[f"{objective}_east"]["arith"]["paired"]["delta"] == 0.0  # same predictions
    assert table[objective]["arith"]["paired"]["delta"] > 0  # vanilla vs the base model

"""Runs -> the paper's table and figures; the notebook executes against a real sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from east.plots import plot_accuracy_vs_sharpness, plot_mappings, plot_run
from east.report import build_table, collect_runs, paper_number, setting_of, to_markdown
from tests.helpers import ROOT, SMALL


def _run(objective, mapping, sharpness, seed, trained, base=0.4, model="llama-3.2-1b", test="gsm8k"):
    return {
        "run": {
            "objective": objective,
            "mapping": mapping,
            "sharpness": sharpness,
            "model": model,
            "dataset": test,
            "seed": seed,
        },
        "eval": {test: {"base": base, "trained": trained, "n": 100}},
    }


def test_settings():
    assert setting_of(_run("sft", "uniform", 0, 0, 0.5)) == "sft"
    assert setting_of(_run("sft", "power", 0, 0, 0.5)) == "sft"  # a = 0 is vanilla
    assert setting_of(_run("dpo", "power", 2, 0, 0.5)) == "dpo_east"
    assert setting_of(_run("kto", "accuracy", 1, 0, 0.5)) == "kto_east"
    assert setting_of({"run": {"objective": "none"}}) == "default"


def test_table_means_stds_paper_and_missing_cells():
    runs = [_run("sft", "uniform", 0, s, t) for s, t in ((0, 0.50), (1, 0.52), (2, 0.54))]
    runs.append(_run("sft", "power", 1, 0, 0.55))
    table = {(r["model"], r["row"]): r for r in build_table(runs)}
    sft = table[("llama-3.2-1b", "sft")]["gsm8k"]
    assert sft["mean"] == pytest.approx(52.0) and sft["std"] == pytest.approx(2.0) and sft["seeds"] == 3
    assert sft["paper"] == 50.1 and sft["diff"] == pytest.approx(1.9)
    assert table[("llama-3.2-1b", "default")]["gsm8k"]["mean"] == pytest.approx(40.0)
    assert table[("llama-3.2-1b", "dpo")]["gsm8k"]["mean"] is None  # missing, never zero
    assert table[("llama-3.2-1b", "sft")]["AVG"]["mean"] is None  # MATH missing -> no AVG
    md = to_markdown(build_table(runs))
    assert "52.0 ± 2.0 (n=3)" in md and "| llama-3.2-1b | DPO | – |" in md


def test_a_baseline_weighting_is_labelled_as_such_and_not_held_against_the_papers_east():
    runs = [_run("sft", m, 1, 0, 0.55) for m in ("power", "rejected")]
    rows = {r["label"]: r for r in build_table(runs) if r["row"] == "sft_east"}
    assert set(rows) == {"+EAST (power a=1)", "+baseline (rejected a=1)"}
    assert rows["+EAST (power a=1)"]["gsm8k"]["paper"] is not None
    assert rows["+baseline (rejected a=1)"]["gsm8k"]["paper"] is None
    assert paper_number(runs[1]["run"]) is None and paper_number(runs[0]["run"]) is not None


def test_each_east_variant_gets_its_own_row():
    runs = [_run("sft", "power", a, s, 0.5 + a / 100) for a in (1, 2) for s in (0, 1)]
    rows = [r for r in build_table(runs) if r["row"] == "sft_east"]
    assert [r["label"] for r in rows] == ["+EAST (power a=1)", "+EAST (power a=2)"]
    assert [r["gsm8k"]["mean"] for r in rows] == [pytest.approx(51.0), pytest.approx(52.0)]
    assert all(r["gsm8k"]["seeds"] == 2 for r in rows)


def test_figures(tmp_path):
    assert plot_mappings(tmp_path / "m.png").stat().st_size > 1000
    runs = [_run("sft", "power", a, s, 0.5 + 0.01 * a + 0.001 * s) for a in (0, 1, 2) for s in (0, 1)]
    assert plot_accuracy_vs_sharpness(runs, tmp_path / "a.png").stat().st_size > 1000
    paths = plot_run(
        {"entropy": [0.5, 1.0, 2.0], "kept_entropy": [1.0, 2.0], "weight": [0.67, 1.33]}, tmp_path
    )
    assert all(p.stat().st_size > 1000 for p in paths)


def test_paper_columns_only_for_models_the_paper_reports_and_one_seed_says_n1():
    tiny = to_markdown(build_table([_run("sft", "uniform", 0, 0, 0.5, model="tiny", test="arith")]))
    assert "paper" not in tiny.splitlines()[0]  # no paper number for the tiny model: no columns
    assert "50.0 (n=1)" in tiny and "± 0.0" not in tiny
    llama = to_markdown(build_table([_run("sft", "uniform", 0, s, 0.5 + s / 100) for s in (0, 1)]))
    assert "paper gsm8k" in llama.splitlines()[0] and "50.5 ± 0.7 (n=2)" in llama


def test_the_sharpness_figure_has_the_base_model_and_histograms_share_bins(tmp_path, monkeypatch):
    import east.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    runs = [_run("sft", "power", a, 0, 0.5 + 0.01 * a, base=0.42) for a in (0, 1, 2)]
    plots.plot_accuracy_vs_sharpness(runs, tmp_path / "a.png")
    ax = figures[-1].axes[0]
    base = [line for line in ax.get_lines() if line.get_label() == "base model / gsm8k"]
    assert len(base) == 1 and base[0].get_ydata()[0] == pytest.approx(42.0)

    plots.plot_run({"entropy": [0.0, 0.5, 3.0], "kept_entropy": [0.5, 1.0], "weight": [0.8, 1.2]}, tmp_path)
    bars = figures[-2].axes[0].patches
    widths = {round(b.get_width(), 9) for b in bars}
    assert len(widths) == 1  # both series on the same edges
    assert plots.shared_bins([0.0, 3.0], [0.5]).tolist()[::20] == [0.0, 3.0]


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "objective=sft,dpo",
        "mapping=uniform,power",
        "seed=0,1",
        *SMALL,
        f"paths.cache_dir={root / 'cache'}",
        f"hydra.sweep.dir={root / 'runs'}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "runs"


def test_a_sweep_writes_its_own_report(small_sweep):
    table = (small_sweep / "table.md").read_text()
    assert "| tiny | SFT |" in table and "(n=2)" in table
    assert (small_sweep / "accuracy_vs_sharpness.png").stat().st_size > 1000


def _execute_notebook(tmp_path, **env):
    """``jupyter nbconvert --execute`` as a person runs it (the kernel in notebooks/), with
    what ``.[dev]`` installs."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute"),
            *("--output-dir", str(tmp_path), "--ExecutePreprocessor.timeout=300"),
            str(ROOT / "notebooks" / "results_table.ipynb"),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_notebook_renders_the_table_of_a_real_sweep(small_sweep, tmp_path):
    import nbformat

    runs = collect_runs(small_sweep)
    assert len(runs) == 8
    assert all((small_sweep / str(i) / "entropy_hist.png").exists() for i in range(8))
    nb = nbformat.read(ROOT / "notebooks" / "results_table.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "store the notebook without outputs"
    )
    # A relative sweep folder, as from the repository root: the kernel runs in notebooks/.
    relative = os.path.relpath(small_sweep, ROOT)
    # The README's command, as written, on this sweep: nothing new in notebooks/.
    [command] = [
        line for line in (ROOT / "README.md").read_text().splitlines() if "nbconvert --to notebook" in line
    ]
    command = command.replace("multirun/testbed_table", relative).replace(
        "jupyter nbconvert", f"{sys.executable} -m nbconvert"
    )
    before = sorted(p.name for p in (ROOT / "notebooks").iterdir())
    out = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env={**os.environ, "EAST_REPORT_OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in (ROOT / "notebooks").iterdir()) == before
    executed = nbformat.read(small_sweep / "results_table.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert f"8 runs from {small_sweep.resolve()}" in printed
    # Each run's figures under a caption naming the run (its folder among it).
    captions = [
        o["data"]["text/markdown"]
        for c in executed.cells
        for o in c.get("outputs", [])
        if "text/markdown" in o.get("data", {})
    ]
    runs_shown = [r for r in runs if str(r["_path"]) in "".join(captions)]
    assert len(runs_shown) == 4 and all(" · seed " in c for c in captions if c.startswith("**"))
    table = (tmp_path / "table.md").read_text()
    for label in ("default", "SFT", "DPO"):
        assert f"| tiny | {label} |" in table
    assert table.count("| tiny | +EAST |") == 2
    assert "(n=2)" in table
    assert (tmp_path / "mappings.png").exists() and (tmp_path / "accuracy_vs_sharpness.png").exists()
    import csv

    rows = list(csv.reader((tmp_path / "table.csv").open()))
    assert rows[0][:5] == ["model", "setting", "label", "variant", "arith_mean"]
    assert all(len(r) == len(rows[0]) for r in rows)  # header and rows line up


def test_the_notebook_stops_on_a_folder_with_no_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    out = _execute_notebook(tmp_path, EAST_SWEEP_DIR=str(tmp_path / "empty"), EAST_REPORT_OUT=str(tmp_path))
    assert out.returncode != 0 and "no finished runs (results.json) in" in out.stderr
    out = _execute_notebook(tmp_path, EAST_SWEEP_DIR="no/such/sweep", EAST_REPORT_OUT=str(tmp_path))
    assert out.returncode != 0 and "no sweep folder 'no/such/sweep'" in out.stderr


def test_report_command_line(small_sweep, tmp_path):
    out = tmp_path / "t"
    proc = subprocess.run(
        [sys.executable, "-m", "east.report", str(small_sweep), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| tiny | SFT |" in proc.stdout and "| tiny | KTO |" not in proc.stdout  # no KTO runs, no KTO row
    table = (out / "table.md").read_text()
    assert proc.stdout.startswith(table)
    assert (out / "table.csv").exists() and (out / "accuracy_vs_sharpness.png").exists()


def test_collect_wandb_reads_the_results_each_run_stored(monkeypatch):
    import types

    import wandb

    from east.report import collect_wandb

    stored = _run("sft", "power", 1, 0, 0.5)
    fake = [
        types.SimpleNamespace(summary={"results_json": json.dumps(stored)}, url="https://wandb/x"),
        types.SimpleNamespace(summary={}, url="https://wandb/crashed"),
    ]
    calls = {}

    class Api:
        def runs(self, path, filters=None):
            calls["path"] = path
            return fake

    monkeypatch.setattr(wandb, "Api", Api)
    runs = collect_wandb("east", entity="me")
    assert calls["path"] == "me/east"
    assert len(runs) == 1 and runs[0]["eval"] == stored["eval"]


def test_an_empty_paired_column_says_which_run_it_needs_and_the_csv_labels_rows(tmp_path):
    """The paired-Δ column was all "–" with no word of the mapping=uniform run it needs, and
    table.csv gave a baseline's rows the setting sft_east only."""
    import csv

    from east.report import to_csv

    runs = [_run("sft", m, 1, 0, 0.55) for m in ("power", "rejected")]
    table = build_table(runs)
    md = to_markdown(table)
    assert "- llama-3.2-1b +EAST (power a=1): no paired Δ without a SFT run with mapping=uniform" in md
    to_csv(table, tmp_path / "t.csv")
    labels = {r["label"] for r in csv.DictReader((tmp_path / "t.csv").open())}
    assert "+baseline (rejected a=1)" in labels and "+EAST (power a=1)" in labels


def test_the_sharpness_figure_draws_every_mapping_of_the_sweep(tmp_path):
    """A mapping=power,accuracy sweep drew one unlabelled line: only power and vanilla runs
    were kept, and half the sweep was missing."""
    from east.plots import sharpness_series

    runs = [_run("sft", "uniform", 0, 0, 0.50)]
    runs += [_run("sft", m, a, 0, 0.5 + a / 100) for m in ("power", "accuracy") for a in (1, 2)]
    series = sharpness_series(runs)
    assert set(series) == {("sft", "power", "gsm8k"), ("sft", "accuracy", "gsm8k")}
    for by_a in series.values():
        assert sorted(by_a) == [0.0, 1.0, 2.0]  # each from the vanilla run at a = 0
    assert set(sharpness_series(runs[:1])) == {("sft", "uniform", "gsm8k")}
    assert plot_accuracy_vs_sharpness(runs, tmp_path / "f.png").exists()

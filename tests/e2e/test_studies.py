"""The three studies and the testbed table, shrunk (one seed, fewer cells, the embedded task
at seconds' scale), run by their own scripts: each writes its table with the paired columns
and its figure into the sweep folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SMALL

STUDIES = {
    "testbed_table.sh": ({"SEEDS": "0", "OBJECTIVES": "sft"}, ["accuracy_vs_sharpness.png"]),
    "sharpness_sweep.sh": (
        {"SEEDS": "0", "OBJECTIVES": "sft", "SHARPNESS": "0,1"},
        ["accuracy_vs_sharpness.png"],
    ),
    "rounds.sh": ({"SEEDS": "0", "ROUNDS": "2"}, ["accuracy_vs_round.png"]),
    "baselines.sh": ({"SEEDS": "0"}, ["accuracy_vs_sharpness.png"]),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # shared by the studies, as on a real machine


# The table's script runs by default; the other studies (the same stages and report, a
# minute more) and the why scripts with `-m slow`, to keep CI well inside its time.
@pytest.mark.parametrize(
    "script",
    [s if s == "testbed_table.sh" else pytest.param(s, marks=pytest.mark.slow) for s in sorted(STUDIES)],
)
def test_each_study_writes_its_table_and_figure(script, cache, tmp_path):
    env_extra, figures = STUDIES[script]
    sweep = tmp_path / "sweep"
    env = {**os.environ, **env_extra, "EAST_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [str(ROOT / "experiments" / script), str(sweep), *SMALL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wall time:" in proc.stdout
    table = (sweep / "table.md").read_text()
    assert "paired Δ arith [95% CI]" in table
    for figure in figures:
        assert (sweep / figure).stat().st_size > 0
    if script == "baselines.sh":
        for mapping in ("accuracy", "rejected", "local_uncertainty", "power"):
            assert f"{mapping} a=1" in table


@pytest.mark.slow
def test_why_scripts_explain_a_shrunk_table(cache, tmp_path):
    """experiments/testbed/why.py and gain_vs_weight.py read a table's sweep and cache and
    print their findings as one JSON line, last."""
    import json
    import sys

    sweep = tmp_path / "sweep"
    env = {**os.environ, "SEEDS": "0", "OBJECTIVES": "sft", "EAST_CACHE_DIR": str(cache)}
    run = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    proc = subprocess.run([str(ROOT / "experiments" / "testbed_table.sh"), str(sweep), *SMALL], **run)
    assert proc.returncode == 0, proc.stderr[-3000:]

    why = subprocess.run(
        [sys.executable, "experiments/testbed/why.py", "--cache", str(cache), str(sweep)], **run
    )
    assert why.returncode == 0, why.stderr[-3000:]
    found = json.loads(why.stdout.strip().splitlines()[-1])
    assert found["entropy"]["0"]["kept"] > 0
    assert set(found["disagreement"]["sft/0"]) == {"east_only_right", "vanilla_only_right", "questions"}

    sets = [a for o in SMALL if o != "logger=none" for a in ("--set", o)]
    gain = subprocess.run(
        [sys.executable, "experiments/testbed/gain_vs_weight.py", "--cache", str(cache), *sets, str(sweep)],
        **run,
    )
    assert gain.returncode == 0, gain.stderr[-3000:]
    seed0 = json.loads(gain.stdout.strip().splitlines()[-1])["seeds"]["0"]
    assert seed0["kept"] == found["entropy"]["0"]["kept"]
    assert len(seed0["east_gain_by_quarter"]) == 4
    assert -100 <= seed0["vanilla_gain_on_kept"] <= 100
    # The quarters partition the kept questions: their size-weighted gains are the whole's.
    import numpy as np

    sizes = [len(q) for q in np.array_split(np.arange(seed0["kept"]), 4)]
    for which in ("vanilla", "east"):
        pooled = sum(n * g for n, g in zip(sizes, seed0[f"{which}_gain_by_quarter"])) / seed0["kept"]
        assert pooled == pytest.approx(seed0[f"{which}_gain_on_kept"], abs=0.1)
    delta, low, high, p = seed0["east_minus_vanilla_on_kept"]
    assert delta == pytest.approx(seed0["east_gain_on_kept"] - seed0["vanilla_gain_on_kept"], abs=0.2)
    assert low <= delta <= high and 0 <= p <= 1


def _is_git_checkout() -> bool:
    proc = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True)
    return proc.returncode == 0


def test_same_numbers_finds_a_changed_number(tmp_path):
    """experiments/same_numbers.py (a refactor's check: the same results.json numbers at two
    revisions) reports a changed number and a missing run, never a path, a key or a time."""
    import json

    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import same_numbers
    finally:
        sys.path.pop(0)
    results = {
        "eval": {"arith": {"base": 0.619, "trained": 0.948}},
        "stages": {"train": {"key": "a", "seconds": 1.0, "cached": False}},
        "paths": {"run": "/x"},
        "seconds": 3.0,
    }
    for side, trained, key in (("base", 0.948, "a"), ("head", 0.95, "b")):
        for cell in ("0", "1") if side == "base" else ("0",):
            folder = tmp_path / side / cell
            folder.mkdir(parents=True)
            moved = {**results, "eval": {"arith": {"base": 0.619, "trained": trained}}, "seconds": 9.0}
            moved["stages"] = {"train": {"key": key, "seconds": 2.0, "cached": False}}
            (folder / "results.json").write_text(json.dumps(moved))
    n, diffs = same_numbers.compare_folders(tmp_path / "base", tmp_path / "head")
    assert n == 2
    assert diffs == ["1/results.json: only in base", "0/results.json/eval/arith/trained: 0.948 -> 0.95"]


@pytest.mark.skipif(
    not _is_git_checkout(), reason="not a git checkout: same_numbers.py compares git revisions"
)
def test_same_numbers_runs_two_revisions_and_compares_them():
    """HEAD against the working tree (the same code in CI: the same numbers), each run with
    its own checkout, cache and output, as a refactor's author runs it against main."""
    import json

    proc = subprocess.run(
        [sys.executable, "experiments/same_numbers.py", "HEAD", "--run", "debug=fast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["same"] is True and last["results"] == 1 and last["differences"] == []

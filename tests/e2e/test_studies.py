"""The three studies and the testbed table, shrunk (one seed, fewer cells, the embedded task
at seconds' scale), run by their own scripts: each writes its table with the paired columns
and its figure into the sweep folder."""

from __future__ import annotations

import os
import subprocess

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


@pytest.mark.parametrize("script", sorted(STUDIES))
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

"""An objective of yours, registered from outside the package through ``imports:``, runs the
whole loop (debug=fast) like the built-in ones, is keyed by its own code, and gets its row in
the sweep table (README: Add your own objective)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

TOY = '''
from east.objectives import ObjectiveSpec, register_objective
from east.selection import build_sft

K = {k}


def build_few(questions, weights, *, seed):
    """SFT on at most K correct responses per question."""
    return build_sft(questions, weights, seed=seed, k=K)


register_objective(
    ObjectiveSpec(
        name="sft_few",
        build=build_few,
        columns=("prompt", "completion", "weight"),
        trainer="east.objectives.sft.trainer:WeightedSFTTrainer",
        config="trl:SFTConfig",
        label="SFT-few",
    )
)
'''


def _run(tmp_path, *overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "debug=fast",
            "imports=[toy_objective]",
            "objective.name=sft_few",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
        cwd=tmp_path,  # the toy module sits here, as a user's would beside their runs
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_an_objective_of_yours_runs_the_loop_and_is_keyed_by_its_code(tmp_path):
    (tmp_path / "toy_objective.py").write_text(TOY.format(k=1))
    _run(tmp_path, f"hydra.run.dir={tmp_path / 'run1'}")
    first = json.loads((tmp_path / "run1" / "results.json").read_text())
    assert first["run"]["objective"] == "sft_few"
    assert first["stages"]["train"]["cached"] is False and "trained" in first["eval"]["arith"]
    # One record per kept question: the toy's builder ran (SFT's own gives up to sft_k).
    assert first["data"]["records"] == first["data"]["kept"] > 0

    # A comment changes nothing; the builder's constant rebuilds the records and what follows.
    (tmp_path / "toy_objective.py").write_text(TOY.format(k=1) + "# a comment\n")
    _run(tmp_path, f"hydra.run.dir={tmp_path / 'run2'}")
    second = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert all(s["cached"] for s in second["stages"].values() if "cached" in s), second["stages"]
    (tmp_path / "toy_objective.py").write_text(TOY.format(k=3))
    _run(tmp_path, f"hydra.run.dir={tmp_path / 'run3'}")
    third = json.loads((tmp_path / "run3" / "results.json").read_text())
    for stage in ("build", "train"):
        assert third["stages"][stage]["cached"] is False, stage
    assert third["stages"]["sample"]["cached"] is True
    assert third["data"]["records"] > third["data"]["kept"]  # up to 3 per question now

    # Its rows in the table: the vanilla label from its spec where the report imports it, its
    # name otherwise; a run of it is never dropped (the table's rows used to be a fixed list).
    from east.report import build_table

    (row,) = [r for r in build_table([third]) if r["row"] != "default"]
    assert (row["row"], row["label"]) == ("sft_few_east", "+EAST")
    assert [r["label"] for r in build_table([dict(third, run={**third["run"], "mapping": "uniform"})])] == [
        "default",
        "SFT_FEW",
    ]
    sys.path.insert(0, str(tmp_path))
    try:
        import toy_objective  # noqa: F401  (registers sft_few here)

        labels = [r["label"] for r in build_table([dict(third, run={**third["run"], "mapping": "uniform"})])]
    finally:
        sys.path.remove(str(tmp_path))
        from east.objectives import OBJECTIVES

        OBJECTIVES.pop("sft_few", None)
    assert labels == ["default", "SFT-few"]

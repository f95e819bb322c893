"""Every experiment config runs (shrunk to the embedded default) in one multirun; the SLURM
launcher config composes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from east.report import PAPER, paper_number
from tests.helpers import ROOT, SMALL
from tests.helpers import compose as _compose

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def test_one_experiment_per_table_cell():
    assert len(EXPERIMENTS) == 28  # 7 settings x 2 models x 2 datasets
    for name in EXPERIMENTS:
        cfg = _compose([f"experiment={name}"])
        assert cfg.experiment_name == name
        model, dataset = cfg.model.name, cfg.dataset.name
        setting = "default" if name.endswith("_default") else name.split("_", 2)[2]
        run = {
            "objective": "none" if setting == "default" else str(cfg.objective.name),
            "mapping": cfg.east.mapping,
            "sharpness": cfg.east.sharpness,
            "model": model,
            "dataset": dataset,
        }
        assert paper_number(run) == {
            "model": model,
            "setting": setting,
            "test_set": dataset,
            "accuracy": PAPER[model][setting][dataset],
        }
        assert cfg.model.name in ("llama-3.2-1b", "llama-3.1-8b")
        east = name.endswith("_east")
        if not name.endswith("_default"):
            assert cfg.east.mapping == ("power" if east else "uniform")
            assert cfg.objective.name == name.split("_")[2]
        else:
            assert cfg.evaluation.only


@pytest.mark.slow  # a minute: -m slow (test_one_experiment_per_table_cell composes each by default)
def test_every_experiment_runs_as_one_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "experiment=glob(*)",
        "model=tiny",
        "dataset=arith",
        "scale=tiny",
        "distributed=none",
        *SMALL,
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert sorted(r["run"]["experiment"] for r in results) == EXPERIMENTS
    for r in results:
        assert "base" in r["eval"]["arith"]
        assert ("trained" in r["eval"]["arith"]) == (not r["run"]["experiment"].endswith("_default"))
    # The shrunk cells share one base model and one sample set.
    keys = {r["stages"]["sample"]["key"] for r in results if "sample" in r["stages"]}
    assert len(keys) == 1


def test_slurm_launcher_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=["hydra/launcher=slurm", "paths.output_dir=/tmp/x"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1
    # The GPUs requested follow the cells' training processes (8B cells: zero3 on 8).
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "distributed=zero3", "paths.output_dir=/tmp/x"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher.gpus_per_node == 8


def test_paper_scale_cells_sample_with_vllm_and_8b_cells_shard():
    for name in EXPERIMENTS:
        cfg = _compose([f"experiment={name}"])
        assert cfg.sampler._target_ == "east.samplers.vllm.VLLMSampler", name
        assert cfg.model.chat_template == "llama3_paper", name
        assert cfg.distributed.num_processes == (8 if name.startswith("llama8b") else 1), name
        assert cfg.objective.trainer.get("lr_scheduler_type", "linear") == "linear", name


def test_paper_table_script_lists_the_experiments():
    text = (ROOT / "experiments" / "paper_table.sh").read_text()
    assert '"experiment=${cells[*]}"' in text and "rehearsal" in text
    assert "distributed=$dist" in text  # the 8B cells sweep apart, with their GPU count
    assert Path(ROOT / "experiments" / "paper_table.sh").stat().st_mode & 0o111

"""A train stage survives preemption: killed with SIGKILL mid-training (driver and worker
alike), the same command resumes from the last checkpoint in the stage's work folder and ends
at the weights of a run that was never interrupted. Checkpoints cut short are skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROOT, SMALL, kill_at_first_checkpoint

# Long enough to be killed mid-way: 10 epochs of the SMALL default's records (about 70
# optimiser steps), a checkpoint every 10. No base-model evaluation: not what is tested.
TRAIN = [
    "model.trainer_overrides.sft.num_train_epochs=10",
    "objective.trainer.save_steps=10",
    "evaluation.base=false",
    "logger=none",
]


def _cmd(cache: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "run.py"),
        *SMALL,
        *TRAIN,
        "isolate_stages=true",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={out}",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _weights(cache: Path, out: Path) -> dict[str, torch.Tensor]:
    key = json.loads((out / "results.json").read_text())["stages"]["train"]["key"]
    return load_file(str(cache / "train" / key / "model" / "model.safetensors"))


def test_a_killed_train_stage_resumes_to_the_same_weights(tmp_path):
    whole = tmp_path / "whole"
    done = subprocess.run(
        _cmd(whole, tmp_path / "o1"), env=_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _weights(whole, tmp_path / "o1")

    killed = tmp_path / "killed"
    killed.mkdir()
    for stage in ("base_model", "sample", "grade", "build"):  # the same stages before training
        shutil.copytree(whole / stage, killed / stage)
    proc = subprocess.Popen(
        _cmd(killed, tmp_path / "o2"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes the worker too
    )
    checkpoint = kill_at_first_checkpoint(proc, killed)
    work = checkpoint.parent
    assert not list((killed / "train").glob("[0-9a-f]*"))  # no artifact: the stage never finished
    # A later checkpoint cut short by the kill (no trainer_state.json) must not be resumed from.
    (work / "checkpoint-999999").mkdir()

    resumed = subprocess.run(
        _cmd(killed, tmp_path / "o3"), env=_env(), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training from" in resumed.stderr
    assert "checkpoint-999999" in resumed.stderr  # set aside, with a warning
    # The tied lm_head.weight is the embedding, loaded with it: no "missing keys" warning.
    assert "missing keys" not in resumed.stderr, resumed.stderr[-3000:]
    weights = _weights(killed, tmp_path / "o3")
    assert weights.keys() == reference.keys()
    for name, w in reference.items():
        assert torch.equal(weights[name], w), name
    assert not work.exists()  # the work folder goes once the artifact is in place


def _checkpoint(work: Path, step: int, weights: bytes = b"weights", sealed: bool = True) -> Path:
    from east.cache import write_manifest

    d = work / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text("{}")
    (d / "model.safetensors").write_bytes(weights)
    if sealed:
        write_manifest(d, hash_large=False)
    return d


@pytest.mark.parametrize("state", ["", "{not json"])
def test_a_checkpoint_without_a_readable_state_is_skipped(tmp_path, state):
    from east.stages.checkpoints import last_checkpoint

    good = _checkpoint(tmp_path, 5)
    bad = tmp_path / "checkpoint-10"
    bad.mkdir()
    if state:
        (bad / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(good)
    assert not bad.exists()
    assert last_checkpoint(tmp_path / "nothing") is None


def test_a_checkpoint_cut_short_before_its_manifest_is_removed(tmp_path):
    from east.stages.checkpoints import last_checkpoint

    good = _checkpoint(tmp_path, 5)
    unsealed = _checkpoint(tmp_path, 10, sealed=False)
    assert last_checkpoint(tmp_path) == str(good) and not unsealed.exists()


def test_a_damaged_checkpoint_is_set_aside_with_one_line_and_never_resumed(tmp_path, caplog):
    """One flipped byte in a checkpoint's weights was resumed from without a word, and the
    different model sealed as a verified artifact. Now the checkpoint is verified against the
    manifest written when it was saved, and a damaged one set aside."""
    from east.stages.checkpoints import last_checkpoint

    good = _checkpoint(tmp_path, 5)
    damaged = _checkpoint(tmp_path, 10, b"weights")
    (damaged / "model.safetensors").write_bytes(b"weighTs")  # one byte flipped, same size
    assert last_checkpoint(tmp_path) == str(good)
    assert not damaged.exists() and (tmp_path / "checkpoint-10.damaged" / "model.safetensors").exists()
    [line] = [r.getMessage() for r in caplog.records if "checkpoint-10" in r.getMessage()]
    assert "model.safetensors has changed since it was written" in line and "set aside" in line
    assert last_checkpoint(tmp_path, tidy=False) == str(good)  # the other processes' view

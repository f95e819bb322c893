"""A sampler backend of yours, outside the package, named by ``sampler._target_``: it runs the
loop (debug=fast), and its code is in the keys of the stages that generate (README: Your own
sampler backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

TOY = '''
from east.samplers.hf import HFSampler

ROWS = {rows}


class ToySampler(HFSampler):
    """The HF backend, {rows} rows a batch whatever the config says."""

    def __init__(self, batch_size=64, **kwargs):
        super().__init__(batch_size=ROWS, **kwargs)
'''


def _run(tmp_path, name):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "debug=fast",
            "sampler._target_=toy_sampler.ToySampler",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / name}",
        ],
        cwd=tmp_path,  # the toy module sits here, as a user's would beside their runs
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / name / "results.json").read_text())


def test_a_sampler_of_yours_runs_the_loop_and_is_keyed_by_its_code(tmp_path):
    (tmp_path / "toy_sampler.py").write_text(TOY.format(rows=5))
    first = _run(tmp_path, "run1")
    assert first["stages"]["sample"]["cached"] is False and "trained" in first["eval"]["arith"]
    # A comment changes nothing.
    (tmp_path / "toy_sampler.py").write_text(TOY.format(rows=5) + "# a comment\n")
    second = _run(tmp_path, "run2")
    assert all(s["cached"] for s in second["stages"].values() if "cached" in s), second["stages"]
    # Its code does: every stage that generates runs again (the same responses: the HF backend's
    # are independent of batching), and the base model's warm-up is reused.
    (tmp_path / "toy_sampler.py").write_text(TOY.format(rows=7))
    third = _run(tmp_path, "run3")
    generating = [s for s in third["stages"] if s.startswith(("sample", "evaluate"))]
    assert generating and all(third["stages"][s]["cached"] is False for s in generating), third["stages"]
    assert third["stages"]["base_model"]["cached"] is True
    assert third["eval"] == first["eval"] and third["data"] == first["data"]

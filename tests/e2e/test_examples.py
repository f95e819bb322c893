"""examples/ run as a user runs them: on a tiny local model, offline."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_weighted_dpo_example_trains_with_its_weights(tiny_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    script = ROOT / "examples" / "weighted_dpo.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert set(logged) == {"loss", "loss_weighted", "weight_mean"}
    assert logged["loss_weighted"] > 0
    # The first step's 4 pairs (TRL shuffles them) weigh 0.5 + a/4 for a in 0..7: mean in [0.875, 1.875].
    assert 0.875 <= logged["weight_mean"] <= 1.875

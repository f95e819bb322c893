"""experiments/paper_table.sh's schedule, with a stand-in for `python` that records each
call: locally the 1B and 8B chains run one after the other (side by side, both phase A's
vLLM engines would reserve the same GPUs); under a cluster launcher they run side by side."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
# Records run.py calls (start and end, with the model chain they belong to) and succeeds.
if [[ "$1" == run.py ]]; then
  chain=llama1b; [[ "$*" == *llama8b* ]] && chain=llama8b
  echo "start $chain $(date +%s.%N)" >> "$CALLS"
  echo "args $chain $*" >> "$CALLS"
  sleep 0.5
  echo "end $chain $(date +%s.%N)" >> "$CALLS"
fi
exit 0
"""


def _schedule(tmp_path, *extra: str) -> dict[str, list[tuple[float, float]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "SWEEP_DIR": str(tmp_path / "s"),
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "paper_table.sh"), "llama*_gsm8k_sft_east", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    spans: dict[str, list[tuple[float, float]]] = {"llama1b": [], "llama8b": []}
    opened: dict[str, float] = {}
    for line in calls.read_text().splitlines():
        kind, chain, at = line.split(maxsplit=2)
        if kind == "args":
            spans.setdefault(f"args-{chain}", []).append(at)
            continue
        if kind == "start":
            opened[chain] = float(at)
        else:
            spans[chain].append((opened.pop(chain), float(at)))
    assert all(len(s) == 2 for s in spans.values()), spans  # phase A and phase B per chain
    return spans


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def test_local_chains_run_one_after_the_other(tmp_path):
    spans = _schedule(tmp_path)
    assert not _overlap(spans["llama1b"], spans["llama8b"])


@pytest.mark.parametrize("launcher", ["hydra/launcher=slurm"])
def test_a_cluster_launcher_runs_the_chains_side_by_side(tmp_path, launcher):
    spans = _schedule(tmp_path, launcher)
    assert _overlap(spans["llama1b"], spans["llama8b"])


def test_each_model_asks_the_cluster_for_its_own_resources(tmp_path):
    """Per GPU, by model (not 8 CPUs and 64 GB for every GPU of every job): both phases of a
    chain ask the same; a user's resources.* override comes after and wins."""
    spans = _schedule(tmp_path, "hydra/launcher=slurm", "resources.mem_gb_per_gpu=99")
    for chain, cpus, mem in (("llama1b", 4, 16), ("llama8b", 6, 32)):
        for args in spans[f"args-{chain}"]:
            words = args.split()
            assert f"resources.cpus_per_gpu={cpus}" in words and f"resources.mem_gb_per_gpu={mem}" in words
            assert words.index(f"resources.mem_gb_per_gpu={mem}") < words.index("resources.mem_gb_per_gpu=99")

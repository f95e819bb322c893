"""experiments/fetch_data.py writes the hub's GSM8K and MATH as the local files that
paths.data_dir reads. The hub is unreachable here: a stand-in for ``datasets.load_dataset``
serves the shared copies of the same splits (that stand-in is the only fake)."""

from __future__ import annotations

import importlib.util
import json

from east.data import load_splits
from tests.helpers import ROOT
from tests.helpers import compose as _compose


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_data", ROOT / "experiments" / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetched_files_are_what_data_dir_reads(tmp_path, shared_data, monkeypatch):
    import datasets

    hub = {
        ("openai/gsm8k", "main", "train"): "gsm8k/train.jsonl",
        ("openai/gsm8k", "main", "test"): "gsm8k/test.jsonl",
        ("DigitalLearningGmbH/MATH-lighteval", "default", "train"): "math/train.jsonl",
        ("DigitalLearningGmbH/MATH-lighteval", "default", "test"): "math/test.jsonl",
        ("HuggingFaceH4/MATH-500", "default", "test"): "math/test500.jsonl",
    }
    calls = []

    def load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        text = (shared_data / hub[(hub_id, config, split)]).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    fetch = _fetch_module()
    files = fetch.fetch(tmp_path)
    assert sorted(calls) == sorted(hub)  # every split the loader reads, as it reads it (test_source)
    assert {f["records"] for f in files} >= {7473, 1319, 7500, 5000, 500} and not any(
        f["kept"] for f in files
    )
    assert not list(tmp_path.rglob("*.partial"))

    def cfg(name, *extra):
        from omegaconf import OmegaConf

        return OmegaConf.to_object(
            _compose([f"dataset={name}", f"paths.data_dir={tmp_path}", *extra]).dataset
        )

    gsm8k = load_splits(cfg("gsm8k"))
    assert len(gsm8k.train) == 7473 and len(gsm8k.tests["gsm8k"]) == 1319
    math = load_splits(cfg("math", "dataset.test_sets=[math,math500]"))
    assert (len(math.train), len(math.tests["math"]), len(math.tests["math500"])) == (7498, 5000, 500)
    # The same questions and golds as the shared copies.
    shared = load_splits(cfg("gsm8k", f"dataset.path={shared_data / 'gsm8k'}"))
    assert [(p.question, p.gold) for p in gsm8k.tests["gsm8k"]] == [
        (p.question, p.gold) for p in shared.tests["gsm8k"]
    ]

    # Run again: every file is kept, nothing is fetched.
    calls.clear()
    again = fetch.fetch(tmp_path)
    assert calls == [] and all(f["kept"] for f in again)
    assert [f["sha256"] for f in again] == [f["sha256"] for f in files]

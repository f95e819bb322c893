"""The default pipeline end to end on a shrunken embedded task: schema, sweep reuse, resume."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from east.cache import read_jsonl
from east.pipeline import run
from tests.helpers import ROOT, SMALL


def _run(cache: Path, out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*SMALL, f"paths.cache_dir={cache}", f"paths.output_dir={out}", *overrides]
        )
    results = run(cfg)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    return results


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def first(cache, tmp_path_factory) -> dict:
    return _run(cache, tmp_path_factory.mktemp("run"))


def test_results_schema(first):
    assert first["run"] == {
        "objective": "sft",
        "mapping": "power",
        "sharpness": 1.0,
        "model": "tiny",
        "dataset": "arith",
        "seed": 0,
        "experiment": None,
        "overrides": [],
        "weights_uniform": False,
    }
    for stage in ("base_model", "sample", "grade", "build", "train", "evaluate"):
        s = first["stages"][stage]
        assert set(s) == {"cached", "seconds", "key"} and isinstance(s["cached"], bool)
    d = first["data"]
    assert d["questions"] == 24 and 0 < d["kept"] <= 24
    assert d["kept"] + sum(d["dropped"].values()) == d["questions"]
    assert set(d["dropped"]) == {"all_incorrect", "all_correct", "no_boxed_correct", "no_boxed_incorrect"}
    for key in ("entropy", "weight"):
        assert set(d[key]) == {"mean", "min", "max"}
    assert d["weight"]["mean"] == pytest.approx(1.0, abs=1e-9)  # kept weights average 1
    assert d["entropy"]["min"] > 0  # all-correct questions are dropped by default
    e = first["eval"]["arith"]
    assert e["n"] == 16 and 0 <= e["base"] <= 1 and 0 <= e["trained"] <= 1
    assert first["stages"]["train"]["cached"] is False  # the trained model was built and evaluated


def test_sweep_reuses_sampling_and_grading(first, cache, tmp_path):
    for i, overrides in enumerate(
        (["east.sharpness=2"], ["objective=dpo"], ["mapping=accuracy", "east.sharpness=0.5"])
    ):
        r = _run(cache, tmp_path / str(i), *overrides)
        assert r["stages"]["sample"]["cached"] is True
        assert r["stages"]["grade"]["cached"] is True
        assert r["stages"]["sample"]["key"] == first["stages"]["sample"]["key"]
        assert r["stages"]["build"]["cached"] is False and r["stages"]["train"]["cached"] is False
        assert r["stages"]["evaluate_base_arith"]["cached"] is True  # base evaluated once per model/test
        assert r["data"]["weight"]["mean"] == pytest.approx(1.0)


def test_rerun_with_same_config_is_fully_cached(first, cache, tmp_path):
    r = _run(cache, tmp_path)
    assert all(s["cached"] for s in r["stages"].values())
    assert r["eval"] == first["eval"] and r["data"] == first["data"]


def test_debug_fast_is_the_tested_small_loop_and_runs_from_the_command_line(first, cache, tmp_path):
    """`python run.py debug=fast` (README) is the shrunken loop these tests run: the same stage
    keys, so here every stage is already built."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "debug=fast",
            f"paths.cache_dir={cache}",
            f"paths.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert {k: s["key"] for k, s in r["stages"].items()} == {k: s["key"] for k, s in first["stages"].items()}
    assert all(s["cached"] for s in r["stages"].values())
    assert "trained - base [95% CI]" in proc.stdout + proc.stderr


def test_killed_run_resumes_from_the_last_finished_stage(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *SMALL,
        "objective=kto",
        "seed=7",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while not list((cache / "sample").glob("[0-9a-f]*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # killed after sampling, mid-way through the rest
    proc.wait()
    assert list((cache / "sample").glob("[0-9a-f]*")), "the run died before finishing its sample stage"
    assert not (out / "results.json").exists()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["stages"]["sample"]["cached"] is True
    assert results["stages"]["base_model"]["cached"] is True
    assert "trained" in results["eval"]["arith"]


@pytest.mark.parametrize("isolate", ["false", "true"])
def test_ctrl_c_is_one_line_naming_the_stage(tmp_path, isolate):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during the warm-up:
    one line naming the stage and what to do, exit 130, no traceback from the driver, a
    worker or an idle grading worker."""
    fresh = tmp_path / "cache"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *SMALL,
        "model.tiny.warmup_steps=5000",  # long enough to be interrupted in it
        f"isolate_stages={isolate}",
        f"paths.cache_dir={fresh}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # SIGINT as a terminal's foreground job has it: a background job of a shell without job
        # control (a CI script run with &) inherits it ignored, and Python keeps it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not list((fresh / "base_model").glob(".tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(3)  # well inside the warm-up
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "interrupted in stage base_model; rerun the same command to continue"
    )
    assert "Traceback" not in err + out
    assert not list((fresh / "base_model").glob("[0-9a-f]*"))  # nothing half-written kept


def test_training_stage_under_two_accelerate_processes(first, cache, tmp_path):
    """Hydra stays in the driver; two CPU workers (gloo DDP) read the spec it wrote."""
    r = _run(cache, tmp_path, "distributed=cpu2", "objective=dpo")
    assert r["stages"]["train"]["cached"] is False
    assert r["stages"]["sample"]["cached"] is True
    spec = json.loads(
        next((cache / "train").glob(f"{r['stages']['train']['key']}/train_spec.json")).read_text()
    )
    assert spec["objective"] == "dpo" and spec["report_to"] == []
    assert 0 <= r["eval"]["arith"]["trained"] <= 1


def test_rounds_local_uncertainty_and_sampled_evaluation(first, cache, tmp_path):
    r = _run(
        cache,
        tmp_path,
        "rounds=2",
        "mapping=local_uncertainty",
        "evaluation.samples=4",
        "evaluation.pass_k=[1,4]",
    )
    assert [x["round"] for x in r["rounds"]] == [0, 1]
    # Round 0 samples what the sweep sampled, now with the token entropies this mapping reads
    # (recorded only when asked: another key, the same responses).
    assert r["stages"]["sample"]["key"] != first["stages"]["sample"]["key"]
    mine, theirs = (
        [
            row["responses"]
            for row in read_jsonl(cache / "sample" / run["stages"]["sample"]["key"] / "samples.jsonl")
        ]
        for run in (r, first)
    )
    assert mine == theirs
    assert all(
        row["token_entropy"] and all(t > 0 for t in row["token_entropy"])
        for row in read_jsonl(cache / "sample" / r["stages"]["sample"]["key"] / "samples.jsonl")
    )
    assert (
        r["stages"]["sample_r1"]["key"] != r["stages"]["sample"]["key"]
    )  # round 1 samples the trained model
    e = r["eval"]["arith"]
    assert e["trained"] == r["rounds"][-1]["eval"]["arith"]
    for which in ("base", "trained"):
        assert 0 <= e[f"{which}_pass@1"] <= e[f"{which}_pass@4"] <= 1
        assert 0 <= e[f"{which}_maj@4"] <= 1
    assert r["data"]["weight"]["mean"] == pytest.approx(1.0)


def test_same_seed_gives_identical_numbers_from_scratch(first, tmp_path):
    again = _run(tmp_path / "fresh_cache", tmp_path / "out")  # nothing shared with `first`
    assert not any(s["cached"] for s in again["stages"].values())
    assert again["eval"] == first["eval"] and again["data"] == first["data"]
    assert {k: v["key"] for k, v in again["stages"].items()} == {
        k: v["key"] for k, v in first["stages"].items()
    }


def test_seed_changes_sampling_and_training(first, cache, tmp_path, caplog, capfd):
    with caplog.at_level(logging.INFO):
        other = _run(cache, tmp_path, "seed=1")
    assert other["stages"]["base_model"]["cached"] is True  # the base model does not depend on the run seed
    assert other["stages"]["sample"]["key"] != first["stages"]["sample"]["key"]
    # What the run showed a person: each stage as it starts and ends, labelled evaluations,
    # compact training lines with an ETA, and no library noise.
    messages = [r.getMessage() for r in caplog.records]
    for start in ("stage base_model: cached", "stage sample: building", "stage train: built in"):
        assert any(m.startswith(start) for m in messages), start
    for label in ("evaluate_base_arith", "evaluate_trained_arith"):
        assert any(m.startswith(f"stage {label}: ") for m in messages), label
    steps = [m for m in messages if m.startswith("train sft: step ")]
    assert steps and all(" loss " in m and "ETA" in m for m in steps)
    out, err = capfd.readouterr()
    assert "{'loss'" not in out + err and "FutureWarning" not in err


def test_the_summary_says_what_changed_and_where_everything_is(first, cache):
    from east.results import summary_text

    e = first["eval"]["arith"]
    d = e["delta"]
    assert d["delta"] == pytest.approx(100 * (e["trained"] - e["base"]))
    assert d["low"] <= d["delta"] <= d["high"] and 0 <= d["p_value"] <= 1
    model = Path(first["paths"]["trained_model"])
    assert model == cache / "train" / first["stages"]["train"]["key"] / "model"
    assert (model / "config.json").is_file()
    text = summary_text(first, [("W&B (offline)", "/somewhere")])
    assert "(mean 1 by construction)" in text and "mean weight" not in text
    assert "results.json holds fractions" in text and f"{100 * e['base']:.1f}" in text
    assert f"{d['delta']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]" in text
    for label, value in (
        ("run folder", first["paths"]["run"]),
        ("trained model", model),
        ("W&B (offline)", "/somewhere"),
    ):
        assert re.search(rf"{re.escape(label)}: +{re.escape(str(value))}", text), label
    # The settings that ran: the tiny model's overrides, not objective.trainer's.
    info = json.loads((model.parent / "train_info.json").read_text())
    # (train_info.json lists what differs from TRL's defaults: 3 epochs is TRL's default too.)
    assert info["settings"]["learning_rate"] == 3e-4 and info["settings"]["lr_scheduler_type"] == "cosine"
    assert "num_train_epochs" not in info["settings"]


def _stage_dir(cache: Path, results: dict, label: str, stage: str) -> Path:
    return cache / stage / results["stages"][label]["key"]


def _keep_half_lines(p: Path) -> None:
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[: len(lines) // 2]))


#: (label, stage, file, damage, downstream folders also deleted) -- the faults a user hit.
PIPELINE_FAULTS = {
    "samples cut to half, downstream deleted": (
        "sample",
        "sample",
        "samples.jsonl",
        _keep_half_lines,
        ("grade", "build"),
    ),
    "grades cut to half": ("grade", "grade", "grades.jsonl", _keep_half_lines, ()),
    "samples emptied": ("sample", "sample", "samples.jsonl", lambda p: p.write_text(""), ()),
    "records deleted": ("build", "build", "records.jsonl", lambda p: p.unlink(), ()),
    "checkpoint truncated": (
        "train",
        "train",
        "model/model.safetensors",
        lambda p: p.write_bytes(p.read_bytes()[:1000]),
        (),
    ),
    "predictions deleted": (
        "evaluate_trained_arith",
        "evaluate",
        "predictions.jsonl",
        lambda p: p.unlink(),
        (),
    ),
}


@pytest.mark.parametrize("fault", sorted(PIPELINE_FAULTS))
def test_a_damaged_artifact_is_rebuilt_never_read(first, cache, tmp_path, fault):
    """Truncated, emptied or deleted files in a cached stage: the rerun rebuilds that stage
    (and what reads it) and reports the same numbers as the intact run."""
    import shutil

    label, stage, name, damage, also_deleted = PIPELINE_FAULTS[fault]
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    damage(_stage_dir(copy, first, label, stage) / name)
    for other in also_deleted:
        shutil.rmtree(_stage_dir(copy, first, other, other))
    r = _run(copy, tmp_path / "out")
    assert r["stages"][label]["cached"] is False  # rebuilt
    assert r["stages"][label]["key"] == first["stages"][label]["key"]
    assert r["eval"] == first["eval"] and r["data"] == first["data"]


def test_samples_and_grades_are_joined_by_id(first, cache):
    from east.cache import StageResult
    from east.cache import join_by_id as _join_by_id

    rows = [{"id": "a"}, {"id": "b"}]
    left = StageResult("sample", "k1", cache / "sample" / "k1", True, 0.0)
    right = StageResult("grade", "k2", cache / "grade" / "k2", True, 0.0)
    assert _join_by_id(rows, [{"id": "b", "x": 2}, {"id": "a", "x": 1}], left, right) == [
        {"id": "a", "x": 1},
        {"id": "b", "x": 2},
    ]
    with pytest.raises(RuntimeError, match=r"1 missing from grade .*'b'.*delete both folders"):
        _join_by_id(rows, [{"id": "a"}], left, right)
    with pytest.raises(RuntimeError, match=r"1 extra \(e.g. \['c'\]\)"):
        _join_by_id(rows, [{"id": "a"}, {"id": "b"}, {"id": "c"}], left, right)
    with pytest.raises(RuntimeError, match="repeats question id 'a'"):
        _join_by_id(rows, [{"id": "a"}, {"id": "a"}], left, right)


@pytest.mark.parametrize("where", ["init", "log", "finish"])
def test_a_failing_wandb_never_loses_training_or_results(first, cache, tmp_path, monkeypatch, caplog, where):
    """W&B's service dies (every call raises from then on): at start, during training (the
    trainer logs through our guarded callback) or at the end. The run completes, results.json
    is written, and the failure is one warning."""
    import wandb

    def dead(*args, **kwargs):
        raise ConnectionResetError("wandb-core is gone")

    if where == "init":
        monkeypatch.setattr(wandb, "init", dead)
    else:
        from wandb.sdk.wandb_run import Run

        monkeypatch.setattr(Run, where, dead)
    out = tmp_path / "out"
    r = _run(
        cache,
        out,
        "logger=wandb",
        "logger.mode=offline",
        f"east.sharpness={ {'init': 3, 'log': 4, 'finish': 5}[where] }",
    )
    assert r["stages"]["train"]["cached"] is False  # training ran while W&B was failing
    assert (out / "results.json").exists()
    assert f"W&B {where} failed" in caplog.text


def test_a_failed_cell_is_recorded_and_the_sweep_goes_on(first, cache, tmp_path):
    """A cell that fails at run time (one sample per question: every question all right or all
    wrong, none kept) is recorded in its folder; the other cell runs; the table is written
    listing the failed one; the sweep exits non-zero."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            *SMALL,
            "sampling.n=1,6",  # after SMALL's own sampling.n
            f"paths.cache_dir={cache}",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    failed = json.loads(next(sweep.rglob("failed.json")).read_text())
    assert failed["error"].startswith("NothingToTrain: no training question survived the filters")
    assert "sampling.n=1" in failed["overrides"] and failed["traceback"]
    assert len(list(sweep.rglob("results.json"))) == 1  # the other cell ran
    table = (sweep / "table.md").read_text()
    assert "Missing: 1 cell(s) without results." in table and "no training question survived" in table


def test_float16_trains_on_fp32_master_weights(first, cache, tmp_path):
    """model.dtype=float16 used to train in pure fp16 on a CPU and diverge (loss 0.11 -> 275,
    trained accuracy 0) without a word: the policy now trains in fp32 whatever the model's
    dtype (on a GPU under fp16 autocast with a loss scaler), and is saved in float16."""
    r = _run(cache, tmp_path, "model.dtype=float16")
    assert r["train"]["param_dtype"] == "float32" and r["train"]["saved_dtype"] == "float16"
    history = json.loads((cache / "train" / r["stages"]["train"]["key"] / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert r["eval"]["arith"]["trained"] > 0


#: SMALL without the embedded task's own keys (a jsonl dataset has no dataset.arith).
SMALL_JSONL = [o for o in SMALL if not o.startswith("dataset.arith.")]


def _run_jsonl(cache: Path, out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[*SMALL_JSONL, f"paths.cache_dir={cache}", f"paths.output_dir={out}", *overrides],
        )
    return run(cfg)


def _write_arith_jsonl(folder: Path, files: dict[str, str]) -> Path:
    """Embedded-task questions as a bring-your-own JSON Lines dataset."""
    from east.data.arith import ArithConfig, generate

    parts = generate(
        ArithConfig(steps=1, max_number=5, warmup_size=600, train_size=24, test_size=16, warmup_short_share=0)
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in files.items():
        rows = [{"question": p.question, "answer": p.gold} for p in parts[split]]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_default_model_runs_on_your_own_data(tmp_path):
    """dataset=jsonl with the tiny model (once a StopIteration traceback from TRL): its warm-up
    is the embedded task's, and the run goes through every stage."""
    data = _write_arith_jsonl(tmp_path / "data", {"train.jsonl": "train", "test.jsonl": "test"})
    r = _run_jsonl(tmp_path / "cache", tmp_path / "out", "dataset=jsonl", f"dataset.path={data}")
    assert r["data"]["questions"] == 24 and r["eval"]["test"]["n"] == 16
    assert "trained" in r["eval"]["test"]


def test_one_file_for_train_and_test_is_refused_unless_asked(tmp_path):
    from east.data import DataError

    data = _write_arith_jsonl(tmp_path / "data", {"all.jsonl": "train"})
    with pytest.raises(
        DataError, match=r"all 24 of its questions are training questions .*allow_test_in_train"
    ):
        _run_jsonl(
            tmp_path / "cache", tmp_path / "out", "dataset=jsonl", f"dataset.path={data / 'all.jsonl'}"
        )
    r = _run_jsonl(
        tmp_path / "cache",
        tmp_path / "out",
        "dataset=jsonl",
        f"dataset.path={data / 'all.jsonl'}",
        "dataset.allow_test_in_train=true",
        "evaluation.only=true",
    )
    assert r["eval"]["test"]["n"] == 24


def test_the_default_model_runs_on_gsm8k_and_math(tmp_path, shared_data):
    """model=tiny with dataset=gsm8k or math (once TRL's StopIteration: the warm-up looked for
    an arith split): the warm-up is the embedded task's, built once for both."""
    for dataset in ("gsm8k", "math"):
        r = _run_jsonl(
            tmp_path / "cache",
            tmp_path / dataset,
            f"dataset={dataset}",
            f"paths.data_dir={shared_data}",
            "dataset.max_test=4",
            "evaluation.only=true",
        )
        [(name, e)] = r["eval"].items()
        assert e["n"] == 4 and 0 <= e["base"] <= 1, name
        assert r["stages"]["base_model"]["cached"] is (dataset == "math")

"""Every user's situation is one line naming what to do, exit 2, and nothing partial left
behind; SIGTERM stops a run like Ctrl-C; no worker outlives its driver (issue 28).

Storage faults a test cannot make for real (a filesystem remounted read-only, a disk that
fills during a save) are injected through ``imports:``, the way a user's own module is
loaded, by a module that makes the named library call fail as the kernel would.
``USER_ERRORS`` lists them for the fault table (tests/FAULTS.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, SMALL

#: fault -> (overrides, injected code (or None), the one line's expected text)
USER_ERRORS: dict[str, tuple[list[str], str | None, str]] = {
    "a read-only cache that needs a build (EROFS on its lock)": (
        [],
        """
import errno, east.cache as c
def _lock(path, stage, key, timeout_s=None):
    raise OSError(errno.EROFS, "Read-only file system", str(path.parent / ".locks" / key))
c.key_lock = _lock
""",
        r"Error: cannot write .*\.locks.* \(Read-only file system\): point paths\.cache_dir",
    ),
    "the cache remounted read-only mid-run (writing the grades)": (
        [],
        """
import errno, east.stages.driver as d
_real = d.write_jsonl
def _write(path, rows):
    if path.name == "grades.jsonl":
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    return _real(path, rows)
d.write_jsonl = _write
""",
        r"Error: cannot write .*grades\.jsonl \(Read-only file system\)",
    ),
    "the disk fills during the train stage's save (SafetensorError)": (
        [],
        """
import transformers.modeling_utils as m
from safetensors import SafetensorError
def _full(*args, **kwargs):
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
m.safe_save_file = _full
""",
        r"Error: the disk is full \(.*StorageFull.*\): free space",
    ),
    "paths.lock_timeout_s expiring (another run holds the stage)": (
        ["paths.lock_timeout_s=1"],
        """
import east.cache as c, east.locks as locks
def _lock(path, stage, key, timeout_s=None):
    raise locks.LockTimeout(f"stage {stage} ({key}): waited 1s for pid 12345 building it (paths.lock_timeout_s=1); if that process is stopped or hung, end it and rerun the same command")
c.key_lock = _lock
""",
        r"Error: stage \w+ \(.*\): waited 1s for pid 12345 building it",
    ),
    "EAST_CACHE_DIR pointing at a file": (
        ["paths.cache_dir={file}"],
        None,
        r"Error: invalid config paths\.cache_dir=.*: it is a file, not a folder",
    ),
    "hydra.run.dir under a file": (
        ["hydra.run.dir={file}/run"],
        None,
        r"Error: invalid config hydra\.run\.dir=.*, which is a file, not a folder",
    ),
    "paths.output_dir under a file": (
        ["paths.output_dir={file}/out"],
        None,
        r"Error: invalid config paths\.output_dir=.*, which is a file, not a folder",
    ),
    "model.path a file": (
        ["model=llama-3.2-1b", "model.path={file}"],
        None,
        r"Error: invalid config model\.path=.*a file, not a folder of weights",
    ),
    "model.path an empty folder": (
        ["model=llama-3.2-1b", "model.path={empty}"],
        None,
        r"Error: invalid config model\.path=.*a folder without config\.json",
    ),
    "sampling.n=1 with the filters relaxed (every entropy 0)": (
        ["sampling.n=1", "filters.drop_all_correct=false", "filters.require_boxed_incorrect=false"],
        None,
        r"Error: every one of the \d+ kept questions has entropy 0.*sampling\.n=1",
    ),
    "a training loss that becomes NaN (a NaN model was saved and evaluated)": (
        [],
        """
from east.objectives import get_objective
cls = get_objective("sft").trainer_class()
_real = cls.compute_loss
def _nan(self, *args, **kwargs):  # the train stage's loss turns NaN from its third step
    out = _real(self, *args, **kwargs)
    if ".work-" in str(self.args.output_dir) and self.state.global_step >= 2:
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
    return out
cls.compute_loss = _nan
""",
        r"Error: training diverged at step \d+: the loss is nan \(it started at [0-9.]+\); nothing is saved",
    ),
    "own natural-language data on the default tiny model (it answers none of it)": (
        ["dataset=jsonl", "dataset.path={words}"],
        None,
        r"Error: no training question survived the filters \(\d+ dropped: all_incorrect \d+\); the model "
        r"answered none .* no switch; the default tiny model .*Cal has 8 cups.* real model",
    ),
    "a user mapping returning negative weights": (
        ["east.mapping=negative_user", "east.sharpness=1"],
        """
from east.weighting import register_mapping
@register_mapping("negative_user")
def negative(h, a):
    return h - 10.0
""",
        r"Error: mapping 'negative_user' \(sharpness 1\): negative raw weight",
    ),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the warm-up, samples and grades are built once."""
    return tmp_path_factory.mktemp("cache")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("fault", list(USER_ERRORS))
def test_a_users_situation_is_one_line_exit_2(fault, cache, tmp_path):
    overrides, code, expected = USER_ERRORS[fault]
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    words = tmp_path / "words"  # natural-language problems whose answers are out of its reach
    words.mkdir()
    for split, ks in (("train", range(3, 11)), ("test", range(11, 15))):
        rows = [
            {
                "question": f"A train covers {k} hundred miles, then {k} hundred more. How far?",
                "answer": f"{k}00.5",
            }
            for k in ks
        ]
        (words / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fill = {"file": tmp_path / "afile", "empty": tmp_path / "empty", "words": words}
    overrides = [o.format(**fill) for o in overrides]
    extra = []
    if code is not None:
        (tmp_path / "inject_fault.py").write_text(code)
        extra = ["imports=[inject_fault]"]
    if not any(o.startswith("hydra.run.dir") for o in overrides):
        extra.append(f"hydra.run.dir={tmp_path / 'out'}")
    real_model = "model=llama-3.2-1b" in overrides  # (SMALL shrinks the tiny model)
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *[
            o
            for o in SMALL
            if not (real_model and o.startswith("model.tiny"))
            and not ("dataset=jsonl" in overrides and o.startswith("dataset.arith"))
        ],
        "evaluation.base=false",
        f"paths.cache_dir={cache}",
        *extra,
        *overrides,
    ]
    done = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**_env(), "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    import re

    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.search(expected, last), last
    assert not list(cache.glob("*/.tmp-*")), "a partial artifact was left behind"


def _processes_of(tag: str) -> list[str]:
    """The processes still alive that carry ``tag`` in their environment: the run's driver and
    everything it started, in whatever session or process group (workers lead their own)."""
    needle = f"EAST_TEST_TAG={tag}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if state != "Z":  # a zombie has ended; its parent has not reaped it yet
            out.append(f"{d.name} {command[:120]}")
    return out


def _start(tmp_path: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *SMALL,
        "model.trainer_overrides.sft.num_train_epochs=100",  # long enough to stop it in training
        "objective.trainer.save_steps=10",
        "evaluation.base=false",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**_env(), "EAST_TEST_TAG": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_training(proc: subprocess.Popen, cache: Path, ranks: int, tag: str) -> None:
    """Until the train stage has a checkpoint and ``ranks`` training processes run."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if list((cache / "train").glob(".work-*/checkpoint-*/manifest.json")):
            workers = [p for p in _processes_of(tag) if "east.stages.train" in p]
            if len(workers) >= ranks:
                return
        time.sleep(0.1)
    raise AssertionError(f"training never started: {proc.poll()}")


def test_sigterm_is_one_line_stops_every_worker_and_a_rerun_continues(cache, tmp_path):
    """SIGTERM (a scheduler's preemption) to the driver exited 143 with no message and left
    its isolated workers running; a rerun could overlap them in the same work folder."""
    proc = _start(tmp_path, cache, "isolate_stages=true")
    _wait_for_training(proc, cache, ranks=1, tag=str(tmp_path))
    proc.send_signal(signal.SIGTERM)  # the driver only, as `kill PID` does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "terminated in stage train; rerun the same command to continue"
    assert "Traceback" not in err
    time.sleep(1)
    assert _processes_of(str(tmp_path)) == []
    again = _start(tmp_path, cache, "isolate_stages=true")
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert "resuming training from" in err


def test_a_driver_killed_with_sigkill_leaves_no_training_process(cache, tmp_path):
    """SIGKILL of the driver (no handler can run) while two accelerate ranks train: the
    launcher dies with it (parent-death signal), and the ranks with the launcher."""
    proc = _start(tmp_path, cache, "distributed=cpu2")
    _wait_for_training(proc, cache, ranks=2, tag=str(tmp_path))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.time() + 60
    while _processes_of(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_of(str(tmp_path)) == []


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    """SIGINT in run.py's first second (its imports) printed a KeyboardInterrupt traceback.

    The signal goes when the child reports (``-X importtime``) that it has imported hydra,
    inside run.py's guarded imports. A fixed delay raced the interpreter's own start on a
    loaded machine: a SIGINT while ``site`` runs is lost by Python itself (the run went on
    without its site-packages, or to the end), which is no run.py to test."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", str(ROOT / "run.py"), "debug=fast", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = []
    for line in proc.stderr:  # "import time: self | cumulative | module", as each import ends
        started.append(line)
        if line.rstrip().endswith("| hydra"):
            break
    assert started and started[-1].rstrip().endswith("| hydra"), "".join(started)[-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    err = "\n".join(line for line in err.splitlines() if not line.startswith("import time:"))
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted")

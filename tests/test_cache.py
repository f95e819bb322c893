"""The stage cache: content keys, skip-if-present, and atomic writes."""

from __future__ import annotations

import pytest

from east.cache import StageCache, stage_key


def test_key_depends_on_config_and_inputs_only():
    assert stage_key("s", {"a": 1, "b": 2}, ["x"]) == stage_key("s", {"b": 2, "a": 1}, ["x"])
    assert stage_key("s", {"a": 1}, ["x"]) != stage_key("s", {"a": 2}, ["x"])
    assert stage_key("s", {"a": 1}, ["x"]) != stage_key("s", {"a": 1}, ["y"])
    assert stage_key("s", {"a": 1}, []) != stage_key("t", {"a": 1}, [])


def test_built_once_then_reused(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def build(d):
        calls.append(d)
        (d / "out.txt").write_text("hello")

    first = cache.run("stage", {"x": 1}, [], build)
    second = cache.run("stage", {"x": 1}, [], build)
    assert (first.cached, second.cached) == (False, True)
    assert len(calls) == 1 and (second.path / "out.txt").read_text() == "hello"
    assert cache.run("stage", {"x": 2}, [], build).cached is False


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    cache = StageCache(tmp_path)

    def broken(d):
        (d / "half.txt").write_text("partial")
        raise KeyboardInterrupt  # a killed run

    with pytest.raises(KeyboardInterrupt):
        cache.run("stage", {"x": 1}, [], broken)
    assert list((tmp_path / "stage").iterdir()) == []
    rebuilt = cache.run("stage", {"x": 1}, [], lambda d: (d / "ok.txt").write_text("ok"))
    assert rebuilt.cached is False and (rebuilt.path / "ok.txt").exists()


_CONCURRENT = """
import sys, time
from pathlib import Path
from east.cache import StageCache

root, log = Path(sys.argv[1]), Path(sys.argv[2])
while time.time() < float(sys.argv[3]):  # both processes start the stage at the same instant
    time.sleep(0.001)

def build(d):
    with log.open("a") as f:
        f.write("built\\n")
    time.sleep(1.0)
    (d / "out.txt").write_text("artifact")

r = StageCache(root).run("sample", {"n": 8}, [], build)
print(r.cached, (r.path / "out.txt").read_text())
"""


def test_concurrent_cells_build_a_stage_once(tmp_path):
    """Two processes on one cache asking for the same key: one builds, the other waits for
    it and reads its artifact (a SLURM array's cells sharing paths.cache_dir)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "cell.py"
    script.write_text(_CONCURRENT)
    log = tmp_path / "builds.log"
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(log), start],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text() == "built\n"  # built once
    assert outs == ["False artifact", "True artifact"]  # the other read it as cached

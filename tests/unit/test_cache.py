"""The stage cache: content keys, skip-if-present, and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

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
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "cache"), str(log), start],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text() == "built\n"  # built once
    assert outs == ["False artifact", "True artifact"]  # the other read it as cached


def _jsonl_build(d):
    (d / "rows.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(200)))
    (d / "model").mkdir()
    (d / "model" / "weights.bin").write_bytes(bytes(range(256)) * 64)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _edit(p):
    data = bytearray(p.read_bytes())
    data[10] ^= 1  # same size, one bit changed
    p.write_bytes(bytes(data))


ARTIFACT_FAULTS = {
    "truncated rows": ("rows.jsonl", _truncate, "rows.jsonl has"),
    "emptied rows": ("rows.jsonl", lambda p: p.write_text(""), "rows.jsonl has 0 bytes"),
    "deleted rows": ("rows.jsonl", lambda p: p.unlink(), "rows.jsonl is missing"),
    "edited rows": ("rows.jsonl", _edit, "checksum"),
    "truncated checkpoint": ("model/weights.bin", _truncate, "weights.bin has"),
    "deleted manifest": ("manifest.json", lambda p: p.unlink(), "no manifest.json"),
    "garbled manifest": ("manifest.json", lambda p: p.write_text("{"), "unreadable"),
}


@pytest.mark.parametrize("fault", sorted(ARTIFACT_FAULTS))
def test_an_artifact_that_no_longer_matches_its_manifest_is_rebuilt(tmp_path, caplog, fault):
    from east.cache import verify_artifact

    name, damage, message = ARTIFACT_FAULTS[fault]
    cache = StageCache(tmp_path)
    first = cache.run("sample", {"x": 1}, [], _jsonl_build)
    assert verify_artifact(first.path) is None
    rows = json.loads((first.path / "manifest.json").read_text())["files"]["rows.jsonl"]["rows"]
    assert rows == 200
    damage(first.path / name)
    assert message in verify_artifact(first.path)
    again = cache.run("sample", {"x": 1}, [], _jsonl_build)
    assert again.cached is False and verify_artifact(again.path) is None  # rebuilt
    assert f"stage sample (key {first.key})" in caplog.text and message in caplog.text
    assert (again.path / "rows.jsonl").read_text().count("\n") == 200


def _value_build(value):
    def build(d):
        (d / "value.json").write_text(json.dumps(value))

    return build


def _symlink_to_other_key(cache, final, other):
    import shutil

    shutil.rmtree(final)
    final.symlink_to(other)


def _renamed_other_key(cache, final, other):
    import shutil

    shutil.rmtree(final)
    shutil.copytree(other, final)  # its own manifest is intact: only stage.json tells


def _plain_file(cache, final, other):
    import shutil

    shutil.rmtree(final)
    final.write_text("not a folder")


def _dangling_symlink(cache, final, other):
    import shutil

    shutil.rmtree(final)
    final.symlink_to(final.parent / "gone")


#: What can stand at a stage's key path instead of its artifact (issue 21): each is set aside
#: and the stage rebuilt, never read.
KEY_PATH_FAULTS = {
    "a symlink to another key's folder": (_symlink_to_other_key, "symbolic link"),
    "another key's folder copied under this key": (_renamed_other_key, "stage.json is that of another key"),
    "a plain file": (_plain_file, "plain file"),
    "a dangling symlink": (_dangling_symlink, "symbolic link"),
}


@pytest.mark.parametrize("fault", sorted(KEY_PATH_FAULTS))
def test_what_stands_at_a_key_path_must_prove_its_key(tmp_path, caplog, fault):
    damage, message = KEY_PATH_FAULTS[fault]
    cache = StageCache(tmp_path)
    mine = cache.run("train", {"lr": 0.2}, [], _value_build(0.2))
    other = cache.run("train", {"lr": 0.275}, [], _value_build(0.275))
    damage(cache, mine.path, other.path)
    again = cache.run("train", {"lr": 0.2}, [], _value_build(0.2))
    assert again.cached is False and again.path == mine.path
    assert not again.path.is_symlink() and json.loads((again.path / "value.json").read_text()) == 0.2
    assert message in caplog.text and "set aside and rebuilt" in caplog.text
    assert json.loads((other.path / "value.json").read_text()) == 0.275  # the other key untouched
    assert cache.run("train", {"lr": 0.2}, [], _value_build(0.2)).cached


def test_a_lock_held_by_a_stopped_process_names_it_and_times_out(tmp_path, caplog):
    """A builder that stops (SIGSTOP) holds its key's lock forever: a waiter names its pid
    and state, and with paths.lock_timeout_s gives up with a clear error."""
    import logging
    import signal
    import subprocess
    import sys
    import time

    from east.locks import LockTimeout

    caplog.set_level(logging.INFO)
    cache = StageCache(tmp_path, lock_timeout_s=1.5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from east.cache import StageCache; "
            f"StageCache({str(tmp_path)!r}).run('sample', {{'x': 1}}, [], lambda d: time.sleep(60))",
        ]
    )
    try:
        lock = cache._lock_path("sample", stage_key("sample", {"x": 1}, []))
        deadline = time.time() + 30
        while time.time() < deadline and str(holder.pid) not in (lock.read_text() if lock.exists() else ""):
            time.sleep(0.05)
        holder.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(LockTimeout, match=rf"waited \d+s for pid {holder.pid} on .*, stopped"):
            cache.run("sample", {"x": 1}, [], lambda d: None)
        assert 1.5 <= time.monotonic() - start < 10
        assert f"pid {holder.pid}" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_stale_temporary_folders_are_removed_but_never_under_a_live_writer(tmp_path):
    import fcntl
    import threading

    cache = StageCache(tmp_path)
    stale = tmp_path / "train" / ".tmp-aaaa-1234"
    live = tmp_path / "train" / ".tmp-bbbb-5678"
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "half.safetensors").write_bytes(b"x" * 10)
    held = threading.Event()
    release = threading.Event()

    def writer():  # another process building key bbbb holds its lock
        with cache._lock_path("train", "bbbb").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            held.set()
            release.wait(10)
            fcntl.flock(f, fcntl.LOCK_UN)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(10)
    try:
        # flock is per open file: a second open in this process contends like another process.
        assert cache.clean_stale() == 1
        assert not stale.exists() and live.exists()
    finally:
        release.set()
        t.join()
    assert cache.clean_stale() == 1 and not live.exists()


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,vers=4.2 0 0
10.0.0.1@tcp:/scratch /scratch lustre rw,flock 0 0
/dev/sdb1 /scratch/local\\040disk xfs rw 0 0
"""


def test_the_filesystem_of_a_path_is_its_longest_mount_point():
    from east.locks import filesystem_type

    assert filesystem_type("/home/me/.cache/east", MOUNTS) == "nfs4"
    assert filesystem_type("/scratch/run", MOUNTS) == "lustre"
    assert filesystem_type("/scratch/local disk/x", MOUNTS) == "xfs"
    assert filesystem_type("/tmp/x", MOUNTS) == "ext4"
    assert filesystem_type("/homeless", MOUNTS) == "ext4"  # not under /home


def test_the_parse_store_leaves_network_filesystems(monkeypatch, tmp_path):
    """SQLite's locking is not to be trusted over NFS or Lustre: the store goes node-local."""
    from east.cache import parse_store_dir

    monkeypatch.setenv("EAST_LOCAL_DIR", str(tmp_path))
    local = parse_store_dir("/home/me/.cache/east", MOUNTS)
    assert local.parent == tmp_path and local.name.startswith("east-parse-store-")
    assert parse_store_dir("/scratch/run", MOUNTS).parent == tmp_path
    assert parse_store_dir("/tmp/cache", MOUNTS) == Path("/tmp/cache")


def test_a_cache_without_flock_fails_with_what_to_do(monkeypatch, tmp_path):
    import errno
    import fcntl

    from east.cache import StageCache
    from east.locks import LockUnsupported

    def no_locks(f, flags):
        if flags != fcntl.LOCK_UN:
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(LockUnsupported, match="-o flock"):
        StageCache(tmp_path).run("s", {}, [], lambda d: None)

"""The stage cache's locks: one ``flock`` per stage key, a clear error where the filesystem
has none, the pid of whoever holds a lock, and which filesystem a path is on (part of the
stage cache, east.cache)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from east.errors import UserError

__all__ = ["NETWORK_FILESYSTEMS", "LockTimeout", "LockUnsupported", "filesystem_type", "key_lock"]

#: The stage cache's logger: its waits are the cache's.
log = logging.getLogger("east.cache")


class LockUnsupported(UserError):
    """The filesystem of the cache does not support ``flock``."""


def _flock(f: Any, flags: int, path: Path) -> None:
    """``fcntl.flock``, or a clear error where the filesystem has no locking (Lustre mounted
    without ``-o flock``, NFS without a lock manager): cells could then build one stage twice."""
    import errno
    import fcntl

    try:
        fcntl.flock(f, flags)
    except BlockingIOError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EIO):
            raise LockUnsupported(
                f"cannot lock {path} ({e.strerror}): the filesystem of paths.cache_dir does not support "
                "flock, which keeps concurrent cells from building one stage twice. Lustre needs the "
                "-o flock mount option and NFS a lock manager (NFSv4, or v3 with lockd); else put "
                "paths.cache_dir on a filesystem that locks, or on a local disk for single-node runs"
            ) from e
        raise


class LockTimeout(UserError):
    """Waited longer than ``paths.lock_timeout_s`` for another process's build: a situation
    of the user's (another run holds the stage), reported in one line."""


def _holder(path: Path) -> str:
    """Who holds a key's lock, from what it wrote there: pid, host and, on this host, its
    state (a stopped process holds its lock until it is continued or killed)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    pid, host = info.get("pid"), info.get("host")
    if pid is None:
        return "another process"
    import socket

    state = ""
    if host == socket.gethostname():
        try:
            code = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            state = {"T": ", stopped", "t": ", stopped (traced)", "Z": ", a zombie", "D": ", in I/O"}.get(
                code, ""
            )
        except (OSError, IndexError):
            state = ", no longer running"
    return f"pid {pid} on {host}{state}"


@contextlib.contextmanager
def key_lock(path: Path, stage: str, key: str, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (local filesystems, NFSv4, Lustre with ``-o flock``):
    held by the process building the artifact, released when it finishes or dies. The holder
    writes its pid and host into the file; a waiter names it in the log every minute, and
    gives up after ``timeout_s`` (None: never)."""
    import fcntl
    import socket

    with path.open("a+") as f:
        try:
            _flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
        except BlockingIOError:
            start = last = time.monotonic()
            log.info("stage %s: %s is building %s; waiting for it", stage, _holder(path), key)
            while True:
                time.sleep(0.2)
                try:
                    _flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
                    break
                except BlockingIOError:
                    pass
                now = time.monotonic()
                if timeout_s is not None and now - start > timeout_s:
                    raise LockTimeout(
                        f"stage {stage} ({key}): waited {now - start:.0f}s for {_holder(path)} building it "
                        f"(paths.lock_timeout_s={timeout_s:g}); if that process is stopped or hung, end "
                        "it and rerun the same command"
                    ) from None
                if now - last >= 60:
                    last = now
                    log.warning(
                        "stage %s: still waiting (%.0fs) for %s building %s",
                        stage,
                        now - start,
                        _holder(path),
                        key,
                    )
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


#: Filesystem types (/proc/self/mounts) on which SQLite's locking cannot be trusted
#: (sqlite.org/wal.html: WAL "does not work over a network filesystem"; sqlite.org/lockingv3.html).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "panfs",
        "wekafs",
        "9p",
        "afs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.ceph-fuse",
        "fuse.juicefs",
        "fuse.gcsfuse",
        "fuse.s3fs",
    }
)


def filesystem_type(path: str | os.PathLike, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path``: the longest mount point above it in
    ``/proc/self/mounts`` (or ``mounts``, that file's text); None where unknown."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind

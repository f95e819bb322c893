"""Content-addressed, atomically written stage artifacts: sweep reuse and resume in one.

A stage's key hashes exactly the config slice it depends on, the keys of its inputs and a
code version. Its artifact is a folder ``<root>/<stage>/<key>/`` written under a temporary
name and renamed into place when complete, so a killed run never leaves a half-written
artifact that a later run would read; rerunning the same command skips every finished stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Bump when a stage's output format or semantics change, to invalidate old artifacts.
CACHE_VERSION = 1


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    path: Path
    cached: bool
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"cached": self.cached, "seconds": round(self.seconds, 3), "key": self.key}


def stage_key(stage: str, config: Any, inputs: list[str]) -> str:
    payload = json.dumps(
        {"stage": stage, "config": config, "inputs": inputs, "version": CACHE_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class StageCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def run(self, stage: str, config: Any, inputs: list[str], build: Callable[[Path], None]) -> StageResult:
        """Return the artifact of ``stage`` for this config and inputs, building it if absent.

        ``build(tmp_dir)`` writes the artifact's files into ``tmp_dir``.
        """
        key = stage_key(stage, config, inputs)
        final = self.path(stage, key)
        start = time.perf_counter()
        if final.is_dir():
            log.info("stage %s: cached (%s)", stage, key)
            return StageResult(stage, key, final, True, time.perf_counter() - start)
        final.parent.mkdir(parents=True, exist_ok=True)
        # One builder per key: cells of a sweep (a SLURM array on a shared cache) that need
        # the same artifact wait for whichever started first, then read what it wrote.
        locks = self.root / ".locks"  # kept: unlinking a lock file others may hold races
        locks.mkdir(exist_ok=True)
        with _key_lock(locks / f"{stage}-{key}.lock", stage, key):
            if final.is_dir():
                log.info("stage %s: built by another process meanwhile (%s)", stage, key)
                return StageResult(stage, key, final, True, time.perf_counter() - start)
            return self._build(stage, config, inputs, key, final, build, start)

    def _build(
        self, stage: str, config: Any, inputs: list[str], key: str, final: Path, build: Callable[[Path], None],
        start: float,
    ) -> StageResult:  # fmt: skip
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            (tmp / "stage.json").write_text(json.dumps({"stage": stage, "config": config, "inputs": inputs},
                                                        indent=1, sort_keys=True, default=str))  # fmt: skip
            build(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # a concurrent run finished the same stage first: keep theirs
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - start
        log.info("stage %s: built in %.1fs (%s)", stage, seconds, key)
        return StageResult(stage, key, final, False, seconds)


@contextlib.contextmanager
def _key_lock(path: Path, stage: str, key: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (local filesystems and NFSv4 / Lustre with locking):
    held by the process building the artifact, released when it finishes or dies."""
    import fcntl

    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("stage %s: another process is building %s; waiting for it", stage, key)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

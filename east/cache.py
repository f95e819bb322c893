"""Content-addressed, atomically written stage artifacts: sweep reuse and resume in one.

A stage's key hashes exactly the config slice it depends on, the keys of its inputs and a
code version. Its artifact is a folder ``<root>/<stage>/<key>/`` written under a temporary
name and renamed into place when complete, so a killed run never leaves a half-written
artifact that a later run would read; rerunning the same command skips every finished stage.

Artifacts are verified, not trusted: the last file written is ``manifest.json`` (every
file's size and SHA-256, and each JSON Lines file's row count). Reading a cached stage
checks it; an artifact that no longer matches (truncated, emptied, a file deleted or
edited by hand, a checkpoint cut short by a full disk) is reported with its stage, key and
folder, set aside and rebuilt. Temporary folders of killed runs are removed once no live
writer holds their key's lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from east.locks import NETWORK_FILESYSTEMS, filesystem_type, key_lock

log = logging.getLogger(__name__)

#: Bump when a stage's output format or semantics change, to invalidate old artifacts.
#: 2: manifests; grading under a hard time bound with counted timeouts.
CACHE_VERSION = 2
MANIFEST = "manifest.json"
#: Files up to this size are checksummed on every read; larger ones (checkpoints) are
#: checked by size, and by checksum with EAST_VERIFY=full.
CHECKSUM_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    path: Path
    cached: bool
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"cached": self.cached, "seconds": round(self.seconds, 3), "key": self.key}


def key_payload(stage: str, config: Any, inputs: list[str]) -> dict[str, Any]:
    """What a stage's key hashes; its artifact's ``stage.json`` holds it, so that a folder can
    prove it stands for its key."""
    return json.loads(
        json.dumps(
            {"stage": stage, "config": config, "inputs": inputs, "version": CACHE_VERSION}, default=str
        )
    )


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def stage_key(stage: str, config: Any, inputs: list[str]) -> str:
    return _digest(key_payload(stage, config, inputs))


class StageCache:
    def __init__(self, root: str | os.PathLike, lock_timeout_s: float | None = None):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock_timeout_s = lock_timeout_s

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def work_dir(self, stage: str, key: str) -> Path:
        """A folder of this key that survives a killed build (a train stage's checkpoints):
        only the builder holding the key's lock writes it; it is removed once the artifact is
        in place."""
        return self.root / stage / f".work-{key}"

    def run(
        self,
        stage: str,
        config: Any,
        inputs: list[str],
        build: Callable[[Path], None],
        label: str | None = None,
    ) -> StageResult:
        """Return the artifact of ``stage`` for this config and inputs, building it if absent
        (or if what stands at its path is not a verified artifact of this key).

        ``build(tmp_dir)`` writes the artifact's files into ``tmp_dir``. ``label``: the name
        the logs give this use of the stage (``evaluate_base_gsm8k``), by default ``stage``.
        """
        key = stage_key(stage, config, inputs)
        shown = label or stage
        final = self.path(stage, key)
        start = time.perf_counter()
        if usable(final, stage, key) is None:
            log.info("stage %s: cached (%s)", shown, key)
            return StageResult(stage, key, final, True, time.perf_counter() - start)
        final.parent.mkdir(parents=True, exist_ok=True)
        # One builder per key: cells of a sweep (a SLURM array on a shared cache) that need
        # the same artifact wait for whichever started first, then read what it wrote.
        with key_lock(self._lock_path(stage, key), shown, key, self.lock_timeout_s):
            self._remove_stale_tmp(final.parent, key)
            problem = usable(final, stage, key)
            if problem is None:
                log.info("stage %s: built by another process meanwhile (%s)", shown, key)
                return StageResult(stage, key, final, True, time.perf_counter() - start)
            if problem != ABSENT:
                log.warning("stage %s (key %s) at %s: %s; set aside and rebuilt", shown, key, final, problem)
                self._discard(final)
            log.info("stage %s: building (%s)", shown, key)
            return self._build(stage, config, inputs, key, final, build, start, shown)

    def _lock_path(self, stage: str, key: str) -> Path:
        locks = self.root / ".locks"  # kept: unlinking a lock file others may hold races
        locks.mkdir(exist_ok=True)
        return locks / f"{stage}-{key}.lock"

    @staticmethod
    def _discard(folder: Path) -> None:
        """Move what stands at an artifact's path out of every reader's way at once, then
        delete it (a folder, a plain file, or a symbolic link, itself and not its target)."""
        aside = folder.parent / f".bad-{folder.name}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, aside)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)

    @staticmethod
    def _remove_stale_tmp(parent: Path, key: str) -> None:
        """Temporary folders of this key: stale, since their writer no longer holds the lock."""
        for tmp in parent.glob(f".tmp-{key}-*"):
            log.info("removing %s, left by a killed run", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    def clean_stale(self) -> int:
        """Remove the temporary folders of killed runs in the whole cache, leaving any whose
        key a live writer holds. Returns how many were removed."""
        import fcntl

        removed = 0
        for tmp in self.root.glob("*/.tmp-*"):
            stage, key = tmp.parent.name, tmp.name.split("-")[1]
            with self._lock_path(stage, key).open("a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer: its folder is not stale
                try:
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
                        removed += 1
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        for bad in self.root.glob("*/.bad-*"):  # set aside by a reader that died deleting it
            if bad.is_dir() and not bad.is_symlink():
                shutil.rmtree(bad, ignore_errors=True)
            else:
                bad.unlink(missing_ok=True)
        if removed:
            log.info("removed %d temporary folder(s) left by killed runs", removed)
        return removed

    def _build(
        self,
        stage: str,
        config: Any,
        inputs: list[str],
        key: str,
        final: Path,
        build: Callable[[Path], None],
        start: float,
        label: str,
    ) -> StageResult:
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            (tmp / "stage.json").write_text(
                json.dumps(key_payload(stage, config, inputs), indent=1, sort_keys=True, default=str)
            )
            build(tmp)
            write_manifest(tmp)  # last: an artifact without one was never finished
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
        log.info("stage %s: built in %.1fs (%s)", label, seconds, key)
        return StageResult(stage, key, final, False, seconds)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _rows(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def write_manifest(folder: Path, hash_large: bool = True) -> None:
    """Record every file of an artifact: size, SHA-256 and (JSON Lines) row count.
    ``hash_large=False`` (a training checkpoint, rewritten every few hundred steps): files over
    CHECKSUM_MAX_BYTES, which verification checks by size unless EAST_VERIFY=full, get no
    checksum, unless EAST_VERIFY=full."""
    hash_large = hash_large or os.environ.get("EAST_VERIFY") == "full"
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        size = path.stat().st_size
        entry: dict[str, Any] = {"bytes": size}
        if hash_large or size <= CHECKSUM_MAX_BYTES:
            entry["sha256"] = _sha256(path)
        if path.suffix == ".jsonl":
            entry["rows"] = _rows(path)
        files[path.relative_to(folder).as_posix()] = entry
    (folder / MANIFEST).write_text(json.dumps({"version": CACHE_VERSION, "files": files}, indent=1))


#: ``usable``'s word for a path where nothing stands.
ABSENT = "absent"


def usable(final: Path, stage: str, key: str) -> str | None:
    """None when ``final`` is a verified artifact of ``stage`` and ``key``; else what is
    wrong (``ABSENT`` when nothing is there). A symbolic link, a plain file, a folder whose
    ``stage.json`` stands for another key, or one that no longer matches its manifest is
    not used."""
    if not os.path.lexists(final):
        return ABSENT
    if final.is_symlink():
        return f"it is a symbolic link (to {os.readlink(final)}), not an artifact folder of its own"
    if not final.is_dir():
        return "it is a plain file, not an artifact folder"
    problem = verify_artifact(final)
    if problem is not None:
        return f"it does not match its manifest: {problem}"
    try:
        payload = json.loads((final / "stage.json").read_text())
    except (OSError, ValueError) as e:
        return f"its stage.json is unreadable ({e})"
    if payload.get("stage") != stage or _digest(payload) != key:
        return f"its stage.json is that of another key ({payload.get('stage')} {_digest(payload)})"
    return None


def verify_artifact(folder: Path) -> str | None:
    """What is wrong with an artifact, or None when it matches its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "it has no manifest.json (written last: the artifact was never finished)"
    except (ValueError, KeyError, TypeError) as e:
        return f"its manifest.json is unreadable ({e})"
    full = os.environ.get("EAST_VERIFY") == "full"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{name} has {size} bytes, the manifest says {entry['bytes']}"
        if "sha256" in entry and (full or size <= CHECKSUM_MAX_BYTES) and _sha256(path) != entry["sha256"]:
            return f"{name} has changed since it was written (checksum)"
    return None


def parse_store_dir(cache_root: str | os.PathLike, mounts: str | None = None) -> Path:
    """Where grading keeps its SQLite parse store: in the cache, or on a node-local disk
    (``EAST_LOCAL_DIR``, else the temporary folder) when the cache is on a network filesystem,
    where SQLite's locking is not to be trusted. Parses are a cache: a store per node only
    costs each node its own parsing."""
    kind = filesystem_type(cache_root, mounts)
    if kind not in NETWORK_FILESYSTEMS:
        return Path(cache_root)
    import tempfile

    local = (
        Path(os.environ.get("EAST_LOCAL_DIR") or tempfile.gettempdir()) / f"east-parse-store-{os.getuid()}"
    )
    log.info("paths.cache_dir is on %s: the grading parse store goes to node-local %s", kind, local)
    return local


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


def join_by_id(
    rows: list[dict[str, Any]], other: list[dict[str, Any]], left: StageResult, right: StageResult
) -> list[dict[str, Any]]:
    """``other``'s rows in the order of ``rows``, matched by question id. A missing, extra or
    repeated id is an error naming both artifacts: rows are never paired by position."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in other:
        if r["id"] in by_id:
            raise RuntimeError(f"{right.name} artifact {right.path} repeats question id {r['id']!r}")
        by_id[r["id"]] = r
    ids = [r["id"] for r in rows]
    missing = [i for i in ids if i not in by_id]
    extra = sorted(set(by_id) - set(ids))
    if missing or extra or len(set(ids)) != len(ids):
        raise RuntimeError(
            f"{left.name} ({left.path}) and {right.name} ({right.path}) disagree on question ids: "
            f"{len(missing)} missing from {right.name} (e.g. {missing[:3]}), {len(extra)} extra "
            f"(e.g. {extra[:3]}); delete both folders to rebuild them"
        )
    return [by_id[i] for i in ids]

"""The on-disk store of parsed answers that every grading call naming the same file shares
(part of east.grading.equivalence, which fills and reads it)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

__all__ = ["ParseStore"]


class ParseStore:
    """Parsed answers on disk, shared by every grading call that names the same file.

    A sweep grades the same gold answers, and largely the same model answers, in every
    cell's evaluation and in every round; parsing (math-verify's antlr LaTeX front end) is
    the cost. The store keeps each normalised string's parse and probe facts in SQLite
    (concurrent readers and writers from several processes are safe). The file name carries
    the versions of this module's parser setup and of math-verify, so a change in either
    starts a new file. Timed-out parses are never stored. Entries are pickled sympy
    objects: keep the file where you keep your checkpoints.
    """

    VERSION = 2
    _FIELDS = ("expr", "value", "constant", "scalar", "items", "interval")

    def __init__(self, path: str | Path):
        import sqlite3

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, bytes] = {}
        self._known: set[str] = set()  # read from or written to this file by this process
        self.hits = 0
        try:
            self._db: Any = self._open()
        except sqlite3.DatabaseError as e:
            # A damaged file ("file is not a database"): set aside like a failed artifact and
            # started anew. Parses are a cache: nothing is lost but time.
            self._set_aside(e)
            self._db = self._open()

    def _open(self) -> Any:
        import sqlite3

        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS parses (norm TEXT PRIMARY KEY, facts BLOB)")
            db.execute("SELECT norm FROM parses LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _set_aside(self, error: Exception) -> None:
        import os
        import uuid

        aside = self.path.with_name(f"{self.path.name}.bad-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        logging.getLogger("east.grading.equivalence").warning(
            "grading parse store %s is damaged (%s): set aside as %s, parsing anew",
            self.path,
            error,
            aside.name,
        )

    def _failed(self, error: Exception) -> None:
        """A read or write failed on a file damaged after it opened: set it aside and go on
        without a store in this process (the next one starts a new file)."""
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None
            self._set_aside(error)

    @classmethod
    def in_dir(cls, directory: str | Path) -> ParseStore:
        from importlib.metadata import version as installed

        version = installed("math-verify")
        return cls(Path(directory) / f"parses-v{cls.VERSION}-math-verify-{version}.sqlite")

    def restore(self, parsed: Any) -> bool:
        import pickle
        import sqlite3

        if self._db is None:
            return False
        try:
            row = self._db.execute("SELECT facts FROM parses WHERE norm = ?", (parsed.norm,)).fetchone()
        except sqlite3.DatabaseError as e:
            self._failed(e)
            return False
        if row is None:
            return False
        try:
            facts = pickle.loads(row[0])
        except Exception:  # an entry written by another sympy version: parse again
            return False
        for name, value in zip(self._FIELDS, facts, strict=True):
            setattr(parsed, name, value)
        self._known.add(parsed.norm)
        self.hits += 1
        return True

    def add(self, parsed: Any) -> None:
        import pickle

        if parsed.norm in self._known:
            return  # each parse is pickled once per store and process
        self._known.add(parsed.norm)
        # An object sympy cannot pickle is simply parsed again next time.
        with contextlib.suppress(Exception):
            self._pending[parsed.norm] = pickle.dumps(tuple(getattr(parsed, f) for f in self._FIELDS))

    def flush(self) -> None:
        import sqlite3

        if self._pending and self._db is not None:
            try:
                with self._db:
                    self._db.executemany(
                        "INSERT OR IGNORE INTO parses (norm, facts) VALUES (?, ?)",
                        list(self._pending.items()),
                    )
            except sqlite3.DatabaseError as e:
                self._failed(e)
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()

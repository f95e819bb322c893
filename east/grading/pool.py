"""Grading in supervised worker processes: a wall-clock bound that holds whatever sympy does.

Inside a worker every parse and comparison is bounded by ``SIGALRM`` (east.grading.equivalence), which
stops Python code. Big-integer arithmetic runs in C, where no signal lands: parsing
``\\binom{10^{9}}{5 \\cdot 10^{8}}`` evaluates the binomial before any guard can look at it.
So each worker announces the operation it starts (in shared memory, see
``east.grading.equivalence._Watch``), and the supervisor kills a worker whose operation has run
``timeout_s + grace`` seconds. It records that operation as timed out, starts a fresh
worker that knows it, and sends it the unfinished questions again. The killed answer is
compared by string only and counted in its question's ``timeouts``: never dropped, never
silently graded wrong.

Workers live for the whole process (their parse caches with them) and are reused by every
grading call; the settings travel with each batch of questions.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from east.grading import equivalence as E
from east.grading import grade as G

log = logging.getLogger(__name__)

#: Bytes of shared memory describing a worker's current operation (two normalised answers
#: of at most MAX_PARSE_CHARS characters each, JSON-escaped).
_OP_BYTES = 16 * E.MAX_PARSE_CHARS + 64
#: How often the supervisor looks at its workers, seconds.
_POLL_S = 0.05


@dataclass(frozen=True)
class Settings:
    mode: str
    timeout_s: float
    fallback: str
    store: str | None


@dataclass
class Stats:
    """What the supervisor did, over the life of a pool."""

    killed: int = 0  # workers killed at the hard deadline
    crashed: int = 0  # workers that died on their own (memory, a signal) inside an operation
    ops: list[tuple[str, ...]] = field(default_factory=list)  # the operations cut by a kill


def hard_deadline(timeout_s: float) -> float:
    """Seconds an operation may run before its worker is killed: the soft bound plus a grace
    for the signal to land and the worker to clean up."""
    return timeout_s + max(1.0, timeout_s)


def _serve(
    conn: Any, since: Any, op: Any, limit: Any, cut_parses: list[str], cut_pairs: list, slow: list
) -> None:
    """A worker: grade the questions it is sent, one reply per question, until told to stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to report; it stops us
    E._WATCH = E._Watch(since, op, limit)
    E.mark_timed_out(cut_parses, cut_pairs, slow)
    store: E.ParseStore | None = None
    store_dir: str | None = None  # the folder `store` was opened in
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            kind, settings, payload = msg
            if kind == "clear":
                E._parsed.cache_clear()
                E.forget_timeouts()
                conn.send(("cleared", None))
                continue
            if settings.store != store_dir:
                if store is not None:
                    store.close()
                store_dir = settings.store
                store = E.ParseStore.in_dir(store_dir) if store_dir else None
                E._STORE = store
            for i, (idx, responses, gold) in enumerate(payload, 1):
                try:
                    grade = G.grade_question(
                        responses,
                        gold,
                        mode=settings.mode,
                        timeout_s=settings.timeout_s,
                        fallback=settings.fallback,
                    )
                    reply: tuple = ("done", (idx, grade))
                except Exception as e:  # bad input (an empty gold): the caller raises it
                    reply = ("error", (idx, f"{type(e).__name__}: {e}"))
                if i == len(payload) and store is not None:
                    store.flush()  # on disk before the caller hears the chunk is graded
                conn.send(reply)
    finally:
        if store is not None:
            store.close()


class _Worker:
    def __init__(
        self,
        ctx: Any,
        cut_parses: set[str],
        cut_pairs: set[frozenset[str]],
        slow: set[tuple[str, ...]],
        serve: Any,
    ):
        self.since = ctx.Value("d", 0.0, lock=False)
        self.limit = ctx.Value("d", 0.0, lock=False)  # the bound of the operation in progress
        self.op = ctx.Array("c", _OP_BYTES, lock=False)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=serve,
            args=(
                child,
                self.since,
                self.op,
                self.limit,
                sorted(cut_parses),
                [sorted(p) for p in cut_pairs],
                sorted(slow),
            ),
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.pending: list[int] = []  # questions sent and not answered yet, in order

    def current_op(self) -> tuple[str, ...] | None:
        if not self.since.value:
            return None
        try:
            return tuple(json.loads(self.op.value.decode()))
        except ValueError:
            return None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class Pool:
    """``processes`` supervised grading workers."""

    def __init__(self, processes: int, serve: Any = _serve):
        """``serve``: the worker's main function (tests substitute one that hangs in C)."""
        import multiprocessing as mp

        # forkserver: safe when the parent holds threads (torch, tokenizers); the server
        # imports the grading modules once, so a replacement worker starts in milliseconds.
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["east.grading.grade", "math_verify", "sympy"])
        self.processes, self.serve = processes, serve
        self.cut_parses: set[str] = set()
        self.cut_pairs: set[frozenset[str]] = set()
        self.slow: set[tuple[str, ...]] = set()  # killed once: retried at the larger bound
        self.stats = Stats()
        self.workers = [self._spawn() for _ in range(processes)]

    def _spawn(self) -> _Worker:
        return _Worker(self.ctx, self.cut_parses, self.cut_pairs, self.slow, self.serve)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def clear_caches(self) -> None:
        """Empty every worker's in-memory parse cache and forget the timeouts (benchmarks
        measure cold parsing)."""
        self.cut_parses.clear()
        self.cut_pairs.clear()
        self.slow.clear()
        for w in self.workers:
            w.conn.send(("clear", None, None))
        for w in self.workers:
            w.conn.recv()

    def grade(
        self, items: Sequence[tuple[Sequence[str], str]], settings: Settings, chunk_size: int = 16
    ) -> list[G.QuestionGrade]:
        """Grade ``(responses, gold)`` pairs, in order, with ``settings``."""
        from multiprocessing.connection import wait

        self.timeout_s = settings.timeout_s
        results: list[G.QuestionGrade | None] = [None] * len(items)
        queue: deque[int] = deque(range(len(items)))
        deaths: dict[int, int] = {}  # question -> worker deaths outside any operation
        left = len(items)
        while left:
            for w in list(self.workers):
                if not w.pending and queue:
                    if not w.proc.is_alive():  # died while idle
                        self._replace(w, queue, deaths, killed=False)
                        continue
                    chunk = [queue.popleft() for _ in range(min(chunk_size, len(queue)))]
                    w.pending = chunk
                    w.conn.send(("grade", settings, [(i, list(items[i][0]), items[i][1]) for i in chunk]))
            busy = {w.conn: w for w in self.workers if w.pending}
            for conn in wait(list(busy), timeout=_POLL_S):
                w = busy[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    self._replace(w, queue, deaths, killed=False)
                    continue
                if kind == "error":
                    idx, message = payload
                    raise ValueError(f"cannot grade question {idx}: {message}")
                idx, grade = payload
                results[idx] = grade
                w.pending.remove(idx)
                left -= 1
            now = time.monotonic()
            for w in list(self.workers):
                started = w.since.value
                if w.pending and started and now - started > hard_deadline(w.limit.value or self.timeout_s):
                    self._replace(w, queue, deaths, killed=True)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _replace(self, w: _Worker, queue: deque[int], deaths: dict[int, int], *, killed: bool) -> None:
        """Kill (or bury) a worker, record what it was doing, and start another in its place
        that re-grades its unanswered questions first."""
        if killed:
            w.proc.kill()
        w.proc.join()
        code = w.proc.exitcode
        op = w.current_op()  # read once it is dead: it cannot change any more
        bound = w.limit.value or self.timeout_s
        w.conn.close()
        if op is not None and killed and op not in self.slow and bound < self.timeout_s * E.RETRY_FACTOR:
            # Killed at the first bound: the next worker tries it once at the retry bound.
            self.slow.add(op)
            log.info(
                "grading: %s killed after %.1fs; retried with %gs",
                op[0],
                hard_deadline(bound),
                bound * E.RETRY_FACTOR,
            )
        elif op is not None:
            if op[0] == "parse":
                self.cut_parses.add(op[1])
            else:
                self.cut_pairs.add(frozenset(op[1:]))
            self.stats.ops.append(op)
            if killed:
                self.stats.killed += 1
            else:
                self.stats.crashed += 1
            log.warning(
                "grading: %s %s after %.1fs (%s): compared by string only and counted as a timeout",
                op[0],
                " vs ".join(repr(s[:80]) for s in op[1:]),
                hard_deadline(bound),
                "killed at the hard deadline, twice" if killed else f"worker died, exit code {code}",
            )
        elif w.pending:
            first = w.pending[0]
            deaths[first] = deaths.get(first, 0) + 1
            if deaths[first] > 1:
                raise RuntimeError(
                    f"a grading worker died twice (exit code {code}) on question {first}, outside any "
                    "bounded operation. Workers start through multiprocessing's forkserver, which "
                    "imports the main script again: a script that grades must guard its entry point "
                    "with `if __name__ == '__main__':`. Otherwise this is a bug in east.grading: "
                    "please report it with the question"
                )
        queue.extendleft(reversed(w.pending))
        self.workers[self.workers.index(w)] = self._spawn()


_POOL: Pool | None = None


def pool(processes: int) -> Pool:
    """The process's grading pool of ``processes`` workers (a new one when that changes)."""
    global _POOL
    if _POOL is not None and _POOL.processes != processes:
        _POOL.close()
        _POOL = None
    if _POOL is None:
        _POOL = Pool(processes)
    return _POOL


def close() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


def clear_caches() -> None:
    """Empty the in-memory parse caches of this process and of its grading workers, and
    forget what timed out in them."""
    E._parsed.cache_clear()
    E.forget_timeouts()
    if _POOL is not None:
        _POOL.clear_caches()


atexit.register(close)


def grade_questions(
    items: Sequence[tuple[Sequence[str], str]],
    *,
    mode: G.GradingMode | str = "equivalence",
    processes: int = 1,
    chunk_size: int = 16,
    timeout_s: float = E.DEFAULT_TIMEOUT_S,
    fallback: G.Fallback | str = "none",
    store: str | Path | None = None,
) -> list[G.QuestionGrade]:
    """Grade many ``(responses, gold)`` pairs, in order, in ``processes`` worker processes.

    The workers are supervised (:mod:`east.grading.pool`): an operation that outlives its
    bound in C code, where ``SIGALRM`` cannot stop it, is killed, and the answers it
    touched are compared by string only and counted in ``QuestionGrade.timeouts``. Each
    worker keeps its own parse cache for the life of the process. ``store``: a folder for
    the on-disk :class:`ParseStore` shared across calls (a sweep's cache dir).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    fallback = G.as_choice(G.Fallback, fallback, "extraction fallback")
    mode = G.as_choice(G.GradingMode, mode, "cluster mode")
    items = list(items)
    if not items:
        return []
    settings = Settings(mode, float(timeout_s), fallback, None if store is None else str(store))
    return pool(processes).grade(items, settings, chunk_size)

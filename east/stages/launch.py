"""Child processes for the stages that load model weights.

A stage worker (``python -m east.stages.<stage> SPEC.json``) owns the devices it is given
(``CUDA_VISIBLE_DEVICES``) and gives them back when it exits: vLLM frees its memory only when
its engine-core process dies, and PyTorch's caching allocator holds a process's memory until
then (vLLM issues #1908, #3281, #6544, #18806; vllm/entrypoints/llm.py has no shutdown).
Data-parallel workers each get a contiguous shard of the prompts and a device group.

Workers read a JSON spec the driver wrote: Hydra stays in the driver.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from east.errors import UserError

log = logging.getLogger(__name__)

GIB = 2**30


class WorkerUserError(UserError):
    """A worker stopped on the user's situation (a config value, a full or read-only disk):
    its one line, reported by the driver."""


class DeviceMemoryError(RuntimeError):
    """Too little device memory is free for a stage to start."""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def visible_devices() -> list[str]:
    """The CUDA devices this process may hand to workers: ``CUDA_VISIBLE_DEVICES``' entries,
    or every device torch sees; none on a CPU machine."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    if not cuda_available():
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_groups(workers: int, per_worker: int) -> list[str | None]:
    """``workers`` disjoint groups of ``per_worker`` devices (a ``CUDA_VISIBLE_DEVICES``
    value each), or None per worker on a CPU machine. Raises when there are too few."""
    devices = visible_devices()
    if not devices:
        return [None] * workers
    need = workers * per_worker
    if need > len(devices):
        raise ValueError(
            f"{workers} data-parallel worker(s) x {per_worker} device(s) each need {need} devices; "
            f"{len(devices)} are visible ({','.join(devices)}): lower sampler.data_parallel_size"
        )
    return [",".join(devices[i * per_worker : (i + 1) * per_worker]) for i in range(workers)]


def shards(n: int, count: int) -> list[range]:
    """``count`` contiguous, near-equal ranges covering 0..n-1 (empty ones left out)."""
    count = max(1, min(count, n))
    base, extra = divmod(n, count)
    out, start = [], 0
    for i in range(count):
        size = base + (i < extra)
        out.append(range(start, start + size))
        start += size
    return [r for r in out if len(r)]


def worker_logging() -> None:
    """A worker's log lines on stderr, in the driver's (Hydra's) format."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from east.tracking import quiet_libraries

    quiet_libraries()


class TreeMemory:
    """The peak device memory held by this process and every process it started, from
    nvidia-smi's per-process table, sampled every ``interval_s`` in a background thread: a
    vLLM engine's memory lives in its engine-core child, which torch's counters in the worker
    never see. Inactive (peak None) where nvidia-smi is missing."""

    def __init__(self, interval_s: float = 1.0):
        import shutil
        import threading

        self.interval_s = interval_s
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = (
            threading.Thread(target=self._loop, daemon=True) if shutil.which("nvidia-smi") else None
        )

    def start(self) -> TreeMemory:
        if self._thread is not None:
            self._thread.start()
        return self

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        return self.peak_mib

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> float | None:
        """Add one reading: the MiB nvidia-smi lists for this process tree's pids."""
        import psutil

        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return self.peak_mib
        me = psutil.Process()
        pids = {me.pid} | {c.pid for c in me.children(recursive=True)}
        used = 0.0
        for line in out.strip().splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids:
                with contextlib.suppress(ValueError):
                    used += float(parts[1])
        self.peak_mib = max(self.peak_mib or 0.0, used)
        return self.peak_mib


def report_device_memory(stage: str, tree: TreeMemory | None = None) -> None:
    """At a worker's end, append its peak device memory to the JSON Lines file named by
    ``EAST_DEVICE_LOG`` (the GPU check reads it): torch's counters for the worker itself and,
    with ``tree``, nvidia-smi's peak for the worker and every process it started (vLLM's
    engine core); nothing when unset or when neither has a reading."""
    path = os.environ.get("EAST_DEVICE_LOG")
    if not path:
        return
    import torch

    entry: dict[str, Any] = {
        "stage": stage,
        "pid": os.getpid(),
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        entry["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        entry["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    peak = tree.stop() if tree is not None else None
    if peak is not None:
        entry["process_tree_peak_used_gib"] = round(peak / 1024, 3)
    if len(entry) == 3:
        return
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def worker_main(stage: str, run: Any) -> None:
    """A stage worker's entry point: ``python -m east.stages.<stage> SPEC.json`` runs
    ``run(spec)`` with the driver's log format, and reports its peak device memory."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m east.stages.{stage} SPEC.json")
    worker_logging()
    tree = TreeMemory().start() if os.environ.get("EAST_DEVICE_LOG") else None
    signal.signal(signal.SIGTERM, _terminated)  # stopped by the driver: a clean exit, no traceback
    spec = Path(sys.argv[1])
    try:
        run(json.loads(spec.read_text()))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the driver reports it
        sys.exit(130)
    except Exception as e:  # the user's situation (a config value, a full disk): one line
        from east.errors import UserError, storage_message

        message = str(e) if isinstance(e, UserError) else storage_message(e)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        with contextlib.suppress(OSError):  # (a full disk may not take even this)
            error_file(spec).write_text(message)
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        report_device_memory(stage, tree)


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def error_file(spec: Path) -> Path:
    """Where a worker leaves the one line of a user's error for the driver to report."""
    return spec.with_name(spec.name + ".error")


def worker_failure(label: str, specs: list[Path], fallback: str) -> Exception:
    """The error a failed worker leaves the driver: its one line (a :class:`WorkerUserError`),
    else a RuntimeError naming the worker (its output is above)."""
    for spec in specs:
        with contextlib.suppress(OSError):
            message = error_file(spec).read_text().strip()
            if message:
                return WorkerUserError(f"{label}: {message}")
    return RuntimeError(fallback)


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1))
    return path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In a child about to exec: SIGTERM when the process that started it dies (Linux's
    ``PR_SET_PDEATHSIG``), so that a driver killed with SIGKILL leaves no worker behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def start_group(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``cmd`` as the leader of its own process group, which everything it starts joins (a
    vLLM engine-core process, accelerate's ranks): :func:`stop_group` then ends all of them,
    where signalling the worker alone would orphan its engine with its device memory. The
    child gets SIGTERM if the driver dies."""
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End ``proc``'s process group: SIGTERM, then SIGKILL to whatever is left after
    ``grace_s`` (or at once when ``proc`` has already exited: what is left is orphaned)."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, sig)


def run_workers(module: str, specs: list[Path], devices: list[str | None], label: str) -> None:
    """``python -m MODULE SPEC`` for each spec, concurrently, the i-th on ``devices[i]``, each
    in its own process group; waits for all, and raises naming the first that failed (the
    others are stopped, each with everything it started: no engine outlives its worker)."""
    procs = []
    for spec in specs:
        error_file(spec).unlink(missing_ok=True)
    for spec, group in zip(specs, devices, strict=True):
        env = dict(os.environ)
        if group is not None:
            env["CUDA_VISIBLE_DEVICES"] = group
        cmd = [sys.executable, "-m", module, str(spec)]
        log.info("%s: worker on %s: %s", label, f"CUDA devices {group}" if group else "CPU", " ".join(cmd))
        procs.append((start_group(cmd, env), group))
    failed = None
    try:
        while any(p.poll() is None for p, _ in procs) and failed is None:
            failed = next(((p, g) for p, g in procs if p.poll() not in (None, 0)), None)
            time.sleep(0.05)
        failed = failed or next(((p, g) for p, g in procs if p.returncode != 0), None)
    finally:
        for p, _ in procs:  # the others on a failure or Ctrl-C; stragglers of finished ones
            stop_group(p)
    if failed is not None:
        p, group = failed
        where = f" on CUDA devices {group}" if group else ""
        raise worker_failure(
            label,
            specs,
            f"{label}: the {module} worker{where} failed (exit {p.returncode}); its output is above",
        )


def check_device_memory(required: int | None, what: str) -> None:
    """Fail in one line, before any weights load, when this process's CUDA device has less
    than ``required`` bytes free (another process holds the rest). No-op on CPU."""
    if not required or not cuda_available():
        return
    import torch

    free, total = torch.cuda.mem_get_info()
    if free < required:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
        raise DeviceMemoryError(
            f"{what} needs {required / GIB:.1f} GiB of free device memory, but CUDA device {devices} "
            f"({torch.cuda.get_device_name()}) has {free / GIB:.1f} of {total / GIB:.1f} GiB free: another "
            "process holds the rest (nvidia-smi shows which). With isolate_stages=false the driver "
            "itself keeps what earlier stages used: use isolate_stages=true"
        )

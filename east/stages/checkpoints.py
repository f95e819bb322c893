"""What a train stage needs around its checkpoints: the disk and device memory they take
(checked before training), the last complete checkpoint to resume from, a manifest on each
one written, and a stop on a non-finite loss (part of the train worker, east.stages.train)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from east.errors import UserError

log = logging.getLogger("east.stages.train")


class DiskSpaceError(RuntimeError):
    """Too little free disk for a train stage's checkpoints and model."""


#: Bytes a checkpoint takes per parameter, at most: fp32 master weights (4) and Adam's two
#: moments (8), written by the HF Trainer or as ZeRO-3 partitions, plus a 16-bit (2) or fp32
#: (4) copy of the weights beside them. 8B: about 128 GB a checkpoint.
CHECKPOINT_BYTES_PER_PARAMETER = 16


def disk_need(base_path: str, settings: dict[str, Any], dtype: str) -> int | None:
    """The most disk a train stage holds at once: two checkpoints while the newest is written
    and the older not yet rotated out (``save_total_limit=1``), when it checkpoints at all,
    plus the trained model in its dtype. None where the weights are not a local folder."""
    params = _parameters(base_path)
    if params is None:
        return None
    saved = 2 if dtype in ("bfloat16", "bf16", "float16", "fp16") else 4
    checkpoints = 2 if settings.get("save_steps") else 0
    return int(params * (checkpoints * CHECKPOINT_BYTES_PER_PARAMETER + saved))


def check_disk(folder: Path, base_path: str, settings: dict[str, Any], dtype: str) -> None:
    """Fail in one line, before any weights load, when ``folder``'s filesystem has less free
    space than :func:`disk_need` (an 8B cell: about 270 GB)."""
    need = disk_need(base_path, settings, dtype)
    if need is None:
        return
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need:
        gb = 1e9
        raise DiskSpaceError(
            f"training needs about {need / gb:.1f} GB of free disk under {existing} (two checkpoints of "
            f"{CHECKPOINT_BYTES_PER_PARAMETER} bytes a parameter while one rotates out, and the model), and "
            f"{free / gb:.1f} GB is free: put paths.cache_dir (EAST_CACHE_DIR) on a larger disk, or write fewer "
            "checkpoints (objective.trainer.save_steps=0: none, and a killed run restarts its training)"
        )


def train_device_bytes(base_path: str, processes: int, sharded: bool) -> int | None:
    """The least device memory one training process needs before it loads anything: the
    policy's fp32 master weights, their gradients and Adam's two moments (16 bytes a
    parameter), that process's share of them when ZeRO-3 / FSDP shard them. Activations and
    the DPO / KTO reference come on top: a floor that fails a GPU another process holds in one
    line, not a prediction. None where the weights are not a local folder (a hub id)."""
    params = _parameters(base_path)
    if params is None:
        return None
    return int(16 * params / (processes if sharded else 1))


def _parameters(base_path: str) -> float | None:
    """The parameter count of a local (or locally cached) checkpoint, from its weight files'
    size; None for a hub id not downloaded."""
    from east.models import checkpoint_bytes

    stored = checkpoint_bytes(base_path)
    return None if stored is None else stored / _bytes_per_parameter(base_path)


def _bytes_per_parameter(base_path: str) -> int:
    """Bytes a stored parameter takes (config.json's dtype; 4 when it does not say)."""
    from east.models import cached_snapshot

    folder = Path(base_path) if Path(base_path).is_dir() else cached_snapshot(base_path)
    try:
        config = json.loads((folder / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        return 4
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return 2 if dtype in ("bfloat16", "float16") else 4


def last_checkpoint(work: Path, tidy: bool = True) -> str | None:
    """The newest verified checkpoint under ``work``, or None. ``tidy`` (one process does it,
    before the others look): a checkpoint a kill cut short (no ``trainer_state.json``, or no
    manifest, both written last) is removed, and one that no longer matches its manifest (a
    damaged file) is set aside as ``<name>.damaged`` with one line each, so that training
    resumes from the newest sound one, never from damaged weights."""
    from east.cache import MANIFEST, verify_artifact

    if not work.is_dir():
        return None
    found = []
    for d in work.glob("checkpoint-*"):
        step = d.name.split("-")[-1]
        if not (d.is_dir() and step.isdigit()):
            continue
        if not tidy:
            if (d / MANIFEST).is_file():
                found.append((int(step), d))
            continue
        if not _complete(d) or not (d / MANIFEST).is_file():
            log.warning("removing %s: a checkpoint cut short by a kill", d)
            shutil.rmtree(d, ignore_errors=True)
            continue
        problem = verify_artifact(d)
        if problem is not None:
            aside = d.with_name(f"{d.name}.damaged")
            shutil.rmtree(aside, ignore_errors=True)
            d.rename(aside)
            log.warning("not resuming from %s: %s; set aside as %s (delete it)", d, problem, aside.name)
            continue
        found.append((int(step), d))
    return str(max(found)[1]) if found else None


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: every later step, the saved model and its evaluation
    would be meaningless."""


def divergence_guard() -> Any:
    """A transformers callback that stops training at the first logged loss that is not a
    finite number, in one line naming the step (every process sees the same gathered loss,
    so all stop together)."""
    import math

    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
        ) -> None:
            loss = (logs or {}).get("loss")
            if isinstance(loss, int | float) and not math.isfinite(loss):
                first = next((e["loss"] for e in state.log_history if "loss" in e), None)
                start = "" if first is None else f" (it started at {first:.4g})"
                raise TrainingDiverged(
                    f"training diverged at step {state.global_step}: the loss is {loss}{start}; nothing is "
                    "saved. Lower objective.trainer.learning_rate "
                    f"(now {args.learning_rate:g}) and rerun"
                )

    return DivergenceGuard()


def checkpoint_manifests() -> Any:
    """A transformers callback that seals each checkpoint with a manifest (east.cache: every
    file's size and SHA-256), once every process has written its part: a resume verifies it."""
    from transformers import TrainerCallback

    class CheckpointManifest(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch.distributed as dist

            from east.cache import write_manifest

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank's shard is on disk
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    write_manifest(folder, hash_large=False)
            if dist.is_available() and dist.is_initialized():
                dist.barrier()

    return CheckpointManifest()

"""Experiment loggers. ``WandbLogger`` (offline by default: no account or network needed;
``wandb sync`` uploads later) and ``NullLogger``, a do-nothing stand-in, so the pipeline
never branches on whether logging is on.

A logging failure is reported once and never loses the run: every W&B call is guarded,
training logs through :func:`logger_callback` (never through transformers' own W&B
integration, whose failures end training), and results.json is written before W&B is
asked for anything at the end.

Settings: an explicit ``logger.mode`` / ``logger.project`` / ``logger.entity`` wins; left
null, the environment's ``WANDB_MODE`` / ``WANDB_PROJECT`` / ``WANDB_ENTITY`` apply, as
for any W&B program; failing both, offline mode and the project ``east``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


class NullLogger:
    """Accepts every call and does nothing."""

    def start(self, config: dict[str, Any], name: str, group: str | None, directory: str) -> None:
        pass

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def histogram(self, name: str, values: list[float]) -> None:
        pass

    def image(self, name: str, path: Any) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def where(self) -> list[tuple[str, str]]:
        """Where this run's log is, as (label, value) lines for the printed summary."""
        return []

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    MODES = ("offline", "online", "disabled")

    def __init__(
        self,
        project: str | None = None,
        mode: str | None = None,
        entity: str | None = None,
        tags: list | None = None,
    ):
        problem = self.settings_problem(mode, tags or [], os.environ.get("WANDB_MODE"))
        if problem:  # (a run's config was checked before: east.validate)
            raise ValueError(problem)
        env_mode = os.environ.get("WANDB_MODE")
        self.mode = mode or env_mode or "offline"
        self.project = project or os.environ.get("WANDB_PROJECT") or "east"
        self.entity = entity or os.environ.get("WANDB_ENTITY")
        self.tags = [str(t) for t in (tags or [])]
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = None
        self.failed = False
        self.location: list[tuple[str, str]] = []

    @classmethod
    def settings_problem(cls, mode: str | None, tags: list, env_mode: str | None) -> str | None:
        """What is wrong with these settings, in one line naming the key (None: nothing);
        east.validate checks a run's ``logger`` with it before any stage runs."""
        if mode is not None and mode not in cls.MODES:
            return f"invalid config logger.mode={mode!r}: allowed: {', '.join(cls.MODES)} (or null)"
        if mode is None and env_mode is not None and env_mode not in (*cls.MODES, "dryrun", "run"):
            return f"invalid WANDB_MODE={env_mode!r} in the environment: allowed: {', '.join(cls.MODES)}"
        for tag in tags:  # W&B refuses these at init, which would end the logging
            if not 0 < len(str(tag)) <= 64:
                return f"invalid config logger.tags: {str(tag)!r}: a tag is 1 to 64 characters"
        return None

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not self.failed:
                log.warning(
                    "W&B %s failed (%s: %s); W&B logging stops here, results.json is still written",
                    what,
                    type(e).__name__,
                    e,
                )
            self.failed = True
            run, self.run = self.run, None  # never call into a broken run again
            if run is not None and what != "finish":
                with contextlib.suppress(Exception):  # close it if it can be: a later init starts clean
                    run.finish(exit_code=1)
            return None

    def start(self, config: dict[str, Any], name: str, group: str | None, directory: str) -> None:
        import wandb

        self.run = self._safe(
            "init",
            wandb.init,
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            config=config,
            name=name,
            group=group,
            dir=directory,
            tags=self.tags,
            reinit="finish_previous",
        )
        if self.run is not None:
            with contextlib.suppress(Exception):  # only for the summary: never worth failing over
                self.location = self._location()

    def _location(self) -> list[tuple[str, str]]:
        from pathlib import Path

        if self.mode == "offline":
            folder = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>
            return [("W&B (offline)", str(folder)), ("upload it with", f"wandb sync {folder}")]
        if self.mode == "online":
            return [("W&B run", str(self.run.url))]
        return []

    def where(self) -> list[tuple[str, str]]:
        return [] if self.failed else self.location

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self._safe("log", self.run.log, metrics)

    def histogram(self, name: str, values: list[float]) -> None:
        if self.run is not None and values:
            import wandb

            self._safe("histogram", lambda: self.run.log({name: wandb.Histogram(values)}))

    def image(self, name: str, path: Any) -> None:
        if self.run is not None:
            import wandb

            self._safe("image", lambda: self.run.log({name: wandb.Image(str(path))}))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self._safe("summary", self.run.summary.update, metrics)

    def finish(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            self._safe("finish", run.finish)


def logger_callback(logger: NullLogger) -> Any:
    """A transformers ``TrainerCallback`` that sends the trainer's logs to ``logger`` (whose
    calls never raise), in place of transformers' W&B integration (whose calls may)."""
    from transformers import TrainerCallback

    class LoggerCallback(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
        ) -> None:
            if state.is_world_process_zero and logs:
                metrics = {f"train/{k}": v for k, v in logs.items() if isinstance(v, int | float)}
                logger.log({**metrics, "train/global_step": state.global_step})

    return LoggerCallback()


def quiet_libraries() -> None:
    """Silence what libraries print that says nothing to a person running an experiment: the
    per-call progress bars of weight loading, shard writing and dataset mapping, and the
    deprecation warning TRL's own config defaults set off. Our own bars (sampling, training)
    and every warning about the run itself stay."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"`gradient_checkpointing` is deprecated", category=FutureWarning
    )
    with contextlib.suppress(ImportError):
        import transformers

        transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()


def console_every(max_steps: int, logging_steps: float | int) -> int:
    """How often the console shows a training step: every ``logging_steps`` (an int, or a
    fraction of the run as TRL reads a float below 1), but at most about ten lines a training."""
    steps = (
        logging_steps * max_steps if isinstance(logging_steps, float) and logging_steps < 1 else logging_steps
    )
    return max(1, int(steps), -(-max_steps // 10))


def close_progress_bars() -> None:
    """End every open progress bar on its own line, so that a message printed next (Ctrl-C's
    one line) is the last thing on the console, not overdrawn by a bar closing at exit."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def console_progress(trainer: Any, label: str, weights: bool = True) -> None:
    """Replace transformers' console output of ``trainer`` (a dict line per logging step, or
    with ``disable_tqdm`` every dict printed) by one progress bar with an ETA and a compact log
    line every :func:`console_every` steps: step, epoch, loss, learning rate, the batch's
    weights (unless ``weights`` is false: an unweighted run such as the tiny model's warm-up),
    elapsed time and ETA. What W&B and the log history receive does not change."""
    import time

    from transformers import PrinterCallback, ProgressCallback, TrainerCallback

    class BarOnly(ProgressCallback):
        def on_log(self, *args: Any, **kwargs: Any) -> None:  # the bar, without the dicts
            pass

    class StepLog(TrainerCallback):
        start = 0.0
        every = 1

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.monotonic()
            self.every = console_every(state.max_steps, args.logging_steps)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
        ) -> None:
            step, total = state.global_step, state.max_steps
            if not (state.is_world_process_zero and logs and "loss" in logs):
                return
            if step % self.every and step != total:
                return
            elapsed = time.monotonic() - self.start
            eta = elapsed / step * (total - step) if step else 0.0
            parts = [f"{label}: step {step}/{total}", f"epoch {state.epoch:.2f}", f"loss {logs['loss']:.4g}"]
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            if weights and "weight_min" in logs and "weight_max" in logs:
                parts.append(f"weights {logs['weight_min']:.2f}-{logs['weight_max']:.2f}")
            parts.append(f"{elapsed:.0f}s, ETA {eta:.0f}s")
            log.info(", ".join(parts))

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(BarOnly())
    trainer.add_callback(StepLog())

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

from east.errors import ConfigError

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
        if mode is not None and mode not in self.MODES:
            raise ConfigError(
                f"invalid config logger.mode={mode!r}: allowed: {', '.join(self.MODES)} (or null)"
            )
        env_mode = os.environ.get("WANDB_MODE")
        if mode is None and env_mode is not None and env_mode not in (*self.MODES, "dryrun", "run"):
            raise ConfigError(
                f"invalid WANDB_MODE={env_mode!r} in the environment: allowed: {', '.join(self.MODES)}"
            )
        self.mode = mode or env_mode or "offline"
        self.project = project or os.environ.get("WANDB_PROJECT") or "east"
        self.entity = entity or os.environ.get("WANDB_ENTITY")
        self.tags = list(tags or [])
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = None
        self.failed = False

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

"""Experiment loggers. ``WandbLogger`` (offline by default: no account or network needed;
``wandb sync`` uploads later) and ``NullLogger``, a do-nothing stand-in, so the pipeline
never branches on whether logging is on. A logging failure is reported and never loses
the run's results."""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

log = logging.getLogger(__name__)


class NullLogger:
    """Accepts every call and does nothing."""

    report_to: ClassVar[list[str]] = []

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
    def __init__(
        self,
        project: str = "east",
        mode: str = "offline",
        entity: str | None = None,
        tags: list | None = None,
    ):
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got {mode!r}")
        self.project, self.mode, self.entity, self.tags = project, mode, entity, list(tags or [])
        # Set before any trainer exists: the HF integration reads it when it initialises.
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = None
        self.report_to = ["wandb"]

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            log.warning("W&B %s failed (%s); results are still written to results.json", what, e)
            self.report_to = []
            return None

    def start(self, config: dict[str, Any], name: str, group: str | None, directory: str) -> None:
        import wandb

        self.run = self._safe(
            "init", wandb.init, project=self.project, entity=self.entity, mode=self.mode, config=config,
            name=name, group=group, dir=directory, tags=self.tags, reinit="finish_previous",
        )  # fmt: skip

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self._safe("log", self.run.log, metrics)

    def histogram(self, name: str, values: list[float]) -> None:
        if self.run is not None and values:
            import wandb

            self._safe("histogram", self.run.log, {name: wandb.Histogram(values)})

    def image(self, name: str, path: Any) -> None:
        if self.run is not None:
            import wandb

            self._safe("image", self.run.log, {name: wandb.Image(str(path))})

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self._safe("summary", self.run.summary.update, metrics)

    def finish(self) -> None:
        if self.run is not None:
            self._safe("finish", self.run.finish)
            self.run = None

"""Hydra callbacks: at the end of a sweep, write its results table and accuracy-vs-sharpness
figure into the sweep folder (``table.md``, ``table.csv``, ``accuracy_vs_sharpness.png``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from east.report import collect_runs, write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs = collect_runs(sweep_dir)
            if runs:
                log.info("sweep report: %s", write_report(runs, sweep_dir)["markdown"])
        except Exception as e:
            log.warning("could not write the sweep report in %s: %s", sweep_dir, e)

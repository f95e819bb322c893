"""Hydra callbacks: at the end of a sweep, write its results table and accuracy-vs-sharpness
figure into the sweep folder (``table.md``, ``table.csv``, ``accuracy_vs_sharpness.png``),
listing the cells that left no results (a failed cell is recorded by run.py and the sweep
goes on); the sweep then exits non-zero if any is missing."""

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
        from east.runs import missing_cells

        sweep_dir = Path(config.hydra.sweep.dir)
        missing = []
        try:
            runs = collect_runs(sweep_dir)
            missing = missing_cells(sweep_dir)
            if runs or missing:
                paths = write_report(runs, sweep_dir, missing=missing)
                log.info("sweep report: %s", ", ".join(str(p) for p in paths.values()))
        except Exception as e:
            log.warning("could not write the sweep report in %s: %s", sweep_dir, e)
        if missing:
            for m in missing:
                log.error("cell %s: %s (%s)", m["cell"], m["reason"], m["folder"])
            raise SystemExit(
                f"{len(missing)} cell(s) of the sweep have no results (listed in {sweep_dir}/table.md)"
            )

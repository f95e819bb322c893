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
        from east.plots import plot_accuracy_vs_sharpness
        from east.report import build_table, collect_runs, to_csv, to_markdown

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs = collect_runs(sweep_dir)
            if not runs:
                return
            table = build_table(runs)
            (sweep_dir / "table.md").write_text(to_markdown(table))
            to_csv(table, sweep_dir / "table.csv")
            plot_accuracy_vs_sharpness(runs, sweep_dir / "accuracy_vs_sharpness.png")
            log.info("sweep report: %s", sweep_dir / "table.md")
        except Exception as e:
            log.warning("could not write the sweep report in %s: %s", sweep_dir, e)
